// Python objects (tensors) that a bound native object keeps alive because it reads or writes their
// memory later, held so that Python's cycle collector sees them. A reference the collector cannot
// see makes any cycle through it uncollectable (e.g. a tensor whose __dict__ leads back to the
// wrapper that holds the engine): it outlives the interpreter and nanobind reports leaked instances
// at exit. A class T that holds such objects defines
//   int visit_held(visitproc visit, void* arg)  // Py_VISIT on each held object
//   void release_held()                         // stops using them (waiting for work first), drops them
// and binds with nb::type_slots(held_object_slots<T>). Included by the py/ headers only.
#pragma once

#include <nanobind/nanobind.h>
#include <nanobind/ndarray.h>

namespace kt_moe::py {

// The Python object behind an array handed to a binding (the caller's tensor itself): holding it
// keeps the array's memory alive.
template <class... Args>
nanobind::object owner_of(nanobind::ndarray<Args...> array) {
  return array.cast(nanobind::rv_policy::reference);
}

template <class T>
int traverse_held(PyObject* self, visitproc visit, void* arg) {
  Py_VISIT(Py_TYPE(self));  // heap types own a reference to their type
  if (!nanobind::inst_ready(self)) return 0;
  return nanobind::inst_ptr<T>(self)->visit_held(visit, arg);
}

template <class T>
int clear_held(PyObject* self) {
  if (nanobind::inst_ready(self)) nanobind::inst_ptr<T>(self)->release_held();
  return 0;
}

template <class T>
inline PyType_Slot held_object_slots[] = {{Py_tp_traverse, reinterpret_cast<void*>(traverse_held<T>)},
                                          {Py_tp_clear, reinterpret_cast<void*>(clear_held<T>)},
                                          {0, nullptr}};

}  // namespace kt_moe::py

// NUMA topology and node-local memory: which CPUs belong to which node (from sysfs), and an
// allocator that places pages on a chosen node. Works, as one node holding every CPU, on machines
// without NUMA support or without /sys.
#pragma once

#include <cstddef>
#include <string>
#include <vector>

namespace kt_moe {

// One NUMA node that has CPUs. `id` is the kernel's node number (the N of /sys/.../nodeN).
struct NumaNode {
  int id = 0;
  std::vector<int> cpus;  // ascending
};

// Parses a kernel CPU list such as "0-3,8-11" (surrounding whitespace allowed; "" -> {}).
// Throws std::invalid_argument on anything else.
std::vector<int> parse_cpu_list(const std::string& text);

// Reads `<dir>/node<N>/cpulist` for every node directory, in ascending id order, skipping nodes
// without CPUs (memory-only nodes) or with an unreadable list. When no node has CPUs (no such
// directory: no NUMA support, no /sys), returns one node, id 0, holding CPUs 0..nproc-1.
std::vector<NumaNode> read_numa_nodes(const std::string& dir = "/sys/devices/system/node");

// read_numa_nodes() of the running machine, read once per process. Never empty. Elsewhere in the
// pool "node n" means numa_nodes()[n], an index, not a kernel id.
const std::vector<NumaNode>& numa_nodes();

// `bytes` of 64-byte aligned memory (nullptr for 0; std::bad_alloc when out of memory). When the
// machine has more than one node, the pages are bound to node index `node` (mbind; a refusal by
// the kernel, e.g. in a container, leaves them unbound rather than failing). From 2 MB on the
// memory is 2 MB aligned and asks for transparent huge pages (MADV_HUGEPAGE); smaller
// allocations on a one-node machine are plain aligned allocations. Throws std::invalid_argument unless 0 <= node < numa_nodes().size().
void* numa_alloc(std::size_t bytes, int node);

// Frees memory from numa_alloc; `bytes` must be the size it was allocated with. nullptr is a no-op.
void numa_free(void* p, std::size_t bytes);

}  // namespace kt_moe

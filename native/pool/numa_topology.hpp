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

// Splits `cpus` (ascending, not empty) into `count` pseudo-nodes of consecutive CPUs, as evenly as
// possible (earlier ones get the remainder). Each keeps the kernel id of the node of `real` that
// holds its first CPU (0 when none does), so memory bound to a pseudo-node lands on a real node.
// std::invalid_argument unless 1 <= count <= cpus.size().
std::vector<NumaNode> pseudo_numa_nodes(const std::vector<NumaNode>& real, const std::vector<int>& cpus, int count);

// The nodes the pool works with, found once per process: read_numa_nodes() of the running
// machine, or, when the environment variable KT_MOE_FAKE_NUMA_NODES=N is set, the CPUs this
// process may run on (sched_getaffinity) split into N pseudo-nodes (pseudo_numa_nodes; for
// testing the multi-node paths on a one-node machine). Never empty. std::invalid_argument naming
// the variable when N is not an integer in [1, allowed CPUs]. Elsewhere in the pool "node n"
// means numa_nodes()[n], an index, not a kernel id.
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

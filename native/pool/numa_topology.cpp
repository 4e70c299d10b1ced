// NUMA topology from sysfs (or pseudo-nodes from KT_MOE_FAKE_NUMA_NODES) and node-bound allocation
// through the raw mbind system call (no libnuma link or load needed). See numa_topology.hpp for the
// contract.
#include "pool/numa_topology.hpp"

#include <sched.h>
#include <sys/mman.h>
#include <sys/syscall.h>
#include <unistd.h>

#include <algorithm>
#include <charconv>
#include <cstdint>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <new>
#include <sstream>
#include <stdexcept>
#include <thread>

namespace kt_moe {
namespace {

constexpr std::size_t kAlign = 64;
constexpr int kMpolBind = 2;  // MPOL_BIND of <linux/mempolicy.h>

std::string trim(const std::string& s) {
  const char* ws = " \t\r\n";
  std::size_t b = s.find_first_not_of(ws);
  if (b == std::string::npos) return "";
  return s.substr(b, s.find_last_not_of(ws) - b + 1);
}

int parse_cpu(const std::string& token, const std::string& whole) {
  int value = -1;
  auto [end, ec] = std::from_chars(token.data(), token.data() + token.size(), value);
  if (ec != std::errc() || end != token.data() + token.size() || token.empty() || value < 0)
    throw std::invalid_argument("bad CPU list '" + whole + "'");
  return value;
}

bool multi_node() { return numa_nodes().size() > 1; }

constexpr std::size_t kHugePage = std::size_t(2) << 20;  // x86-64 transparent huge page

std::size_t rounded_up(std::size_t bytes, std::size_t unit) { return (bytes + unit - 1) / unit * unit; }

std::size_t page_size() { return static_cast<std::size_t>(sysconf(_SC_PAGESIZE)); }

// Allocations that get pages of their own from mmap: all of them on a multi-node machine (to bind
// them), and those of a huge page or more (weights: streamed through 4 KB pages, their tile loads
// of 16 rows touch 16 pages each and the TLB misses cost a third of the bandwidth).
bool mapped(std::size_t bytes) { return multi_node() || bytes >= kHugePage; }

// How much a mapped allocation of `bytes` maps: whole huge pages from a huge page on, else pages.
std::size_t mapped_length(std::size_t bytes) {
  return bytes >= kHugePage ? rounded_up(bytes, kHugePage) : rounded_up(bytes, page_size());
}

// Fresh pages from mmap: huge-page aligned and advised MADV_HUGEPAGE from a huge page on (a kernel
// without transparent huge pages ignores the advice), bound to kernel node `node_id` before first
// touch on a multi-node machine.
void* map_pages(std::size_t bytes, int node_id) {
  const std::size_t len = mapped_length(bytes);
  const std::size_t align = bytes >= kHugePage ? kHugePage : page_size();
  const std::size_t over = len + align - page_size();  // room to start at an aligned address
  void* raw = mmap(nullptr, over, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
  if (raw == MAP_FAILED) throw std::bad_alloc();
  const auto first = reinterpret_cast<std::uintptr_t>(raw);
  const std::uintptr_t start = rounded_up(first, align);
  if (start > first) munmap(raw, start - first);
  if (first + over > start + len) munmap(reinterpret_cast<void*>(start + len), first + over - start - len);
  void* p = reinterpret_cast<void*>(start);
  if (bytes >= kHugePage) madvise(p, len, MADV_HUGEPAGE);
  if (multi_node()) {
    constexpr int kBitsPerWord = 8 * sizeof(unsigned long);
    std::vector<unsigned long> mask(node_id / kBitsPerWord + 1, 0);
    mask[node_id / kBitsPerWord] |= 1UL << (node_id % kBitsPerWord);
    // The kernel reads maxnode - 1 bits; a failure (no permission, no NUMA) leaves the pages unbound.
    syscall(SYS_mbind, p, len, kMpolBind, mask.data(), mask.size() * kBitsPerWord + 1, 0);
  }
  return p;
}

}  // namespace

std::vector<int> parse_cpu_list(const std::string& text) {
  std::vector<int> cpus;
  std::string list = trim(text);
  if (list.empty()) return cpus;
  if (list.back() == ',') throw std::invalid_argument("bad CPU list '" + text + "'");
  std::stringstream items(list);
  std::string item;
  while (std::getline(items, item, ',')) {
    std::size_t dash = item.find('-');
    int first = parse_cpu(item.substr(0, dash), text);
    int last = dash == std::string::npos ? first : parse_cpu(item.substr(dash + 1), text);
    if (last < first) throw std::invalid_argument("bad CPU list '" + text + "'");
    for (int c = first; c <= last; ++c) cpus.push_back(c);
  }
  std::sort(cpus.begin(), cpus.end());
  cpus.erase(std::unique(cpus.begin(), cpus.end()), cpus.end());
  return cpus;
}

std::vector<NumaNode> read_numa_nodes(const std::string& dir) {
  namespace fs = std::filesystem;
  std::vector<NumaNode> nodes;
  std::error_code ec;
  for (fs::directory_iterator it(dir, ec), end; !ec && it != end; it.increment(ec)) {
    std::string name = it->path().filename().string();
    if (name.size() <= 4 || name.compare(0, 4, "node") != 0 ||
        name.find_first_not_of("0123456789", 4) != std::string::npos)
      continue;
    std::ifstream file(it->path() / "cpulist");
    std::string text;
    if (!std::getline(file, text)) continue;
    try {
      NumaNode node{std::stoi(name.substr(4)), parse_cpu_list(text)};
      if (!node.cpus.empty()) nodes.push_back(std::move(node));
    } catch (const std::exception&) {
      continue;  // unreadable list: treat the node as absent
    }
  }
  if (nodes.empty()) {
    NumaNode all;
    int n = std::max(1u, std::thread::hardware_concurrency());
    for (int c = 0; c < n; ++c) all.cpus.push_back(c);
    nodes.push_back(std::move(all));
  }
  std::sort(nodes.begin(), nodes.end(), [](const NumaNode& a, const NumaNode& b) { return a.id < b.id; });
  return nodes;
}

std::vector<NumaNode> pseudo_numa_nodes(const std::vector<NumaNode>& real, const std::vector<int>& cpus, int count) {
  const int n = static_cast<int>(cpus.size());
  if (count < 1 || count > n)
    throw std::invalid_argument("pseudo NUMA node count must be in [1, " + std::to_string(n) + "], got " +
                                std::to_string(count));
  std::vector<NumaNode> nodes(count);
  int begin = 0;
  for (int i = 0; i < count; ++i) {
    const int size = n / count + (i < n % count ? 1 : 0);
    nodes[i].cpus.assign(cpus.begin() + begin, cpus.begin() + begin + size);
    for (const NumaNode& r : real)
      if (std::binary_search(r.cpus.begin(), r.cpus.end(), cpus[begin])) nodes[i].id = r.id;
    begin += size;
  }
  return nodes;
}

namespace {

constexpr const char* kFakeNodesVariable = "KT_MOE_FAKE_NUMA_NODES";

// The CPUs the calling thread may run on, ascending (every CPU when the kernel does not say).
std::vector<int> allowed_cpus() {
  cpu_set_t set;
  std::vector<int> cpus;
  if (sched_getaffinity(0, sizeof(set), &set) == 0) {
    for (int c = 0; c < CPU_SETSIZE; ++c)
      if (CPU_ISSET(c, &set)) cpus.push_back(c);
  }
  if (cpus.empty())
    for (int c = 0, n = std::max(1u, std::thread::hardware_concurrency()); c < n; ++c) cpus.push_back(c);
  return cpus;
}

std::vector<NumaNode> find_numa_nodes() {
  const char* fake = std::getenv(kFakeNodesVariable);
  if (!fake || !*fake) return read_numa_nodes();
  const std::vector<int> cpus = allowed_cpus();
  const std::string text = fake;
  int count = 0;
  auto [end, ec] = std::from_chars(text.data(), text.data() + text.size(), count);
  if (ec != std::errc() || end != text.data() + text.size() || count < 1 || count > int(cpus.size()))
    throw std::invalid_argument(std::string(kFakeNodesVariable) + " must be an integer in [1, " +
                                std::to_string(cpus.size()) + "] (the CPUs this process may use), got '" + text +
                                "'");
  return pseudo_numa_nodes(read_numa_nodes(), cpus, count);
}

}  // namespace

const std::vector<NumaNode>& numa_nodes() {
  static const std::vector<NumaNode> nodes = find_numa_nodes();
  return nodes;
}

void* numa_alloc(std::size_t bytes, int node) {
  if (node < 0 || node >= static_cast<int>(numa_nodes().size()))
    throw std::invalid_argument("numa_alloc: node " + std::to_string(node) + " out of range [0, " +
                                std::to_string(numa_nodes().size()) + ")");
  if (bytes == 0) return nullptr;
  if (mapped(bytes)) return map_pages(bytes, numa_nodes()[node].id);
  void* p = std::aligned_alloc(kAlign, (bytes + kAlign - 1) / kAlign * kAlign);
  if (!p) throw std::bad_alloc();
  return p;
}

void numa_free(void* p, std::size_t bytes) {
  if (!p) return;
  if (mapped(bytes))
    munmap(p, mapped_length(bytes));
  else
    std::free(p);
}

}  // namespace kt_moe

#pragma once

// Keeps the server's threads on a set of CPUs (--cpus). A step's host work is a short burst
// after each arrival, handed between threads (gRPC's poller, the callback thread, the launch's
// wait): when they sit on different cores, each hand-over wakes a core whose caches hold other
// work, and on a virtual machine a core idle for longer than the hypervisor's halt-poll window
// (~200 us) is given up and woken cold. A co-located runner's layer steps arrive one at a time;
// one core of their own keeps that path warm, two are no better than many (docs/performance.md,
// "One core for the serving path").

#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"

namespace flashkv::server {

// taskset's list syntax: "3", "2-5", "0,4-7". Sorted, without duplicates. INVALID_ARGUMENT
// naming `field` for anything else (empty parts, reversed ranges, CPUs >= kMaxCpus).
inline constexpr int kMaxCpus = 1024;
absl::StatusOr<std::vector<int>> ParseCpuList(absl::string_view text,
                                              absl::string_view field = "cpus");
// The inverse: "0,2-5".
std::string FormatCpuList(const std::vector<int>& cpus);

// The CPUs this thread may run on now.
absl::StatusOr<std::vector<int>> AllowedCpus();

// Restricts every thread of the process to `cpus` (threads started later inherit it from their
// creator). INVALID_ARGUMENT naming `field` when a CPU is not among those allowed now (a cgroup
// cpuset or taskset narrower than asked); no thread is changed then.
absl::Status PinProcessToCpus(const std::vector<int>& cpus, absl::string_view field = "cpus");

}  // namespace flashkv::server

#include "flashkv/server/cpu_affinity.h"

#include <dirent.h>
#include <sched.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstdlib>
#include <cstring>
#include <string>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"

namespace flashkv::server {
namespace {

absl::Status Invalid(absl::string_view field, absl::string_view text, absl::string_view why) {
  return absl::InvalidArgumentError(absl::StrCat(field, " ('", text, "') ", why));
}

bool ParseCpu(absl::string_view text, int* cpu) {
  if (text.empty() || text.size() > 4) return false;
  *cpu = 0;
  for (char c : text) {
    if (c < '0' || c > '9') return false;
    *cpu = *cpu * 10 + (c - '0');
  }
  return *cpu < kMaxCpus;
}

// The thread ids of this process (/proc/self/task).
absl::StatusOr<std::vector<pid_t>> ProcessThreads() {
  DIR* dir = opendir("/proc/self/task");
  if (dir == nullptr) {
    return absl::InternalError(absl::StrCat("/proc/self/task: ", std::strerror(errno)));
  }
  std::vector<pid_t> threads;
  while (const dirent* entry = readdir(dir)) {
    const pid_t tid = static_cast<pid_t>(std::atoi(entry->d_name));  // 0 for "." and ".."
    if (tid > 0) threads.push_back(tid);
  }
  closedir(dir);
  return threads;
}

}  // namespace

absl::StatusOr<std::vector<int>> ParseCpuList(absl::string_view text, absl::string_view field) {
  const std::string limit = absl::StrCat(
      "must list CPUs as numbers and ranges, e.g. 3 or 2-5 or 0,4-7, each below ", kMaxCpus);
  std::vector<int> cpus;
  for (absl::string_view part : absl::StrSplit(text, ',')) {
    const std::vector<absl::string_view> ends = absl::StrSplit(part, absl::MaxSplits('-', 1));
    int first = 0;
    int last = 0;
    if (!ParseCpu(ends[0], &first) || (ends.size() == 2 && !ParseCpu(ends[1], &last))) {
      return Invalid(field, text, limit);
    }
    if (ends.size() == 1) last = first;
    if (last < first) return Invalid(field, text, absl::StrCat("has a reversed range ", part));
    for (int cpu = first; cpu <= last; ++cpu) cpus.push_back(cpu);
  }
  std::sort(cpus.begin(), cpus.end());
  cpus.erase(std::unique(cpus.begin(), cpus.end()), cpus.end());
  return cpus;
}

std::string FormatCpuList(const std::vector<int>& cpus) {
  std::string text;
  for (size_t i = 0; i < cpus.size();) {
    size_t j = i;
    while (j + 1 < cpus.size() && cpus[j + 1] == cpus[j] + 1) ++j;
    absl::StrAppend(&text, text.empty() ? "" : ",", cpus[i]);
    if (j > i) absl::StrAppend(&text, "-", cpus[j]);
    i = j + 1;
  }
  return text;
}

absl::StatusOr<std::vector<int>> AllowedCpus() {
  cpu_set_t set;
  CPU_ZERO(&set);
  if (sched_getaffinity(0, sizeof set, &set) != 0) {
    return absl::InternalError(absl::StrCat("sched_getaffinity: ", std::strerror(errno)));
  }
  std::vector<int> cpus;
  for (int cpu = 0; cpu < CPU_SETSIZE; ++cpu) {
    if (CPU_ISSET(cpu, &set)) cpus.push_back(cpu);
  }
  return cpus;
}

absl::Status PinProcessToCpus(const std::vector<int>& cpus, absl::string_view field) {
  if (cpus.empty()) return absl::InvalidArgumentError(absl::StrCat(field, " is empty"));
  absl::StatusOr<std::vector<int>> allowed = AllowedCpus();
  if (!allowed.ok()) return allowed.status();
  cpu_set_t set;
  CPU_ZERO(&set);
  for (int cpu : cpus) {
    if (!std::binary_search(allowed->begin(), allowed->end(), cpu)) {
      return absl::InvalidArgumentError(absl::StrCat(
          field, " (", FormatCpuList(cpus), ") names CPU ", cpu,
          ", which this process may not use: it may run on ", FormatCpuList(*allowed)));
    }
    CPU_SET(cpu, &set);
  }
  // A thread may start while the others are pinned, from one not pinned yet: list again until
  // a listing holds no thread that was not pinned.
  std::vector<pid_t> pinned;
  for (bool found_new = true; found_new;) {
    absl::StatusOr<std::vector<pid_t>> threads = ProcessThreads();
    if (!threads.ok()) return threads.status();
    found_new = false;
    for (pid_t tid : *threads) {
      if (std::find(pinned.begin(), pinned.end(), tid) != pinned.end()) continue;
      found_new = true;
      pinned.push_back(tid);
      // A thread that ended since the listing is gone (ESRCH): nothing to pin.
      if (sched_setaffinity(tid, sizeof set, &set) != 0 && errno != ESRCH) {
        return absl::InternalError(
            absl::StrCat("sched_setaffinity(thread ", tid, "): ", std::strerror(errno)));
      }
    }
  }
  return absl::OkStatus();
}

}  // namespace flashkv::server

#include "flashkv/server/tenant_shares.h"

#include <algorithm>
#include <limits>
#include <numeric>

#include "absl/container/flat_hash_set.h"

namespace flashkv::server {

void TenantShares::Retain(absl::Span<const absl::string_view> waiting) {
  const absl::flat_hash_set<absl::string_view> now(waiting.begin(), waiting.end());
  // The level newcomers start at: the least served among those still waiting.
  int64_t floor = std::numeric_limits<int64_t>::max();
  for (auto it = accounts_.begin(); it != accounts_.end();) {
    if (!now.contains(it->first)) {
      accounts_.erase(it++);
      continue;
    }
    floor = std::min(floor, it->second.served);
    ++it;
  }
  if (floor == std::numeric_limits<int64_t>::max()) floor = 0;
  for (absl::string_view tenant : waiting) {
    auto [it, inserted] = accounts_.try_emplace(tenant);
    if (inserted) it->second.served = floor;
  }
}

std::vector<std::string> TenantShares::Rank(absl::Span<const absl::string_view> tenants) const {
  std::vector<std::string> ranked(tenants.begin(), tenants.end());
  auto account = [this](const std::string& tenant) {
    auto it = accounts_.find(tenant);
    return it == accounts_.end() ? Account{} : it->second;
  };
  std::stable_sort(ranked.begin(), ranked.end(), [&](const std::string& a, const std::string& b) {
    const Account x = account(a), y = account(b);
    if (x.served != y.served) return x.served < y.served;
    if (x.led_at != y.led_at) return x.led_at < y.led_at;
    return a < b;  // deterministic among equals
  });
  return ranked;
}

void TenantShares::Charge(absl::string_view tenant, int64_t rows) {
  auto it = accounts_.find(tenant);
  if (it != accounts_.end()) it->second.served += rows;
}

void TenantShares::Led(absl::string_view leader) {
  ++launches_;
  auto it = accounts_.find(leader);
  if (it != accounts_.end()) it->second.led_at = launches_;
}

int64_t TenantShares::served(absl::string_view tenant) const {
  auto it = accounts_.find(tenant);
  return it == accounts_.end() ? 0 : it->second.served;
}

std::vector<int64_t> TenantShares::Split(absl::Span<const int64_t> demands, int64_t budget) {
  const size_t n = demands.size();
  std::vector<int64_t> shares(n, 0);
  // Smallest demands first: each takes what it asks while that is within an equal share of what
  // is left; the rest split what remains evenly.
  std::vector<size_t> order(n);
  std::iota(order.begin(), order.end(), 0);
  std::stable_sort(order.begin(), order.end(),
                   [&](size_t a, size_t b) { return demands[a] < demands[b]; });
  int64_t left = std::max<int64_t>(budget, 0);
  for (size_t k = 0; k < n; ++k) {
    const int64_t fair = left / static_cast<int64_t>(n - k);
    if (demands[order[k]] <= fair) {
      shares[order[k]] = demands[order[k]];
      left -= demands[order[k]];
      continue;
    }
    // Everyone from here on asks for more than the equal share: each gets it, and the odd
    // tokens go one each to the most deserving (lowest index) of them.
    std::vector<size_t> rest(order.begin() + k, order.end());
    std::sort(rest.begin(), rest.end());
    int64_t odd = left - fair * static_cast<int64_t>(rest.size());
    for (size_t i : rest) {
      shares[i] = fair + (odd > 0 ? 1 : 0);
      if (odd > 0) --odd;
    }
    break;
  }
  return shares;
}

}  // namespace flashkv::server

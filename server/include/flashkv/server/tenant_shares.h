#pragma once

// Fair shares of the batch scheduler's launches between tenants, so that a tenant flooding the
// server with work cannot starve another (docs/reliability.md#quotas-and-fairness).
//
// The policy is fair queuing on tokens (rows of q), like a deficit round-robin whose quantum is
// the launch's token budget:
// - Every tenant with work queued has a count of the tokens it was served since it began
//   waiting. A tenant that starts waiting begins level with the least-served tenant already
//   waiting (never below: time spent idle earns no credit to flood with later). A tenant is
//   forgotten as soon as its last part completes.
// - The most deserving tenant — fewest tokens served, then the one that led a launch least
//   recently — leads the next launch: the launch holds its longest-waiting part's layer.
// - When the parts at that layer ask for more tokens than the budget, the budget is split
//   max-min fairly between their tenants (each gets what it asks, up to an equal share of what
//   the others leave), the odd tokens going to the most deserving first.
// One tenant alone is scheduled exactly as without the policy (its oldest part leads, parts
// join in waiting order until the budget is used).
//
// Thread-safety: none (the scheduler calls it under its mutex). Tenant names are copied.

#include <cstdint>
#include <string>
#include <vector>

#include "absl/container/flat_hash_map.h"
#include "absl/strings/string_view.h"
#include "absl/types/span.h"

namespace flashkv::server {

class TenantShares {
 public:
  // The tenants with work queued now (distinct, any order): tenants not among them are
  // forgotten, new ones start level with the least served.
  void Retain(absl::Span<const absl::string_view> waiting);
  // `tenants` (retained ones; distinct), most deserving first.
  std::vector<std::string> Rank(absl::Span<const absl::string_view> tenants) const;

  // A launch led by `leader` gave `rows` tokens to `tenant` (call once per tenant in it).
  void Charge(absl::string_view tenant, int64_t rows);
  void Led(absl::string_view leader);

  // `budget` split between `demands` (ordered most deserving first): max-min fair.
  static std::vector<int64_t> Split(absl::Span<const int64_t> demands, int64_t budget);

  // Tokens served to `tenant` since it began waiting (0 when it is not waiting).
  int64_t served(absl::string_view tenant) const;

 private:
  struct Account {
    int64_t served = 0;
    uint64_t led_at = 0;  // launch number it last led; 0: never since it began waiting
  };
  absl::flat_hash_map<std::string, Account> accounts_;
  uint64_t launches_ = 0;
};

}  // namespace flashkv::server

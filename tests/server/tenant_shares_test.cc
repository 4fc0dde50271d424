// The fair-share policy of the batch scheduler: the token budget split max-min fairly; the
// least-served tenant leads; a tenant that starts waiting begins level with the others, never
// with credit saved while it was idle.

#include "flashkv/server/tenant_shares.h"

#include <gtest/gtest.h>

#include <string>
#include <vector>

namespace flashkv::server {
namespace {

using Shares = std::vector<int64_t>;

TEST(TenantSharesTest, SplitGivesEveryoneTheirDemandWhenTheBudgetSuffices) {
  EXPECT_EQ(TenantShares::Split({3, 5, 0}, 8), (Shares{3, 5, 0}));
  EXPECT_EQ(TenantShares::Split({3, 5}, 100), (Shares{3, 5}));
  EXPECT_EQ(TenantShares::Split({}, 100), (Shares{}));
}

TEST(TenantSharesTest, SplitIsMaxMinFairWhenOverSubscribed) {
  // The small demand is met; the two large ones share the rest (15) evenly, the odd token to the
  // more deserving (lower index).
  EXPECT_EQ(TenantShares::Split({1000, 1, 1000}, 16), (Shares{8, 1, 7}));
  EXPECT_EQ(TenantShares::Split({100, 100, 100}, 16), (Shares{6, 5, 5}));
  // 4 is met; 9 exceeds an equal share of the 16 left (5), so the three large ones get 6, 5, 5.
  EXPECT_EQ(TenantShares::Split({100, 4, 9, 100}, 20), (Shares{6, 4, 5, 5}));
  // Every demand between the levels: met in turn while each stays within an equal share.
  EXPECT_EQ(TenantShares::Split({2, 30, 5, 30}, 40), (Shares{2, 17, 5, 16}));
  // A budget smaller than the number of tenants: the most deserving get one each.
  EXPECT_EQ(TenantShares::Split({5, 5, 5}, 2), (Shares{1, 1, 0}));
  EXPECT_EQ(TenantShares::Split({5, 5}, 0), (Shares{0, 0}));
}

TEST(TenantSharesTest, TheLeastServedLeadsAndTiesGoToWhoLedLeastRecently) {
  TenantShares shares;
  shares.Retain({"light", "flood"});
  std::vector<std::string> ranked = shares.Rank({"light", "flood"});
  ASSERT_EQ(ranked, (std::vector<std::string>{"flood", "light"}));  // all equal: by name
  shares.Charge("flood", 16);
  shares.Led("flood");
  EXPECT_EQ(shares.Rank({"flood", "light"}).front(), "light");
  shares.Charge("light", 16);
  shares.Led("light");
  // Level again: "flood" led longer ago.
  EXPECT_EQ(shares.Rank({"light", "flood"}).front(), "flood");
}

TEST(TenantSharesTest, IdleTimeEarnsNoCredit) {
  TenantShares shares;
  shares.Retain({"a", "b"});
  for (int i = 0; i < 100; ++i) {
    // Only "a" waits for 100 launches; "b" is forgotten.
    shares.Retain({"a"});
    shares.Charge("a", 16);
    shares.Led("a");
  }
  EXPECT_EQ(shares.served("b"), 0);
  // "b" comes back level with "a" (1600), not 1600 tokens behind: it leads once (it never led
  // since it began waiting), then they alternate.
  shares.Retain({"a", "b"});
  std::vector<std::string> ranked = shares.Rank({"a", "b"});
  EXPECT_EQ(shares.served("b"), shares.served("a"));
  EXPECT_EQ(ranked.front(), "b");
  shares.Charge("b", 16);
  shares.Led("b");
  EXPECT_EQ(shares.Rank({"a", "b"}).front(), "a");
  // Ranking only some of the waiting tenants (those whose parts may start now).
  shares.Charge("a", 100);
  EXPECT_EQ(shares.Rank({"a"}), (std::vector<std::string>{"a"}));
  EXPECT_EQ(shares.Rank({"a", "b"}).front(), "b");
}

}  // namespace
}  // namespace flashkv::server

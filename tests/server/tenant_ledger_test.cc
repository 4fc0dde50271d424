// The tenants' ledger: sequence limits (server-wide and per tenant), logical KV blocks per
// tenant through reservations that commit or abort, sequences freed while a step is in flight,
// and ids reused meanwhile.

#include "flashkv/server/tenant_ledger.h"

#include <gtest/gtest.h>

#include <string>
#include <utility>
#include <vector>

namespace flashkv::server {
namespace {

using Adds = std::vector<std::pair<std::string, int64_t>>;

TEST(TenantLedgerTest, SequenceLimits) {
  TenantLedger ledger(/*page_size=*/4, /*max_sequences=*/3);
  const Tenant a{"a", {2, 0}}, b{"b", {0, 0}};
  for (const char* id : {"a/1", "a/2"}) {
    ASSERT_TRUE(ledger.CheckNewSequence(a).ok());
    ASSERT_TRUE(ledger.AddSequence(a, id, 0).ok());
  }
  const absl::Status quota = ledger.CheckNewSequence(a);
  EXPECT_EQ(quota.code(), absl::StatusCode::kResourceExhausted);
  EXPECT_NE(quota.message().find("tenant 'a' holds 2 sequences, its quota (2)"), std::string::npos);
  ASSERT_TRUE(ledger.AddSequence(b, "b/1", 0).ok());
  const absl::Status server = ledger.CheckNewSequence(b);
  EXPECT_NE(server.message().find("the server holds 3 sequences, its limit (3"), std::string::npos);
  ledger.RemoveSequence("a/1");
  EXPECT_TRUE(ledger.CheckNewSequence(a).ok());
  EXPECT_EQ(ledger.total_sequences(), 2);
}

TEST(TenantLedgerTest, BlocksAreReservedThenCommittedOrReleased) {
  TenantLedger ledger(4, 100);
  const Tenant t{"t", {0, 5}};
  ASSERT_TRUE(ledger.AddSequence(t, "t/x", 6).ok());  // 2 blocks (a prefix hit, say)
  EXPECT_EQ(ledger.Usage("t").kv_blocks, 2);

  // 2 more tokens fill block 2; 3 more open block 3: reservations stack on pending tokens.
  absl::StatusOr<LedgerReservation> first = ledger.Reserve(t, Adds{{"t/x", 2}});
  ASSERT_TRUE(first.ok());
  EXPECT_EQ(first->blocks, 0);
  absl::StatusOr<LedgerReservation> second = ledger.Reserve(t, Adds{{"t/x", 3}});
  ASSERT_TRUE(second.ok());
  EXPECT_EQ(second->blocks, 1);
  EXPECT_EQ(ledger.Usage("t").kv_blocks_reserved, 1);
  // 11 tokens committed or pending; 13 more take 6 blocks, 3 more: 2 + 1 + 3 > 5.
  absl::StatusOr<LedgerReservation> over = ledger.Reserve(t, Adds{{"t/x", 13}});
  EXPECT_EQ(over.status().code(), absl::StatusCode::kResourceExhausted);
  EXPECT_NE(over.status().message().find("it holds 2 blocks (1 more reserved by steps in "
                                         "flight); this step needs 3 more; the quota is 5"),
            std::string::npos)
      << over.status();
  EXPECT_EQ(ledger.Usage("t").kv_blocks_reserved, 1);  // the refused one left nothing behind

  // The first aborts, the second commits: the committed length is 6 + 3, i.e. 3 blocks.
  ledger.Settle(*first, /*committed=*/false);
  ledger.Settle(*second, /*committed=*/true);
  EXPECT_EQ(ledger.Usage("t").kv_blocks, 3);
  EXPECT_EQ(ledger.Usage("t").kv_blocks_reserved, 0);
  ledger.RemoveSequence("t/x");
  EXPECT_EQ(ledger.Usage("t").kv_blocks, 0);
  EXPECT_EQ(ledger.Usage("t").sequences, 0);
}

TEST(TenantLedgerTest, AFreedOrReusedIdDoesNotTakeAStaleCommit) {
  TenantLedger ledger(4, 100);
  const Tenant t{"t", {0, 0}};
  ASSERT_TRUE(ledger.AddSequence(t, "t/x", 0).ok());
  absl::StatusOr<LedgerReservation> r = ledger.Reserve(t, Adds{{"t/x", 8}, {"t/unknown", 3}});
  ASSERT_TRUE(r.ok());
  EXPECT_EQ(r->blocks, 2);  // the unknown id is skipped (the step fails NOT_FOUND later)
  ledger.RemoveSequence("t/x");
  ASSERT_TRUE(ledger.AddSequence(t, "t/x", 0).ok());  // the id again, a new sequence
  ledger.Settle(*r, /*committed=*/true);
  EXPECT_EQ(ledger.Usage("t").kv_blocks, 0);
  EXPECT_EQ(ledger.Usage("t").kv_blocks_reserved, 0);
}

TEST(TenantLedgerTest, ACachedPrefixPastTheQuotaIsRefused) {
  TenantLedger ledger(4, 100);
  const Tenant t{"t", {0, 2}};
  const absl::Status s = ledger.AddSequence(t, "t/x", 9);
  EXPECT_EQ(s.code(), absl::StatusCode::kResourceExhausted);
  EXPECT_EQ(ledger.Usage("t").sequences, 0);
  EXPECT_TRUE(ledger.AddSequence(t, "t/x", 8).ok());
}

}  // namespace
}  // namespace flashkv::server

// The token file's parser and the helpers that scope ids to tenants: every malformed line is
// refused naming the file and line (never the token), quotas default and override per tenant,
// and lookups find exactly the tokens of the file.

#include "flashkv/server/auth.h"

#include <gtest/gtest.h>

#include <string>

namespace flashkv::server {
namespace {

constexpr TenantQuota kDefaults{10, 1000};

TEST(TokenTableTest, ParsesTokensTenantsAndQuotas) {
  absl::StatusOr<std::shared_ptr<const TokenTable>> table = TokenTable::Parse(
      "# comment line\n"
      "aaaaaaaaaaaaaaaa-1 alpha   # two tokens for alpha (rotation)\n"
      "aaaaaaaaaaaaaaaa-2\talpha max_kv_blocks=50\n"
      "\n"
      "bbbbbbbbbbbbbbbb+/= bravo max_sequences=0 max_kv_blocks=7\r\n",
      kDefaults, "tokens.txt");
  ASSERT_TRUE(table.ok()) << table.status();
  EXPECT_EQ((*table)->num_tokens(), 3u);
  EXPECT_EQ((*table)->num_tenants(), 2u);
  std::shared_ptr<const Tenant> a1 = (*table)->Find("aaaaaaaaaaaaaaaa-1");
  std::shared_ptr<const Tenant> a2 = (*table)->Find("aaaaaaaaaaaaaaaa-2");
  ASSERT_NE(a1, nullptr);
  EXPECT_EQ(a1, a2);  // one tenant, whichever token
  EXPECT_EQ(a1->name, "alpha");
  EXPECT_EQ(a1->quota.max_sequences, 10);  // the default
  EXPECT_EQ(a1->quota.max_kv_blocks, 50);  // from its second line
  std::shared_ptr<const Tenant> b = (*table)->Find("bbbbbbbbbbbbbbbb+/=");
  ASSERT_NE(b, nullptr);
  EXPECT_EQ(b->quota.max_sequences, 0);  // explicitly unlimited
  EXPECT_EQ(b->quota.max_kv_blocks, 7);
  for (const char* unknown : {"", "aaaaaaaaaaaaaaaa-3", "aaaaaaaaaaaaaaaa-1 ", "alpha"}) {
    EXPECT_EQ((*table)->Find(unknown), nullptr) << unknown;
  }
}

TEST(TokenTableTest, BadLinesAreRefusedNamingTheLineNotTheToken) {
  const std::string good = "gggggggggggggggg";
  const struct {
    std::string text;
    const char* message;
  } cases[] = {
      {"lonely-token-0123456789\n", "t:1: expected TOKEN TENANT"},
      {"short alpha\n", "t:1: the token has 5 characters; it must have 16 to 4096"},
      {"\n" + std::string(5000, 'x') + " alpha\n", "t:2: the token has 5000 characters"},
      {"bad:token-0123456789 alpha\n", "t:1: the token has a character outside"},
      {good + " al/pha\n", "t:1: tenant name 'al/pha' may hold only"},
      {good + " " + std::string(65, 't') + "\n", "must have 1 to 64 characters"},
      {good + " alpha\n" + good + " bravo\n", "t:2: the token of line 1 again"},
      {good + " alpha max_kv_blocks=-1\n", "t:1: 'max_kv_blocks=-1': the quota must be"},
      {good + " alpha max_blocks=3\n", "t:1: unknown field 'max_blocks'"},
      {good + " alpha max_sequences=2\nhhhhhhhhhhhhhhhh alpha max_sequences=3\n",
       "t:2: max_sequences=3 disagrees with 2 given for tenant 'alpha' before"},
  };
  for (const auto& c : cases) {
    absl::StatusOr<std::shared_ptr<const TokenTable>> table =
        TokenTable::Parse(c.text, kDefaults, "t");
    ASSERT_FALSE(table.ok()) << c.message;
    EXPECT_EQ(table.status().code(), absl::StatusCode::kInvalidArgument);
    EXPECT_NE(table.status().message().find(c.message), std::string::npos) << table.status();
    EXPECT_EQ(table.status().message().find(good), std::string::npos) << table.status();
  }
}

TEST(TokenTableTest, AFileWithoutTokensOrMissingIsAnError) {
  char path[] = "/tmp/flashkv-tokens.XXXXXX";
  const int fd = mkstemp(path);
  ASSERT_GE(fd, 0);
  close(fd);
  absl::StatusOr<std::shared_ptr<const TokenTable>> empty = TokenTable::Load(path, kDefaults);
  EXPECT_EQ(empty.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_NE(empty.status().message().find("holds no token"), std::string::npos);
  unlink(path);
  EXPECT_EQ(TokenTable::Load(path, kDefaults).status().code(), absl::StatusCode::kNotFound);
}

TEST(AuthHelpersTest, BearerTokenScopesAndUnscoping) {
  EXPECT_EQ(BearerToken("Bearer abc"), "abc");
  EXPECT_EQ(BearerToken("bearer  abc "), "abc");
  EXPECT_EQ(BearerToken("BEARER abc"), "abc");
  EXPECT_EQ(BearerToken("Basic abc"), "");
  EXPECT_EQ(BearerToken("Bearer"), "");
  EXPECT_EQ(BearerToken("abc"), "");

  const Tenant acme{"acme", {}};
  EXPECT_EQ(ScopedSequenceId(acme, "s/1"), "acme/s/1");
  const absl::Status status = absl::NotFoundError("entries[2]: sequence 'acme/s/1' not found");
  const absl::Status unscoped = UnscopeStatus(status, acme);
  EXPECT_EQ(unscoped.code(), absl::StatusCode::kNotFound);
  EXPECT_EQ(unscoped.message(), "entries[2]: sequence 's/1' not found");
  EXPECT_TRUE(UnscopeStatus(absl::OkStatus(), acme).ok());
}

}  // namespace
}  // namespace flashkv::server

#include "flashkv/server/auth.h"

#include <openssl/sha.h>

#include <fstream>
#include <sstream>
#include <tuple>
#include <utility>
#include <vector>

#include "absl/strings/ascii.h"
#include "absl/strings/match.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_replace.h"
#include "absl/strings/str_split.h"
#include "absl/strings/strip.h"

namespace flashkv::server {
namespace {

constexpr size_t kMinTokenBytes = 16;
constexpr size_t kMaxTokenBytes = 4096;
constexpr size_t kMaxTenantBytes = 64;

std::string Digest(absl::string_view token) {
  unsigned char digest[SHA256_DIGEST_LENGTH];
  SHA256(reinterpret_cast<const unsigned char*>(token.data()), token.size(), digest);
  return std::string(reinterpret_cast<const char*>(digest), sizeof digest);
}

// RFC 6750 b64token: ALPHA / DIGIT / "-" / "." / "_" / "~" / "+" / "/", then any "=".
bool IsTokenChar(char c) {
  return absl::ascii_isalnum(static_cast<unsigned char>(c)) || c == '-' || c == '.' || c == '_' ||
         c == '~' || c == '+' || c == '/' || c == '=';
}

bool IsTenantChar(char c) {
  return absl::ascii_isalnum(static_cast<unsigned char>(c)) || c == '-' || c == '.' || c == '_';
}

absl::Status LineError(absl::string_view source, int line, absl::string_view what) {
  return absl::InvalidArgumentError(absl::StrCat(source, ":", line, ": ", what));
}

absl::Status CheckToken(absl::string_view token, absl::string_view source, int line) {
  if (token.size() < kMinTokenBytes || token.size() > kMaxTokenBytes) {
    return LineError(
        source, line,
        absl::StrCat("the token has ", token.size(), " characters; it must have ", kMinTokenBytes,
                     " to ", kMaxTokenBytes, " (e.g. `openssl rand -hex 32`)"));
  }
  for (char c : token) {
    if (!IsTokenChar(c)) {
      return LineError(source, line, "the token has a character outside A-Z a-z 0-9 - . _ ~ + / =");
    }
  }
  return absl::OkStatus();
}

absl::Status CheckTenantName(absl::string_view name, absl::string_view source, int line) {
  if (name.empty() || name.size() > kMaxTenantBytes) {
    return LineError(
        source, line,
        absl::StrCat("tenant name '", name, "' must have 1 to ", kMaxTenantBytes, " characters"));
  }
  for (char c : name) {
    if (!IsTenantChar(c)) {
      return LineError(source, line,
                       absl::StrCat("tenant name '", name,
                                    "' may hold only A-Z a-z 0-9 . _ - (it prefixes ids)"));
    }
  }
  return absl::OkStatus();
}

// "max_sequences=N" or "max_kv_blocks=N" into `quota`; `given` records which were set.
absl::Status ParseQuota(absl::string_view word, absl::string_view source, int line,
                        TenantQuota* quota, TenantQuota* given) {
  const std::pair<absl::string_view, absl::string_view> kv = absl::StrSplit(word, '=');
  int64_t value = 0;
  if (!absl::SimpleAtoi(kv.second, &value) || value < 0) {
    return LineError(source, line,
                     absl::StrCat("'", word, "': the quota must be a whole number >= 0"));
  }
  if (kv.first == "max_sequences") {
    quota->max_sequences = value;
    given->max_sequences = 1;
  } else if (kv.first == "max_kv_blocks") {
    quota->max_kv_blocks = value;
    given->max_kv_blocks = 1;
  } else {
    return LineError(source, line,
                     absl::StrCat("unknown field '", kv.first,
                                  "' (fields after the tenant: max_sequences=N, max_kv_blocks=N)"));
  }
  return absl::OkStatus();
}

struct TenantLines {
  TenantQuota quota;
  TenantQuota given;  // 1 where a line set the field
  int first_line = 0;
};

}  // namespace

absl::StatusOr<std::shared_ptr<const TokenTable>> TokenTable::Parse(absl::string_view text,
                                                                    const TenantQuota& defaults,
                                                                    absl::string_view source) {
  absl::flat_hash_map<std::string, TenantLines> tenants;
  std::vector<std::pair<std::string, std::string>> tokens;  // digest, tenant
  absl::flat_hash_map<std::string, int> line_of_digest;
  int line_number = 0;
  for (absl::string_view line : absl::StrSplit(text, '\n')) {
    ++line_number;
    line = line.substr(0, line.find('#'));
    const std::vector<absl::string_view> words =
        absl::StrSplit(line, absl::ByAnyChar(" \t\r"), absl::SkipEmpty());
    if (words.empty()) continue;
    if (words.size() < 2) {
      return LineError(source, line_number,
                       "expected TOKEN TENANT [max_sequences=N] "
                       "[max_kv_blocks=N]");
    }
    if (auto s = CheckToken(words[0], source, line_number); !s.ok()) return s;
    if (auto s = CheckTenantName(words[1], source, line_number); !s.ok()) return s;
    TenantQuota quota, given;
    for (size_t i = 2; i < words.size(); ++i) {
      if (auto s = ParseQuota(words[i], source, line_number, &quota, &given); !s.ok()) return s;
    }
    std::string digest = Digest(words[0]);
    if (auto [it, inserted] = line_of_digest.emplace(digest, line_number); !inserted) {
      return LineError(source, line_number,
                       absl::StrCat("the token of line ", it->second, " again"));
    }
    auto [it, inserted] = tenants.try_emplace(std::string(words[1]));
    TenantLines& t = it->second;
    if (inserted) t.first_line = line_number;
    for (auto [value, set, old_value, old_set, name] :
         {std::tuple{quota.max_sequences, given.max_sequences, &t.quota.max_sequences,
                     &t.given.max_sequences, "max_sequences"},
          std::tuple{quota.max_kv_blocks, given.max_kv_blocks, &t.quota.max_kv_blocks,
                     &t.given.max_kv_blocks, "max_kv_blocks"}}) {
      if (!set) continue;
      if (*old_set && *old_value != value) {
        return LineError(source, line_number,
                         absl::StrCat(name, "=", value, " disagrees with ", *old_value,
                                      " given for tenant '", words[1], "' before"));
      }
      *old_value = value;
      *old_set = 1;
    }
    tokens.emplace_back(std::move(digest), std::string(words[1]));
  }
  std::shared_ptr<TokenTable> table(new TokenTable());
  for (auto& [name, lines] : tenants) {
    auto tenant = std::make_shared<Tenant>();
    tenant->name = name;
    tenant->quota.max_sequences =
        lines.given.max_sequences ? lines.quota.max_sequences : defaults.max_sequences;
    tenant->quota.max_kv_blocks =
        lines.given.max_kv_blocks ? lines.quota.max_kv_blocks : defaults.max_kv_blocks;
    table->tenants_.emplace(name, std::move(tenant));
  }
  for (auto& [digest, name] : tokens) {
    table->by_digest_.emplace(std::move(digest), table->tenants_.at(name));
  }
  return std::shared_ptr<const TokenTable>(std::move(table));
}

absl::StatusOr<std::shared_ptr<const TokenTable>> TokenTable::Load(const std::string& path,
                                                                   const TenantQuota& defaults) {
  std::ifstream in(path, std::ios::binary);
  if (!in) return absl::NotFoundError(absl::StrCat("tokens file '", path, "' cannot be read"));
  std::ostringstream text;
  text << in.rdbuf();
  absl::StatusOr<std::shared_ptr<const TokenTable>> table = Parse(text.str(), defaults, path);
  if (table.ok() && (*table)->num_tokens() == 0) {
    return absl::InvalidArgumentError(
        absl::StrCat("tokens file '", path, "' holds no token: no call could authenticate"));
  }
  return table;
}

std::shared_ptr<const Tenant> TokenTable::Find(absl::string_view token) const {
  auto it = by_digest_.find(Digest(token));
  return it == by_digest_.end() ? nullptr : it->second;
}

absl::StatusOr<std::unique_ptr<Authenticator>> Authenticator::Create(const std::string& tokens_file,
                                                                     const TenantQuota& defaults) {
  std::unique_ptr<Authenticator> auth(new Authenticator(tokens_file, defaults));
  auto tenant = std::make_shared<Tenant>();
  tenant->name = kDefaultTenant;
  tenant->quota = defaults;
  auth->default_tenant_ = std::move(tenant);
  if (auto s = auth->Reload(); !s.ok()) return s;
  return auth;
}

absl::Status Authenticator::Reload() {
  if (tokens_file_.empty()) return absl::OkStatus();
  absl::StatusOr<std::shared_ptr<const TokenTable>> table =
      TokenTable::Load(tokens_file_, defaults_);
  if (!table.ok()) return table.status();
  MutexLock lock(&mu_);
  table_ = *std::move(table);
  return absl::OkStatus();
}

absl::StatusOr<std::shared_ptr<const Tenant>> Authenticator::Authenticate(
    const grpc::ServerContextBase& context) const {
  if (tokens_file_.empty()) return default_tenant_;
  const auto& metadata = context.client_metadata();
  const auto range = metadata.equal_range("authorization");
  if (range.first == range.second) {
    return absl::UnauthenticatedError(
        "missing 'authorization: Bearer <token>' metadata (the server requires a token)");
  }
  if (std::next(range.first) != range.second) {
    return absl::UnauthenticatedError("more than one 'authorization' metadata entry");
  }
  const absl::string_view token =
      BearerToken(absl::string_view(range.first->second.data(), range.first->second.size()));
  if (token.empty()) {
    return absl::UnauthenticatedError("'authorization' metadata must be 'Bearer <token>'");
  }
  std::shared_ptr<const TokenTable> table;
  {
    MutexLock lock(&mu_);
    table = table_;
  }
  std::shared_ptr<const Tenant> tenant = table->Find(token);
  if (tenant == nullptr) return absl::UnauthenticatedError("the bearer token is not valid");
  return tenant;
}

absl::string_view BearerToken(absl::string_view authorization) {
  constexpr absl::string_view kScheme = "bearer ";
  if (authorization.size() <= kScheme.size() ||
      !absl::EqualsIgnoreCase(authorization.substr(0, kScheme.size()), kScheme)) {
    return {};
  }
  return absl::StripAsciiWhitespace(authorization.substr(kScheme.size()));
}

std::string ScopedSequenceId(const Tenant& tenant, absl::string_view id) {
  return absl::StrCat(tenant.name, "/", id);
}

absl::Status UnscopeStatus(const absl::Status& status, const Tenant& tenant) {
  if (status.ok()) return status;
  const std::string prefix = absl::StrCat("'", tenant.name, "/");
  if (!absl::StrContains(status.message(), prefix)) return status;
  return absl::Status(status.code(), absl::StrReplaceAll(status.message(), {{prefix, "'"}}));
}

}  // namespace flashkv::server

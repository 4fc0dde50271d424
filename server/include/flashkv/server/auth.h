#pragma once

// Who a call is. Clients send a bearer token in the call's metadata ("authorization: Bearer
// <token>"); a token file maps tokens to tenants, and every sequence, prefix-cache block and
// shared-memory region belongs to the tenant that made it (see docs/reliability.md#security).
// Without a token file every call is the tenant "default".
//
// The token file, one token per line ('#' starts a comment):
//
//   TOKEN TENANT [max_sequences=N] [max_kv_blocks=N]
//
// Tokens are 16 to 4096 characters of RFC 6750's token alphabet (A-Z a-z 0-9 - . _ ~ + / =);
// tenant names 1 to 64 of A-Z a-z 0-9 . _ -. Several tokens may name one tenant (rotation); a
// quota given on any of its lines applies to the tenant, and two lines may not disagree on it.
// Tokens are kept only as SHA-256 digests, and looked up by digest, so neither memory nor the
// lookup's timing tells anything about the tokens.
//
// Ownership and thread-safety: Authenticate may be called from any thread, concurrently with
// Reload; a call keeps the Tenant it got (a shared_ptr) even if a reload drops its token.

#include <cstdint>
#include <memory>
#include <string>

#include "absl/container/flat_hash_map.h"
#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "flashkv/base/mutex.h"
#include "grpcpp/server_context.h"

namespace flashkv::server {

// What one tenant may hold at once; 0: no limit of its own (the server-wide limits still apply).
struct TenantQuota {
  int64_t max_sequences = 0;
  int64_t max_kv_blocks = 0;
};

struct Tenant {
  std::string name;
  TenantQuota quota;
};

inline constexpr char kDefaultTenant[] = "default";

// A parsed token file.
class TokenTable {
 public:
  // `defaults` apply to tenants whose lines give no quota. `source` names the file in errors,
  // which cite the line ("tokens.txt:3: ...") and never a token.
  static absl::StatusOr<std::shared_ptr<const TokenTable>> Parse(absl::string_view text,
                                                                 const TenantQuota& defaults,
                                                                 absl::string_view source);
  static absl::StatusOr<std::shared_ptr<const TokenTable>> Load(const std::string& path,
                                                                const TenantQuota& defaults);

  // The tenant of `token`, or null.
  std::shared_ptr<const Tenant> Find(absl::string_view token) const;
  size_t num_tokens() const { return by_digest_.size(); }
  size_t num_tenants() const { return tenants_.size(); }

 private:
  TokenTable() = default;
  absl::flat_hash_map<std::string, std::shared_ptr<const Tenant>> by_digest_;
  absl::flat_hash_map<std::string, std::shared_ptr<const Tenant>> tenants_;
};

class Authenticator {
 public:
  // Empty `tokens_file`: no authentication, every call is the default tenant with `defaults`.
  static absl::StatusOr<std::unique_ptr<Authenticator>> Create(const std::string& tokens_file,
                                                               const TenantQuota& defaults);

  // The caller's tenant. UNAUTHENTICATED when a token file is in use and the call carries no
  // bearer token, several, or one the file does not hold (the message never echoes a token).
  absl::StatusOr<std::shared_ptr<const Tenant>> Authenticate(
      const grpc::ServerContextBase& context) const;
  // Re-reads the token file (SIGHUP). On error the table in use stays, and the error says why.
  // Without a token file: OK, nothing to do.
  absl::Status Reload();
  bool enabled() const { return !tokens_file_.empty(); }

 private:
  Authenticator(std::string tokens_file, const TenantQuota& defaults)
      : tokens_file_(std::move(tokens_file)), defaults_(defaults) {}

  const std::string tokens_file_;
  const TenantQuota defaults_;
  std::shared_ptr<const Tenant> default_tenant_;
  mutable Mutex mu_;
  std::shared_ptr<const TokenTable> table_ ABSL_GUARDED_BY(mu_);
};

// The bearer token of an "authorization" metadata value ("Bearer <token>", the scheme in any
// case), or an empty view when it is not one.
absl::string_view BearerToken(absl::string_view authorization);

// Sequence ids live in their tenant's namespace: the caches know a sequence as
// "<tenant>/<id>" (tenant names contain no '/'), so tenants can never name, probe or collide
// with each other's sequences.
std::string ScopedSequenceId(const Tenant& tenant, absl::string_view id);
// `status` with the tenant's prefix taken out of the ids it quotes ('acme/s1' -> 's1'), so that
// clients read their ids as they sent them.
absl::Status UnscopeStatus(const absl::Status& status, const Tenant& tenant);

}  // namespace flashkv::server

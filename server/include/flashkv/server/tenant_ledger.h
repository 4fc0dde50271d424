#pragma once

// What each tenant holds — live sequences and the KV blocks they take — checked against the
// tenants' quotas and the server-wide sequence limit before anything is created or reserved.
//
// Blocks are counted logically: a sequence of L tokens (at layer 0, which leads the others and
// decides the block table) holds ceil(L / page_size) blocks, whether they are resident or swapped
// out, and whether or not a fork shares them. That is an upper bound on the tenant's share of the
// pool (a fork counts its parent's blocks again until either writes), predictable by the client,
// and the same on every device. A Step reserves the blocks its layer-0 entries add before it is
// queued; the reservation is settled when the step commits (the lengths advance) or aborts.
//
// Thread-safety: none; CacheSet calls it under its own mutex, together with the directory it
// keeps consistent with.

#include <cstdint>
#include <string>
#include <utility>
#include <vector>

#include "absl/container/flat_hash_map.h"
#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "absl/types/span.h"
#include "flashkv/server/auth.h"

namespace flashkv::server {

struct TenantUsage {
  int64_t sequences = 0;
  int64_t kv_blocks = 0;           // held by committed lengths
  int64_t kv_blocks_reserved = 0;  // reserved by steps not yet resolved
};

// Blocks reserved by one step, to be settled once.
struct LedgerReservation {
  struct Item {
    std::string id;  // scoped sequence id
    uint64_t serial = 0;
    int64_t tokens = 0;
  };
  std::string tenant;
  int64_t blocks = 0;
  std::vector<Item> items;
};

class TenantLedger {
 public:
  TenantLedger(int page_size, int64_t max_sequences)
      : page_size_(page_size), max_sequences_(max_sequences) {}

  // Whether `tenant` may create one more sequence: RESOURCE_EXHAUSTED past the server's
  // limit or the tenant's quota, with the numbers.
  absl::Status CheckNewSequence(const Tenant& tenant) const;
  // Records a sequence just created (or forked) with `length` tokens. RESOURCE_EXHAUSTED, and
  // nothing recorded, when its blocks would pass the tenant's block quota.
  absl::Status AddSequence(const Tenant& tenant, const std::string& id, int64_t length);
  void RemoveSequence(absl::string_view id);

  // Reserves the blocks that appending `tokens` to each (scoped id, tokens) pair at layer 0 adds
  // on top of what is committed and already reserved. RESOURCE_EXHAUSTED past the tenant's
  // quota. Ids the ledger does not know are skipped (the step fails NOT_FOUND later).
  absl::StatusOr<LedgerReservation> Reserve(
      const Tenant& tenant, absl::Span<const std::pair<std::string, int64_t>> entries);
  // The step resolved: committed (its tokens join the lengths) or not.
  void Settle(const LedgerReservation& reservation, bool committed);

  TenantUsage Usage(absl::string_view tenant) const;
  // Every tenant that holds or held something, with its usage.
  std::vector<std::pair<std::string, TenantUsage>> AllUsage() const;
  int64_t total_sequences() const { return total_sequences_; }

 private:
  struct SequenceRecord {
    std::string tenant;
    int64_t length = 0;   // committed tokens at layer 0
    int64_t pending = 0;  // tokens reserved by unresolved steps
    uint64_t serial = 0;
  };
  int64_t Blocks(int64_t tokens) const { return (tokens + page_size_ - 1) / page_size_; }

  const int64_t page_size_;
  const int64_t max_sequences_;
  int64_t total_sequences_ = 0;
  uint64_t next_serial_ = 1;
  absl::flat_hash_map<std::string, SequenceRecord> sequences_;
  absl::flat_hash_map<std::string, TenantUsage> tenants_;
};

}  // namespace flashkv::server

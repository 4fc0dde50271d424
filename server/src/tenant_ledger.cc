#include "flashkv/server/tenant_ledger.h"

#include "absl/strings/str_cat.h"

namespace flashkv::server {

absl::Status TenantLedger::CheckNewSequence(const Tenant& tenant) const {
  if (total_sequences_ >= max_sequences_) {
    return absl::ResourceExhaustedError(absl::StrCat("the server holds ", total_sequences_,
                                                     " sequences, its limit (", max_sequences_,
                                                     ", --max-sequences); free some first"));
  }
  const int64_t quota = tenant.quota.max_sequences;
  if (quota > 0) {
    const auto it = tenants_.find(tenant.name);
    const int64_t held = it == tenants_.end() ? 0 : it->second.sequences;
    if (held >= quota) {
      return absl::ResourceExhaustedError(absl::StrCat("tenant '", tenant.name, "' holds ", held,
                                                       " sequences, its quota (", quota,
                                                       "); free some first"));
    }
  }
  return absl::OkStatus();
}

absl::Status TenantLedger::AddSequence(const Tenant& tenant, const std::string& id,
                                       int64_t length) {
  TenantUsage& usage = tenants_[tenant.name];
  const int64_t blocks = Blocks(length);
  const int64_t quota = tenant.quota.max_kv_blocks;
  if (quota > 0 && usage.kv_blocks + usage.kv_blocks_reserved + blocks > quota) {
    return absl::ResourceExhaustedError(absl::StrCat(
        "tenant '", tenant.name, "' KV block quota: it holds ", usage.kv_blocks, " blocks (",
        usage.kv_blocks_reserved, " more reserved by steps in flight); the ", length,
        " cached tokens of the new sequence take ", blocks, " more; the quota is ", quota));
  }
  SequenceRecord& record = sequences_[id];
  record = SequenceRecord{tenant.name, length, 0, next_serial_++};
  ++usage.sequences;
  usage.kv_blocks += blocks;
  ++total_sequences_;
  return absl::OkStatus();
}

void TenantLedger::RemoveSequence(absl::string_view id) {
  const auto it = sequences_.find(id);
  if (it == sequences_.end()) return;
  TenantUsage& usage = tenants_[it->second.tenant];
  --usage.sequences;
  usage.kv_blocks -= Blocks(it->second.length);
  --total_sequences_;
  sequences_.erase(it);
}

absl::StatusOr<LedgerReservation> TenantLedger::Reserve(
    const Tenant& tenant, absl::Span<const std::pair<std::string, int64_t>> entries) {
  LedgerReservation reservation;
  reservation.tenant = tenant.name;
  for (const auto& [id, tokens] : entries) {
    const auto it = sequences_.find(id);
    if (it == sequences_.end()) continue;
    const SequenceRecord& s = it->second;
    const int64_t before = s.length + s.pending;
    reservation.blocks += Blocks(before + tokens) - Blocks(before);
    reservation.items.push_back({id, s.serial, tokens});
  }
  TenantUsage& usage = tenants_[tenant.name];
  const int64_t quota = tenant.quota.max_kv_blocks;
  if (quota > 0 && reservation.blocks > 0 &&
      usage.kv_blocks + usage.kv_blocks_reserved + reservation.blocks > quota) {
    return absl::ResourceExhaustedError(absl::StrCat(
        "tenant '", tenant.name, "' KV block quota: it holds ", usage.kv_blocks, " blocks (",
        usage.kv_blocks_reserved, " more reserved by steps in flight); this step needs ",
        reservation.blocks, " more; the quota is ", quota, ". Nothing was applied"));
  }
  for (const LedgerReservation::Item& item : reservation.items) {
    sequences_[item.id].pending += item.tokens;
  }
  usage.kv_blocks_reserved += reservation.blocks;
  return reservation;
}

void TenantLedger::Settle(const LedgerReservation& reservation, bool committed) {
  TenantUsage& usage = tenants_[reservation.tenant];
  usage.kv_blocks_reserved -= reservation.blocks;
  for (const LedgerReservation::Item& item : reservation.items) {
    const auto it = sequences_.find(item.id);
    // Freed (and perhaps created again) while the step was in flight: nothing of it is left.
    if (it == sequences_.end() || it->second.serial != item.serial) continue;
    SequenceRecord& s = it->second;
    s.pending -= item.tokens;
    if (!committed) continue;
    const int64_t before = Blocks(s.length);
    s.length += item.tokens;
    usage.kv_blocks += Blocks(s.length) - before;
  }
}

TenantUsage TenantLedger::Usage(absl::string_view tenant) const {
  const auto it = tenants_.find(tenant);
  return it == tenants_.end() ? TenantUsage{} : it->second;
}

std::vector<std::pair<std::string, TenantUsage>> TenantLedger::AllUsage() const {
  return std::vector<std::pair<std::string, TenantUsage>>(tenants_.begin(), tenants_.end());
}

}  // namespace flashkv::server

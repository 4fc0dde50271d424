#pragma once

// Shared-memory regions for the fuzz targets of the server's request checks: two host regions,
// one of the calling tenant and one of another tenant, registered once per process. Random
// region ids never name them, so a target parses its message with protobuf and points every
// RegionSlice whose id is 1 (mod 3) at the caller's region and 2 (mod 3) at the other tenant's.

#include <cstdint>

#include <string>

#include "absl/status/status.h"
#include "flashkv/server/region_registry.h"
#include "flashkv/v1/tensor.pb.h"
#include "wire_fuzz_util.h"

namespace flashkv::fuzz {

inline constexpr uint64_t kRegionBytes = 16 << 10;
inline constexpr char kTenant[] = "fuzz";
inline constexpr char kOtherTenant[] = "other";

struct FuzzRegions {
  server::RegionRegistry registry;
  uint64_t own = 0;    // kTenant's
  uint64_t other = 0;  // kOtherTenant's
};

// Registered at the first call. Both hold small finite values of every dtype's width.
FuzzRegions& SharedRegions();

// Points `slice` at a registered region by its id's residue (offset taken modulo twice the
// region's size, so it lands inside and just past it); returns whether it now names the other
// tenant's region.
bool PatchSlice(v1::RegionSlice* slice, const FuzzRegions& regions);

// Parses `*message` as a Proto, lets patch(&proto) point its region slices at the registered
// regions (returning whether one now names the other tenant's), and replaces `*message` with
// protobuf's serialization of the result. False when protobuf cannot parse the message (the
// input is then skipped).
template <typename Proto, typename Patch>
bool PatchMessage(wire::MessageBytes* message, Patch&& patch, bool* names_other) {
  Proto proto;
  if (!ParseProto(*message, &proto)) return false;
  *names_other = patch(&proto);
  *message = FromString(proto.SerializeAsString());
  return true;
}

// The codes a bad request may get from the checks: the client's mistakes, never the server's.
bool IsClientError(const absl::Status& status);

}  // namespace flashkv::fuzz

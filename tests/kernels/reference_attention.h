#pragma once

// Reference attention for the kernels tests, written as plain loops that are easy to check by eye.
//
// Two precisions:
// - kFloat64: every score, probability and sum in double. The oracle every kernel is judged by.
// - kNaiveStorage: what an unfused implementation in the storage dtype computes (as a framework's
//   "matmul, scale, softmax, matmul" in fp16/bf16 does): Q·K accumulated in float32 and rounded to
//   the dtype, the scale applied and rounded, softmax in float32 with the probabilities rounded to
//   the dtype, P·V accumulated in float32 and rounded. Its error against kFloat64 is the yardstick
//   for fp16/bf16 kernels: a flash kernel should be no more than a small multiple of it off.
//
// The references read the same arguments a kernel does (FixedAttentionArgs, ...), with every
// pointer in host memory: strides, cu_seqlens and block tables are followed independently of any
// kernel code. `out` and `lse` of the args are ignored.

#include <cstdint>
#include <functional>
#include <vector>

#include "flashkv/attention.h"

namespace flashkv::testbed {

enum class Precision { kFloat64, kNaiveStorage };

// Float64 results in the API's index order:
//   out[((o * rows + r) * heads + h) * dim + d]   ([B, Sq, Hq, D] or [1, Tq, Hq, D])
//   lse[(o * heads + h) * rows + r]               ([B, Hq, Sq] or [Hq, Tq])
// A query row that sees no key has out = 0 and lse = -inf.
struct ReferenceOutput {
  int64_t outer = 0;
  int64_t rows = 0;
  int heads = 0;
  int dim = 0;
  std::vector<double> out;
  std::vector<double> lse;

  int64_t OutIndex(int64_t o, int64_t r, int h, int d) const {
    return ((o * rows + r) * heads + h) * dim + d;
  }
  int64_t LseIndex(int64_t o, int64_t r, int h) const { return (o * heads + h) * rows + r; }
};

// Keys visible to query i of a sequence with sq queries and skv keys: all of them, or under the
// bottom-right causal mask those j with j <= i + skv - sq.
int64_t VisibleKeys(int64_t i, int64_t sq, int64_t skv, bool causal);

// Reads element (token, head, d) of one sequence's Q, K or V, token counted within the sequence.
using ElementReader = std::function<double(int64_t token, int head, int d)>;

// One sequence of a batch, and where its query rows go in the output.
struct SequenceView {
  int64_t seqlen_q = 0;
  int64_t seqlen_kv = 0;
  ElementReader q;
  ElementReader k;
  ElementReader v;
  int64_t out_outer = 0;  // query i goes to output row (out_outer, out_row0 + i)
  int64_t out_row0 = 0;
};

struct ReferenceProblem {
  DType dtype = DType::kFloat32;  // rounding of kNaiveStorage
  int num_heads_q = 0;
  int num_heads_kv = 0;
  int head_dim = 0;
  double softmax_scale = 0;
  bool causal = false;
  int64_t out_outer = 0;  // output geometry
  int64_t out_rows = 0;
  std::vector<SequenceView> sequences;
};

// The attention of every sequence and query head (sequences x KV heads run on a few threads).
ReferenceOutput ComputeReference(const ReferenceProblem& problem, Precision precision);

// The three API shapes. Index arrays are read through their host_* copies when set, else through
// the primary pointers; all pointers must be host memory.
ReferenceOutput ReferenceFixed(const FixedAttentionArgs& args, Precision precision);
ReferenceOutput ReferenceVarlen(const VarlenAttentionArgs& args, Precision precision);
// K and V are read page by page through the block table.
ReferenceOutput ReferencePaged(const PagedAttentionArgs& args, Precision precision);

}  // namespace flashkv::testbed

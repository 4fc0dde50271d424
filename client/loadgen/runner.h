#pragma once

// One simulated model runner. It owns up to max_batch sequences and runs forward passes over
// them, the way a serving engine with continuous batching does: each pass carries a prefill
// chunk for sequences still reading their prompt and one decode token for the others, and calls
// Step for every layer 0..L-1 in order on its StepStream, with fresh random q per layer and the
// deterministic K/V of the pass's tokens (synthetic_data.h). Finished sequences are freed and
// replaced from the request source.
//
// Every answer it checks is recomputed with the CPU implementation over the K/V the runner keeps
// for each sequence and layer (what it sent, plus the regenerated prefix the server reported as
// cached); mismatches are counted and described, never dropped. A failed step aborts the pass's
// sequences (their layers are no longer in step), frees them and opens a new stream — except when
// the server refused the pass's first layer for lack of KV memory: then nothing was applied, and
// the runner preempts its newest sequence and retries the rest, as a serving engine does.
//
// Data plane: each layer request's tensors are generated straight into one of pipeline_depth
// slots, sized for a whole pass, and stay there until its response has been checked; the
// request references them (bytes: encoded in place, no copy into a message) or names them
// (shm: the slots live in a region the runner registered, and the outputs are written there).
// Every step also records the server's timing: kernel time, and the overhead around it.
//
// Thread-safety: a Runner is driven by one thread (Run()); it shares only the RequestSource,
// the LiveCounters and the stop flag, which are thread-safe.

#include <atomic>
#include <cstdint>
#include <deque>
#include <list>
#include <memory>
#include <random>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/time/time.h"
#include "config.h"
#include "device_inputs.h"
#include "flashkv/client/client.h"
#include "request_source.h"
#include "run_stats.h"
#include "verify.h"

namespace flashkv::loadgen {

// The server's model, from GetCacheInfo.
struct ModelShape {
  int num_layers = 0;
  int num_q_heads = 0;
  int num_kv_heads = 0;
  int head_dim = 0;
  DType dtype = DType::kFloat16;
  int page_size = 0;
  int64_t max_context = 0;
  int num_devices = 1;
};

// Where shm regions live, decided once per run: `memory` (host or cuda, never auto) for
// --data-plane=shm and the server's backend ("cpu"/"cuda") and devices; "" for bytes.
// FAILED_PRECONDITION for --region-memory=cuda in a build without CUDA.
absl::StatusOr<std::string> ChooseRegionMemory(const LoadgenConfig& config,
                                               const std::string& backend, int num_devices,
                                               bool cuda_built, int cuda_devices);

// What all runners share. Everything but the pointees is read-only during the run.
struct RunContext {
  const LoadgenConfig* config = nullptr;
  ModelShape shape;
  tools::Tolerance tolerance;
  RequestSource* source = nullptr;
  LiveCounters* live = nullptr;
  const std::atomic<bool>* stop = nullptr;
  absl::Time start;
  bool cuda_regions = false;  // shm regions in CUDA device memory (ChooseRegionMemory)
};

class Runner {
 public:
  Runner(int index, Client* client, const RunContext& context);
  Runner(const Runner&) = delete;
  Runner& operator=(const Runner&) = delete;

  // Allocates the slots (and registers the region, for shm). Before Run().
  absl::Status Prepare();
  // Runs until the stop flag is raised or the source is exhausted and every sequence finished,
  // then frees what is left.
  void Run();
  const RunStats& stats() const { return stats_; }

 private:
  struct Sequence {
    std::string id;
    Request request;
    std::vector<int64_t> tokens;  // prompt, then one id per decode
    std::vector<uint64_t> chain;  // ChainHash of tokens[0..t], per position
    int64_t context = 0;          // tokens whose K/V the server holds on every layer
    int64_t prompt_done = 0;      // prompt tokens on the server (cached ones included)
    int64_t produced = 0;         // output tokens
    absl::Time last_token;
    // Per layer, the K and V rows [context, Hkv, D] the server should hold (verification).
    std::vector<std::string> k, v;
  };
  // n tokens of one sequence in this pass, positions [start, start + n).
  struct Entry {
    Sequence* sequence;
    int64_t start;
    int64_t n;
    bool prefill;
  };
  // A layer request on the wire; its tensors are in slots_[layer % pipeline_depth].
  struct InFlight {
    int layer;
    uint64_t step_id;
    absl::Time sent;
    bool check;
  };
  // Room for one layer request of a whole pass: q, k, v (and out, shm) rows, entry after entry.
  // The pointers are host memory: the region's own, or (CUDA regions) host twins whose rows are
  // copied to `device` before a request is sent and from it after its response.
  struct Slot {
    std::byte* q = nullptr;
    std::byte* k = nullptr;
    std::byte* v = nullptr;
    std::byte* out = nullptr;
    uint64_t q_offset = 0, k_offset = 0, v_offset = 0, out_offset = 0;  // in the region
  };

  void Admit();
  absl::Status CreateOne(Request request);
  void PlanPass();
  // Fills the layer's tensors into `slot` and inputs_ with views of them. `poison`: the output
  // rows (shm) are first overwritten with NaN, so that rows the server failed to write show.
  absl::Status BuildLayer(int layer, const Slot& slot, bool poison);
  // batch_ from inputs_: the pass's `rows` rows of the slot as one StepBatch (at layers after 0
  // of a decode pass, without the sequences).
  void BuildBatch(const Slot& slot, int64_t rows, int layer);
  // CUDA regions: the pass's `bytes` at `offset` between a slot's host twin and the region.
  absl::Status ToDevice(uint64_t offset, const std::byte* from, size_t bytes) const;
  absl::Status FromDevice(uint64_t offset, std::byte* to, size_t bytes) const;
  // A view of `rows` rows of `row_bytes` at `data` ([rows, heads, D]), with its region slice
  // (shm).
  TensorView SlotView(std::byte* data, uint64_t offset, int64_t rows, int64_t heads) const;
  absl::Status RunPass();
  absl::Status ReceiveOne(std::deque<InFlight>* in_flight);
  void Check(const InFlight& in_flight, const v1::StepResponse& response);
  void FinishPass();
  // After a failed step: preempts the newest sequence when nothing of the pass was applied
  // (RESOURCE_EXHAUSTED on layer 0), else aborts every sequence of the pass.
  void AbortPass(const absl::Status& status);
  // Undoes what PlanPass and BuildLayer recorded for the pass (decode tokens, kept K/V).
  void RollBackPass();
  void Release(Sequence* sequence);  // FreeSequence, counted
  // Counts a failed call; returns whether it was expected.
  bool CountError(const char* rpc, const absl::Status& status);
  // Writes the K and V rows of tokens [start, start + n) to `k` and `v` (and keeps them for
  // verification).
  void AppendKv(Sequence* sequence, int layer, int64_t start, int64_t n, std::byte* k,
                std::byte* v);
  void GenerateKv(const Sequence& sequence, int layer, int64_t start, int64_t n, std::byte* k,
                  std::byte* v) const;
  // --inputs=device: the fill jobs of one layer entry's q, k and v (at the slot's region offsets).
  void AddFillJobs(const Entry& e, int layer, const Slot& slot, size_t q_at, size_t kv_at,
                   uint64_t q_seed);
  // The layer's K and V rows [0, context) of `s` for verification: the kept ones, or (inputs
  // made on the device, nothing kept) regenerated into scratch_.
  std::pair<const std::byte*, const std::byte*> KvToCheck(const Sequence& s, int layer,
                                                          int64_t context);
  // --layer-gap-us: waits out the runner's own layer work before a layer's request.
  void WaitLayerGap() const;
  void RecordTiming(absl::Duration latency, const v1::StepResponse& response);
  double Seconds(absl::Time t) const { return absl::ToDoubleSeconds(t - context_.start); }
  CallOptions Call() const;

  const int index_;
  Client* const client_;
  const RunContext context_;
  const LoadgenConfig& config_;
  const ModelShape shape_;
  const bool device_inputs_;  // --inputs=device
  const bool keep_kv_;        // verification on, inputs made on the host: keep every K/V
  const std::string routing_key_;
  std::mt19937_64 rng_;
  std::unique_ptr<StepSession> session_;
  std::list<Sequence> active_;
  std::vector<Entry> pass_;
  std::vector<int64_t> pass_rows_;  // pass_[i]'s first row in a slot
  bool pass_is_decode_ = false;     // every entry of the pass is a decode
  int answered_in_pass_ = 0;        // layer responses received in the current pass
  std::vector<std::byte> want_;     // CPU output buffer
  std::vector<std::byte> scratch_;  // K/V regenerated for a cached prefix
  std::unique_ptr<SharedRegion> region_;        // shm
  std::vector<std::vector<std::byte>> memory_;  // bytes, CUDA regions: the slots' host storage
  std::vector<Slot> slots_;
  std::unique_ptr<DeviceInputs> filler_;  // --inputs=device
  std::vector<FillJob> jobs_;             // the layer being built's (--inputs=device)
  absl::Time last_response_;              // --layer-gap-us counts from here
  std::vector<StepInput> inputs_;  // the request being built (views into a slot)
  StepBatchInput batch_;           // the same, batched (--step-format=batch or pass)
  uint64_t passes_begun_ = 0;      // decode pass ids of this runner's stream (--step-format=pass)
  RunStats stats_;
};

}  // namespace flashkv::loadgen

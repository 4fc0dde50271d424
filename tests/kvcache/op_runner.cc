#include "op_runner.h"

#include <algorithm>
#include <iterator>
#include <set>
#include <utility>

namespace flashkv::kvcache::kvtest {

int RngChoices::Below(int n) { return std::uniform_int_distribution<int>(0, n - 1)(rng_); }

bool RngChoices::Chance(double p) {
  return std::uniform_real_distribution<double>(0, 1)(rng_) < p;
}

OpRunner::OpRunner(Harness* harness, Choices* choices) : h_(harness), choices_(choices) {
  for (int i = 0; i < 4; ++i) base_prompts_.push_back(Harness::Prompt(1000 + i, 64));
}

std::string OpRunner::AnyId() {
  auto it = h_->model.begin();
  std::advance(it, choices_->Below(static_cast<int>(h_->model.size())));
  return it->first;
}

void OpRunner::RunOne() {
  ++counts_.ops;
  h_->Advance(absl::Milliseconds(choices_->Below(2000)));
  const int r = choices_->Below(100);
  const int live = static_cast<int>(h_->model.size());
  if (live == 0 || (r < 14 && live < kMaxSequences)) {
    DoCreate();
  } else if (r < 62) {
    DoBatch();
  } else if (r < 72) {
    DoFork();
  } else if (r < 82 || live >= kMaxSequences) {
    DoFree();
  } else if (r < 92) {
    DoSwapOut();
  } else if (r < 96) {
    DoExpire();
  } else {
    DoBadInput();
  }
}

void OpRunner::DoCreate() {
  const std::string id = "s" + std::to_string(next_id_++);
  std::vector<int64_t> prompt;
  if (choices_->Chance(0.7)) {
    const std::vector<int64_t>& base = base_prompts_[choices_->Below(4)];
    prompt.assign(base.begin(), base.begin() + 1 + choices_->Below(static_cast<int>(base.size())));
    if (choices_->Chance(0.2)) prompt[choices_->Below(static_cast<int>(prompt.size()))] += 1;
  }
  const std::string tenant = choices_->Chance(0.3) ? "t1" : "";
  absl::StatusOr<int> cached = h_->Create(id, prompt, tenant);
  ASSERT_TRUE(cached.ok()) << cached.status();
  EXPECT_EQ(*cached % h_->config().page_size, 0);
  EXPECT_LE(*cached, std::max<int>(0, static_cast<int>(prompt.size()) - 1));
  counts_.prefix_hit_tokens += *cached;
  Touch(id);
}

// A batch at one layer over up to 4 sequences that can advance there.
void OpRunner::DoBatch() {
  const int layers = h_->config().num_layers;
  const int page = h_->config().page_size;
  const int layer = choices_->Chance(0.4) ? 0 : choices_->Below(layers);
  std::vector<Step> steps;
  for (const auto& [id, seq] : h_->model) {
    if (steps.size() >= 4 || !choices_->Chance(0.5)) continue;
    const int room = layer == 0 ? h_->cache().max_context() - seq.len[0]
                                : seq.len[layer - 1] - seq.len[layer];
    if (room <= 0) continue;
    const int n = 1 + choices_->Below(std::min(room, choices_->Chance(0.2) ? 3 * page + 2 : 3));
    steps.push_back(Step{id, n, choices_->Chance(0.7)});
  }
  if (steps.empty()) return;
  absl::StatusOr<LayerBatch> batch = h_->Prepare(layer, steps);
  if (!batch.ok()) {
    ASSERT_EQ(batch.status().code(), absl::StatusCode::kResourceExhausted) << batch.status();
    ++counts_.exhausted;
    return;
  }
  for (const Step& s : steps) Touch(s.id);
  ASSERT_TRUE(h_->Write(*batch, layer, steps).ok());
  FinishBatch(*std::move(batch), layer, steps);
}

void OpRunner::FinishBatch(LayerBatch batch, int layer, const std::vector<Step>& steps) {
  if (choices_->Chance(0.1)) {
    // Meanwhile: the batch's sequences cannot be forked or swapped; freeing one is deferred.
    const std::string id = steps[choices_->Below(static_cast<int>(steps.size()))].id;
    EXPECT_EQ(h_->Fork(id, "never").code(), absl::StatusCode::kAborted);
    EXPECT_EQ(h_->SwapOut(id).code(), absl::StatusCode::kAborted);
    if (choices_->Chance(0.5)) {
      ASSERT_TRUE(h_->Free(id).ok());
      last_used_.erase(id);
    }
  }
  const int r = choices_->Below(10);
  if (r < 8) {
    h_->Commit(std::move(batch), layer, steps);
  } else if (r < 9) {
    h_->Abort(std::move(batch));
  } else {
    { LayerBatch dropped = std::move(batch); }  // destroying a pending batch aborts it
    h_->Check();
  }
}

void OpRunner::DoFork() {
  const std::string parent = AnyId();
  const std::string child = "s" + std::to_string(next_id_++);
  const absl::Status s = h_->Fork(parent, child);
  if (!s.ok()) {
    ASSERT_EQ(s.code(), absl::StatusCode::kResourceExhausted) << s;
    return;
  }
  Touch(parent);
  Touch(child);
}

void OpRunner::DoFree() {
  const std::string id = AnyId();
  ASSERT_TRUE(h_->Free(id).ok());
  last_used_.erase(id);
}

void OpRunner::DoSwapOut() {
  const absl::Status s = h_->SwapOut(AnyId());
  ASSERT_TRUE(s.ok() || s.code() == absl::StatusCode::kFailedPrecondition ||
              s.code() == absl::StatusCode::kResourceExhausted)
      << s;
}

void OpRunner::DoExpire() {
  const absl::Duration ttl = absl::Seconds(5 + choices_->Below(40));
  std::set<std::string> expected;
  for (const auto& [id, when] : last_used_) {
    if (when <= h_->now() - ttl) expected.insert(id);
  }
  const std::vector<std::string> expired = h_->Expire(ttl);
  EXPECT_EQ(std::set<std::string>(expired.begin(), expired.end()), expected);
  for (const std::string& id : expired) last_used_.erase(id);
}

void OpRunner::DoBadInput() {
  EXPECT_EQ(h_->Append(0, {Step{"missing", 1}}).code(), absl::StatusCode::kNotFound);
  if (!h_->model.empty()) {
    const std::string id = AnyId();
    EXPECT_EQ(h_->Append(0, {Step{id, 1}, Step{id, 1}}).code(), absl::StatusCode::kInvalidArgument);
    EXPECT_EQ(h_->Create(id).status().code(), absl::StatusCode::kAlreadyExists);
  }
}

}  // namespace flashkv::kvcache::kvtest

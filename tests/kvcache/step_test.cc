// Whole layer steps (append + paged attention through RunLayerStep) on the CPU backend.
// Differential: a sequence built through a prefix hit, a fork (copy-on-write) and a swap round
// trip gives bit-for-bit the same attention as one built plainly from the same K/V, and both
// match a float64 reference. Also: tensors that do not fit the batch are refused by name.

#include <cmath>
#include <cstring>
#include <random>

#include "absl/strings/match.h"
#include "differential.h"
#include "harness.h"

namespace flashkv::kvcache {
namespace {

using kvtest::Harness;
using kvtest::Step;
using kvtest::TestConfig;

struct StepCase {
  DType dtype;
  int page_size;
};

void PrintTo(const StepCase& c, std::ostream* os) {
  *os << DTypeName(c.dtype) << ", page " << c.page_size;
}

class StepTest : public ::testing::TestWithParam<StepCase> {};

TEST_P(StepTest, PrefixHitForkAndSwapGiveTheSameAttentionAsAPlainSequence) {
  kvtest::RunDifferential(
      kvtest::StepConfig(Backend::kCpu, GetParam().dtype, GetParam().page_size, 64),
      /*bit_exact=*/true);
}

INSTANTIATE_TEST_SUITE_P(
    DTypesAndPages, StepTest,
    ::testing::Values(StepCase{DType::kFloat32, 1}, StepCase{DType::kFloat32, 5},
                      StepCase{DType::kFloat32, 16}, StepCase{DType::kFloat16, 4},
                      StepCase{DType::kBFloat16, 3}),
    [](const ::testing::TestParamInfo<StepCase>& info) {
      return std::string(DTypeName(info.param.dtype)) + "_page" +
             std::to_string(info.param.page_size);
    });

TEST(StepTensorsTest, TensorsThatDoNotFitTheBatchAreRefusedByName) {
  Harness h(TestConfig(1, 4, 16, 0, DType::kFloat16, kvtest::kStepKvHeads, 64));
  ASSERT_TRUE(h.Create("a").ok());
  absl::StatusOr<LayerBatch> batch = h.Prepare(0, {Step{"a", 3}});
  ASSERT_TRUE(batch.ok());
  std::vector<char> buf(3 * kvtest::kStepQHeads * 64 * 4);
  StepTensors good;
  good.q = TensorRef{DType::kFloat16, 3, kvtest::kStepQHeads, 64, buf.data()};
  good.k = TensorRef{DType::kFloat16, 3, kvtest::kStepKvHeads, 64, buf.data()};
  good.v = good.k;
  good.out = buf.data();
  FLASHKV_EXPECT_OK(ValidateStepTensors(h.cache(), *batch, good));
  struct Case {
    const char* text;
    void (*mutate)(StepTensors&);
  };
  const Case cases[] = {
      {"k.dtype (fp32) differs from the cache's (fp16)", [](StepTensors& t) { t.k.dtype = DType::kFloat32; }},
      {"v has 4 rows; the batch has 3 new tokens", [](StepTensors& t) { t.v.rows = 4; }},
      {"k has 1 heads; the cache has 2 KV heads", [](StepTensors& t) { t.k.heads = 1; }},
      {"q.head_dim (128) differs", [](StepTensors& t) { t.q.head_dim = 128; }},
      {"q has 3 heads", [](StepTensors& t) { t.q.heads = 3; }},
      {"q.dtype (bf16)", [](StepTensors& t) { t.q.dtype = DType::kBFloat16; }},
      {"out is null", [](StepTensors& t) { t.out = nullptr; }},
      {"v is null", [](StepTensors& t) { t.v.data = nullptr; }},
  };
  for (const Case& c : cases) {
    StepTensors t = good;
    c.mutate(t);
    const absl::Status s = RunLayerStep(h.cache(), *batch, t, nullptr);
    EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument) << s;
    EXPECT_TRUE(absl::StrContains(s.message(), c.text)) << s;
  }
  h.Abort(*std::move(batch));
  EXPECT_EQ(h.model["a"].len[0], 0);
}

}  // namespace
}  // namespace flashkv::kvcache

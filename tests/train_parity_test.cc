// Training-step parity on the fixtures (fp32, every backend): the loss of the input batch with
// training routing, the gradient of every parameter, and the parameters after one AdamW step
// computed from our own gradients, against the independent float64 reference
// (tests/data/openmoe/README.md tolerances: loss 1e-4 relative; gradients within 1e-3 of each
// tensor's largest; parameters 1e-6 where the reference gradient is >= 1e-3 of the tensor's
// largest, 2 lr elsewhere).
#include <algorithm>
#include <cmath>
#include <cstdio>
#include <random>
#include <string>
#include <utility>

#include "gtest/gtest.h"
#include "kernels/adamw.h"
#include "openmoe/core/test_util.h"
#include "openmoe/io/safetensors.h"
#include "openmoe/trainable_model.h"
#include "tests/fixtures.h"

namespace openmoe {
namespace {

template <class Space>
class TrainParityTest : public ::testing::Test {};
TYPED_TEST_SUITE(TrainParityTest, testing::Backends);

TYPED_TEST(TrainParityTest, LossGradientsAndAdamWStepMatchTheFixtures) {
  using Space = TypeParam;
  for (const std::string name : {"tiny8b", "tinybase"}) {
    const std::string dir = testing::FixtureDir(name);
    const nlohmann::json want = testing::FixtureJson(dir);
    absl::StatusOr<io::TokenBatch> batch = testing::FixtureBatch(dir);
    ASSERT_TRUE(batch.ok()) << batch.status();
    auto expected = io::SafetensorsFile::Open(dir + "/expected.safetensors");
    ASSERT_TRUE(expected.ok());
    auto model = TrainableModel<Space>::Load(dir);
    ASSERT_TRUE(model.ok()) << model.status();
    absl::StatusOr<LossParts> loss = model->ForwardBackward(batch->ids, batch->mask, batch->batch, batch->seq_len);
    ASSERT_TRUE(loss.ok()) << loss.status();
    const double total = want["loss_total"];
    EXPECT_NEAR(loss->total, total, 1e-4 * std::fabs(total)) << name;
    EXPECT_NEAR(loss->lm, double(want["loss_parts"]["lm"]), 1e-4 * std::fabs(total)) << name;
    EXPECT_NEAR(loss->router_aux, double(want["loss_parts"]["router_aux"]), 1e-4 * double(want["loss_parts"]["router_aux"]));
    EXPECT_NEAR(loss->router_z, double(want["loss_parts"]["router_z"]), 1e-4 * double(want["loss_parts"]["router_z"]));

    const kernels::AdamWOptions options = testing::FixtureAdamW(want);
    for (const TensorSpec& spec : model->table()) {
      Vector<float, Space> g = model->grad(spec.name), p = model->param(spec.name);
      const int64_t n = g.extent(0);
      const std::vector<float> got = testing::ToHost(Matrix<float, Space>(g.data(), 1, n));
      std::vector<float> ref(n), step1(n);
      ASSERT_TRUE(expected->ReadAsFloat("grad." + spec.name, ref.data(), n).ok()) << spec.name;
      ASSERT_TRUE(expected->ReadAsFloat("adamw_step1." + spec.name, step1.data(), n).ok()) << spec.name;
      float max_ref = 0;
      for (float e : ref) max_ref = std::max(max_ref, std::fabs(e));
      for (int64_t i = 0; i < n; ++i) {
        ASSERT_NEAR(got[i], ref[i], 1e-3 * max_ref) << name << " grad." << spec.name << "[" << i << "] on " << Space::name();
      }
      Vector<float, Space> m("m", n), v("v", n);
      ASSERT_TRUE(kernels::AdamWStep<Space>(Space(), p, g, m, v, 1, options).ok());
      const std::vector<float> after = testing::ToHost(Matrix<float, Space>(p.data(), 1, n));
      for (int64_t i = 0; i < n; ++i) {
        const bool determined = std::fabs(ref[i]) >= 1e-3f * max_ref;
        ASSERT_NEAR(after[i], step1[i], determined ? 1e-6 : 2 * options.lr)
            << name << " " << spec.name << "[" << i << "] grad " << ref[i] << " on " << Space::name();
      }
    }
  }
}


// Activation recomputation runs each layer's forward again in the backward pass: the loss and
// every gradient must come out bit-identical to keeping the activations.
TYPED_TEST(TrainParityTest, ActivationRecomputationGivesIdenticalGradients) {
  using Space = TypeParam;
  const std::string dir = testing::FixtureDir("tiny8b");
  absl::StatusOr<io::TokenBatch> batch = testing::FixtureBatch(dir);
  ASSERT_TRUE(batch.ok()) << batch.status();
  auto kept = TrainableModel<Space>::Load(dir), recomputed = TrainableModel<Space>::Load(dir);
  ASSERT_TRUE(kept.ok() && recomputed.ok());
  recomputed->set_recompute_activations(true);
  auto a = kept->ForwardBackward(batch->ids, batch->mask, batch->batch, batch->seq_len);
  auto b = recomputed->ForwardBackward(batch->ids, batch->mask, batch->batch, batch->seq_len);
  ASSERT_TRUE(a.ok() && b.ok());
  EXPECT_EQ(a->total, b->total);
  EXPECT_EQ(a->router_aux, b->router_aux);
  for (const TensorSpec& spec : kept->table()) {
    const int64_t n = kept->grad(spec.name).extent(0);
    EXPECT_EQ(testing::ToHost(Matrix<float, Space>(kept->grad(spec.name).data(), 1, n)),
              testing::ToHost(Matrix<float, Space>(recomputed->grad(spec.name).data(), 1, n)))
        << spec.name << " on " << Space::name();
  }
}


// From the second step on, a step zero-fills only the gradients that no weight product writes,
// and the first product into each region overwrites it (TrainableModel::product_grads_): a step
// after another one, on another batch, must give the gradients of a first step bit for bit, in
// fp32 and bf16, with the experts and their tokens different between the two batches.
TYPED_TEST(TrainParityTest, LaterStepsGiveTheGradientsOfAFirstStep) {
  using Space = TypeParam;
  using Dtype = typename TrainableModel<Space>::ComputeDtype;
  for (const std::string name : {"tiny8b", "tinybase"})
  for (const Dtype dtype : {Dtype::kFp32, Dtype::kBf16}) {
    const std::string dir = testing::FixtureDir(name);
    absl::StatusOr<io::TokenBatch> batch = testing::FixtureBatch(dir);
    ASSERT_TRUE(batch.ok()) << batch.status();
    io::TokenBatch other = *batch;  // other tokens: other routes, other values in every gradient
    for (int64_t& id : other.ids) id = (id * 7 + 3) % 288;  // < both fixtures' vocabularies
    auto first = TrainableModel<Space>::Load(dir), later = TrainableModel<Space>::Load(dir);
    ASSERT_TRUE(first.ok() && later.ok());
    first->set_compute_dtype(dtype), later->set_compute_dtype(dtype);
    ASSERT_TRUE(later->ForwardBackward(other.ids, other.mask, other.batch, other.seq_len).ok());
    ASSERT_TRUE(later->ForwardBackward(other.ids, other.mask, other.batch, other.seq_len).ok());
    Kokkos::deep_copy(later->flat_grads(), std::nanf(""));  // stale values, even NaN, must not leak
    auto a = first->ForwardBackward(batch->ids, batch->mask, batch->batch, batch->seq_len);
    auto b = later->ForwardBackward(batch->ids, batch->mask, batch->batch, batch->seq_len);
    ASSERT_TRUE(a.ok() && b.ok());
    EXPECT_EQ(a->total, b->total) << name;
    for (const TensorSpec& spec : first->table()) {
      const int64_t n = first->grad(spec.name).extent(0);
      EXPECT_EQ(testing::ToHost(Matrix<float, Space>(first->grad(spec.name).data(), 1, n)),
                testing::ToHost(Matrix<float, Space>(later->grad(spec.name).data(), 1, n)))
          << name << " " << spec.name << (dtype == Dtype::kBf16 ? " bf16" : " fp32") << " on " << Space::name();
    }
  }
}

// As LaterStepsGiveTheGradientsOfAFirstStep, with the batch split in microbatches of one example
// (a stage running every layer, microbatches one after the other): in a later step the first
// microbatch's product into each learned gradient region overwrites it and the next ones add, so
// a later step must still give a first step's gradients bit for bit, and a step of two
// microbatches must differ from one of a single microbatch (each microbatch is its own routing
// group and the gradients are their mean: otherwise this test could not tell the paths apart).
TYPED_TEST(TrainParityTest, LaterStepsOfMicrobatchesGiveTheGradientsOfAFirstStep) {
  using Space = TypeParam;
  using Model = TrainableModel<Space>;
  using Dtype = typename Model::ComputeDtype;
  const typename Model::PipelineSchedule one_after_another = [](const typename Model::StageOps& ops) -> absl::Status {
    for (int64_t j = 0; j < ops.microbatches; ++j) {
      absl::Status s = ops.forward(j, {}, {});
      if (s.ok()) s = ops.backward(j, {}, {});
      if (!s.ok()) return s;
    }
    return absl::OkStatus();
  };
  const std::string dir = testing::FixtureDir("tiny8b");
  absl::StatusOr<io::TokenBatch> batch = testing::FixtureBatch(dir);
  ASSERT_TRUE(batch.ok()) << batch.status();
  ASSERT_GE(batch->batch, 2) << "needs two examples for two microbatches";
  io::TokenBatch other = *batch;
  for (int64_t& id : other.ids) id = (id * 7 + 3) % 288;
  for (const Dtype dtype : {Dtype::kFp32, Dtype::kBf16}) {
    auto first = Model::Load(dir), later = Model::Load(dir), whole = Model::Load(dir);
    ASSERT_TRUE(first.ok() && later.ok() && whole.ok());
    first->set_compute_dtype(dtype), later->set_compute_dtype(dtype), whole->set_compute_dtype(dtype);
    const int64_t L = first->config().num_hidden_layers;
    auto step = [&](Model& model, const io::TokenBatch& b, int64_t microbatch_size) {
      return model.ForwardBackwardStage(0, L, b.ids, b.mask, b.batch, b.seq_len, microbatch_size, one_after_another);
    };
    ASSERT_TRUE(step(*later, other, 1).ok());
    ASSERT_TRUE(step(*later, other, 1).ok());
    Kokkos::deep_copy(later->flat_grads(), std::nanf(""));  // stale values, even NaN, must not leak
    auto a = step(*first, *batch, 1);
    auto b = step(*later, *batch, 1);
    auto c = step(*whole, *batch, batch->batch);  // one microbatch of the whole batch
    ASSERT_TRUE(a.ok() && b.ok() && c.ok()) << a.status() << " " << b.status() << " " << c.status();
    EXPECT_EQ(a->total, b->total);
    bool any_differs_from_whole = false;
    for (const TensorSpec& spec : first->table()) {
      const int64_t n = first->grad(spec.name).extent(0);
      const std::vector<float> got = testing::ToHost(Matrix<float, Space>(later->grad(spec.name).data(), 1, n));
      EXPECT_EQ(testing::ToHost(Matrix<float, Space>(first->grad(spec.name).data(), 1, n)), got)
          << spec.name << (dtype == Dtype::kBf16 ? " bf16" : " fp32") << " on " << Space::name();
      any_differs_from_whole |= got != testing::ToHost(Matrix<float, Space>(whole->grad(spec.name).data(), 1, n));
    }
    EXPECT_TRUE(any_differs_from_whole) << "two microbatches gave the gradients of one: this test cannot tell";
  }
}

// The LM head's weight gradient as one product over all rows (the default where their logit
// gradients fit) and as chunk-by-chunk additions (256 rows a chunk): 320 rows make two chunks.
// Every other gradient takes the same operations: bit-identical; the LM head's sums run in
// another order: within 1e-5 of its largest (fp32: ~320 terms of rounding 6e-8 each).
TYPED_TEST(TrainParityTest, OneLmHeadProductEqualsChunkedProducts) {
  using Space = TypeParam;
  using Dtype = typename TrainableModel<Space>::ComputeDtype;
  const std::string dir = testing::FixtureDir("tiny8b");
  const uint32_t seed = 20261206;
  io::TokenBatch batch;
  batch.batch = 2, batch.seq_len = 160;
  batch.mask.assign(batch.batch * batch.seq_len, 1);
  std::mt19937 rng(seed);
  for (int64_t i = 0; i < batch.batch * batch.seq_len; ++i) batch.ids.push_back(int64_t(rng() % 320));
  for (const Dtype dtype : {Dtype::kFp32, Dtype::kBf16}) {
    auto one = TrainableModel<Space>::Load(dir), chunked = TrainableModel<Space>::Load(dir);
    ASSERT_TRUE(one.ok() && chunked.ok());
    one->set_compute_dtype(dtype), chunked->set_compute_dtype(dtype);
    chunked->set_lm_head_gradient_bytes(0);
    auto a = one->ForwardBackward(batch.ids, batch.mask, batch.batch, batch.seq_len);
    auto b = chunked->ForwardBackward(batch.ids, batch.mask, batch.batch, batch.seq_len);
    ASSERT_TRUE(a.ok() && b.ok()) << a.status() << " " << b.status();
    EXPECT_EQ(a->total, b->total);
    for (const TensorSpec& spec : one->table()) {
      const int64_t n = one->grad(spec.name).extent(0);
      const std::vector<float> x = testing::ToHost(Matrix<float, Space>(one->grad(spec.name).data(), 1, n));
      const std::vector<float> y = testing::ToHost(Matrix<float, Space>(chunked->grad(spec.name).data(), 1, n));
      if (spec.name != "lm_head.weight") {
        EXPECT_EQ(x, y) << spec.name << " seed " << seed << " on " << Space::name();
        continue;
      }
      float largest = 0;
      for (float e : x) largest = std::max(largest, std::fabs(e));
      ASSERT_GT(largest, 0.0f);
      for (int64_t i = 0; i < n; ++i) ASSERT_NEAR(x[i], y[i], 1e-5 * largest) << i << " seed " << seed;
    }
  }
}

// bf16 and fp16 mixed precision against the fp32 step on both fixtures: bf16 keeps 8 significant
// bits (2^-9 = 0.2% relative rounding per stored value; fp16 keeps 11); through the ~20 stored
// activations of a layer stack the loss moves by well under 1%, so 2% is the bound; the
// gradients' direction per tensor (cosine similarity) must stay above 0.99 and their norm within
// 5%; fp16 runs with a loss scale (undone before grad()) and a non-zero <pad> row (see below).
// A bug in a 16-bit path (a missed conversion, a wrong working weight, a scale not undone)
// breaks these by orders of magnitude.
TYPED_TEST(TrainParityTest, MixedPrecisionTracksFp32) {
  using Space = TypeParam;
  using Dtype = typename TrainableModel<Space>::ComputeDtype;
  for (const auto& [dtype, dtype_name] : {std::pair{Dtype::kBf16, "bf16"}, std::pair{Dtype::kFp16, "fp16"}})
  for (const std::string name : {"tiny8b", "tinybase"}) {
    const std::string dir = testing::FixtureDir(name);
    absl::StatusOr<io::TokenBatch> batch = testing::FixtureBatch(dir);
    ASSERT_TRUE(batch.ok()) << batch.status();
    auto fp32 = TrainableModel<Space>::Load(dir), mixed = TrainableModel<Space>::Load(dir);
    ASSERT_TRUE(fp32.ok() && mixed.ok());
    mixed->set_compute_dtype(dtype);
    if (dtype == Dtype::kFp16) {
      // The fixtures' <pad> (= BOS) embedding row is 0, so position 0 enters every RMSNorm as a zero
      // vector, whose gradient is 1/sqrt(eps) = 1000x the incoming one: ~1e10 after the layer
      // stack, far beyond fp16's 65504 (the trainer stops with a clear message there). For fp16,
      // both models get the same non-zero row (as a trained checkpoint has) and a loss scale of 64.
      for (auto* model : {&*fp32, &*mixed}) {
        Vector<float, Space> table = model->param("model.embed_tokens.weight");
        auto row = Kokkos::subview(table, std::make_pair(int64_t(0), int64_t(fp32->config().hidden_size)));
        auto host = Kokkos::create_mirror_view(row);
        for (size_t h = 0; h < host.extent(0); ++h) host(h) = 0.02f * std::sin(1.0f + float(h));
        Kokkos::deep_copy(row, host);
      }
      mixed->set_loss_scale(64.0f);
    }
    auto a = fp32->ForwardBackward(batch->ids, batch->mask, batch->batch, batch->seq_len);
    auto b = mixed->ForwardBackward(batch->ids, batch->mask, batch->batch, batch->seq_len);
    ASSERT_TRUE(a.ok() && b.ok()) << b.status();
    EXPECT_NEAR(b->total, a->total, 0.02 * a->total) << name << " " << dtype_name;
    double worst_cos = 1, worst_norm = 0;
    for (const TensorSpec& spec : fp32->table()) {
      const int64_t n = fp32->grad(spec.name).extent(0);
      const std::vector<float> g = testing::ToHost(Matrix<float, Space>(fp32->grad(spec.name).data(), 1, n));
      const std::vector<float> h = testing::ToHost(Matrix<float, Space>(mixed->grad(spec.name).data(), 1, n));
      double gg = 0, hh = 0, gh = 0;
      for (int64_t i = 0; i < n; ++i) gg += double(g[i]) * g[i], hh += double(h[i]) * h[i], gh += double(g[i]) * h[i];
      if (gg == 0) continue;  // e.g. a pad-only embedding row set
      const double cos = gh / std::sqrt(gg * hh), norm = std::fabs(std::sqrt(hh / gg) - 1);
      worst_cos = std::min(worst_cos, cos), worst_norm = std::max(worst_norm, norm);
      EXPECT_GT(cos, 0.99) << name << " " << dtype_name << " " << spec.name << " on " << Space::name();
      EXPECT_LT(norm, 0.05) << name << " " << dtype_name << " " << spec.name << " on " << Space::name();
    }
    std::printf("%s on %s: %s loss %.4f vs fp32 %.4f; worst gradient cosine %.5f, norm ratio off by %.4f\n",
                name.c_str(), Space::name(), dtype_name, b->total, a->total, worst_cos, worst_norm);
  }
}

}  // namespace
// Upstream's initialiser as the spec states it (docs: openmoe_spec.md 2.6), written out here rather
// than taken from the code under test: experts' wi_gate / wi_up and the router's gate_weight
// N(0, sqrt(0.1 / H)), experts' wo N(0, sqrt(0.1 / I)), every other Linear and the embedding
// N(0, 0.02).
double SpecInitStd(const OpenMoeConfig& config, const std::string& name) {
  auto has = [&](const char* part) { return name.find(part) != std::string::npos; };
  if (has(".experts.wo")) return std::sqrt(0.1 / double(config.intermediate_size));
  if (has(".experts.wi_gate") || has(".experts.wi_up") || has(".mlp.gate_weight")) return std::sqrt(0.1 / double(config.hidden_size));
  return 0.02;
}

// --model_name's random init: every matrix has mean 0 and upstream's standard deviation (above)
// within 4 standard errors, norms are 1, the embedding's pad row is 0, the draws repeat for a
// seed and change with it.
TYPED_TEST(TrainParityTest, RandomInitDrawsUpstreamInitialiser) {
  using Space = TypeParam;
  absl::StatusOr<OpenMoeConfig> config = LoadConfig(testing::FixtureDir("tiny8b") + "/config.json");
  ASSERT_TRUE(config.ok()) << config.status();
  auto a = TrainableModel<Space>::RandomInit(*config, 7), b = TrainableModel<Space>::RandomInit(*config, 7);
  auto c = TrainableModel<Space>::RandomInit(*config, 8);
  ASSERT_TRUE(a.ok() && b.ok() && c.ok());
  for (const TensorSpec& spec : a->table()) {
    const int64_t n = spec.numel();
    auto host = [&](auto& model) { return testing::ToHost(Matrix<float, Space>(model->param(spec.name).data(), 1, n)); };
    const std::vector<float> x = host(a);
    EXPECT_EQ(x, host(b)) << spec.name;
    if (spec.orientation == Orientation::kVector) {
      for (float e : x) ASSERT_EQ(e, 1.0f) << spec.name;
      continue;
    }
    EXPECT_NE(x, host(c)) << spec.name;
    int64_t skip = 0;
    if (spec.name == "model.embed_tokens.weight") {
      for (int64_t h = 0; h < config->hidden_size; ++h) ASSERT_EQ(x[config->pad_token_id * config->hidden_size + h], 0.0f);
      skip = config->hidden_size;
    }
    double sum = 0, sq = 0;
    for (float e : x) sum += e, sq += double(e) * e;
    const double count = double(n - skip), mean = sum / count, stddev = std::sqrt(sq / count - mean * mean);
    const double want = SpecInitStd(*config, spec.name);
    EXPECT_LT(std::fabs(mean), 4 * want / std::sqrt(count)) << spec.name;
    EXPECT_LT(std::fabs(stddev / want - 1), 4 / std::sqrt(2 * count)) << spec.name << " std " << stddev << " want " << want;
  }
}

}  // namespace openmoe

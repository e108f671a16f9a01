// The backward ops on every backend against central finite differences of double-precision
// forwards (the spec's formulas, kernels/reference for attention): L = sum(g * f(x)) for a
// random g, so dL/dx is the op's vector-Jacobian product with g. Steps h = 1e-4 in double give
// derivative errors ~1e-8; the bounds below are float32 accumulation errors of the kernels.
#include "kernels/backward.h"

#include <tuple>
#include <utility>

#include "kernels/attention_gemm.h"

#include <cfloat>
#include <cmath>
#include <functional>

#include "gtest/gtest.h"
#include "kernels/reference/ops.h"
#include "kernels/reference/rms_norm.h"
#include "openmoe/core/test_util.h"

namespace openmoe::kernels {
namespace {

using openmoe::testing::RandomNormal;
using openmoe::testing::ToDevice;
using openmoe::testing::ToHost;

template <class Space>
class BackwardTest : public ::testing::Test {};
TYPED_TEST_SUITE(BackwardTest, openmoe::testing::Backends);

// d/dx_i of f at x (double), by central differences.
std::vector<double> NumericGradient(const std::function<double(const std::vector<double>&)>& f, std::vector<double> x) {
  std::vector<double> grad(x.size());
  const double h = 1e-4;
  for (size_t i = 0; i < x.size(); ++i) {
    const double keep = x[i];
    x[i] = keep + h;
    const double up = f(x);
    x[i] = keep - h;
    const double down = f(x);
    x[i] = keep;
    grad[i] = (up - down) / (2 * h);
  }
  return grad;
}

std::vector<double> ToDouble(const std::vector<float>& v) { return std::vector<double>(v.begin(), v.end()); }

void ExpectClose(const std::vector<float>& got, const std::vector<double>& want, double tol, const std::string& what) {
  ASSERT_EQ(got.size(), want.size()) << what;
  double scale = 0;
  for (double w : want) scale = std::max(scale, std::fabs(w));
  for (size_t i = 0; i < got.size(); ++i) ASSERT_NEAR(got[i], want[i], tol * (1 + scale)) << what << "[" << i << "]";
}

TYPED_TEST(BackwardTest, RmsNormMatchesFiniteDifferences) {
  using Space = TypeParam;
  const int64_t N = 3, H = 10;
  const float eps = 1e-6f;
  const std::vector<float> x = RandomNormal(N * H, 1.0f, 1), w = RandomNormal(H, 1.0f, 2), g = RandomNormal(N * H, 1.0f, 3);
  auto loss = [&](const std::vector<double>& xs, const std::vector<double>& ws) {
    double total = 0;
    for (int64_t t = 0; t < N; ++t) {
      double ms = 0;
      for (int64_t j = 0; j < H; ++j) ms += xs[t * H + j] * xs[t * H + j] / H;
      for (int64_t j = 0; j < H; ++j) total += g[t * H + j] * ws[j] * xs[t * H + j] / std::sqrt(ms + eps);
    }
    return total;
  };
  auto xd = ToDevice<Space>(x, N, H, "x"), gd = ToDevice<Space>(g, N, H, "g"), wd = ToDevice<Space>(w, 1, H, "w");
  Matrix<float, Space> dx("dx", N, H);
  Vector<float, Space> dw("dw", H);
  ASSERT_TRUE(RmsNormBackward<Space>(ExecutionContext<Space>(), xd, ConstVector<float, Space>(wd.data(), H), gd, eps, dx, dw).ok());
  ExpectClose(ToHost(dx), NumericGradient([&](const std::vector<double>& v) { return loss(v, ToDouble(w)); }, ToDouble(x)),
              1e-5, "dx");
  ExpectClose(ToHost(Matrix<float, Space>(dw.data(), 1, H)),
              NumericGradient([&](const std::vector<double>& v) { return loss(ToDouble(x), v); }, ToDouble(w)), 1e-5, "dw");
}

TYPED_TEST(BackwardTest, SwigluMatchesFiniteDifferences) {
  using Space = TypeParam;
  const int64_t N = 2, I = 5;
  const std::vector<float> gate = RandomNormal(N * 2 * I, 1.5f, 4), up = RandomNormal(N * I, 1.0f, 5);
  const std::vector<float> g = RandomNormal(N * I, 1.0f, 6);
  auto loss = [&](const std::vector<double>& gt, const std::vector<double>& u) {
    double total = 0;
    for (int64_t t = 0; t < N; ++t)
      for (int64_t i = 0; i < I; ++i) {
        const double a = gt[t * 2 * I + i], b = gt[t * 2 * I + I + i];
        total += g[t * I + i] * a * (b / (1 + std::exp(-b))) * u[t * I + i];
      }
    return total;
  };
  auto gd = ToDevice<Space>(gate, N, 2 * I, "gate"), ud = ToDevice<Space>(up, N, I, "up"), dd = ToDevice<Space>(g, N, I, "g");
  Matrix<float, Space> dgate("dgate", N, 2 * I), dup("dup", N, I);
  ASSERT_TRUE(SwigluBackward<Space>(Space(), gd, ud, dd, dgate, dup).ok());
  ExpectClose(ToHost(dgate), NumericGradient([&](const std::vector<double>& v) { return loss(v, ToDouble(up)); }, ToDouble(gate)),
              1e-5, "dgate");
  ExpectClose(ToHost(dup), NumericGradient([&](const std::vector<double>& v) { return loss(ToDouble(gate), v); }, ToDouble(up)),
              1e-5, "dup");
}

// The fused layout [g1 | g2 | up] gives the same gradients, bit for bit, as the split one that
// the finite-difference test above checks. N = 5, I = 7, seeds 81-83.
TYPED_TEST(BackwardTest, SwigluFusedEqualsSplit) {
  using Space = TypeParam;
  const int64_t N = 5, I = 7;
  const std::vector<float> gate = RandomNormal(N * 2 * I, 1.0f, 81), up = RandomNormal(N * I, 1.0f, 82);
  const std::vector<float> dact = RandomNormal(N * I, 1.0f, 83);
  std::vector<float> fused(N * 3 * I);
  for (int64_t t = 0; t < N; ++t)
    for (int64_t j = 0; j < 3 * I; ++j) fused[t * 3 * I + j] = j < 2 * I ? gate[t * 2 * I + j] : up[t * I + j - 2 * I];
  auto dgate = Matrix<float, Space>("dgate", N, 2 * I), dup = Matrix<float, Space>("dup", N, I);
  auto dfused = Matrix<float, Space>("dfused", N, 3 * I);
  ASSERT_TRUE(SwigluBackward<Space>(Space(), ToDevice<Space>(gate, N, 2 * I), ToDevice<Space>(up, N, I),
                                    ToDevice<Space>(dact, N, I), dgate, dup).ok());
  ASSERT_TRUE(SwigluBackwardFused<Space>(Space(), ToDevice<Space>(fused, N, 3 * I), ToDevice<Space>(dact, N, I), dfused).ok());
  const std::vector<float> g = ToHost(dgate), u = ToHost(dup), f = ToHost(dfused);
  for (int64_t t = 0; t < N; ++t)
    for (int64_t j = 0; j < 3 * I; ++j)
      ASSERT_EQ(f[t * 3 * I + j], j < 2 * I ? g[t * 2 * I + j] : u[t * I + j - 2 * I]) << t << ", " << j << " on " << Space::name();
}

TYPED_TEST(BackwardTest, InverseRopeUndoesRope) {
  using Space = TypeParam;
  const int64_t B = 2, S = 7, W = 3 * 8;
  const std::vector<float> x = RandomNormal(B * S * W, 1.0f, 7);
  Tensor3<float, Space> xd("x", B, S, W);
  Kokkos::deep_copy(xd, Kokkos::View<const float***, Kokkos::LayoutRight, Kokkos::HostSpace, Kokkos::MemoryUnmanaged>(x.data(), B, S, W));
  ASSERT_TRUE(ApplyRope<float>(Space(), xd, 8, 30).ok());
  ASSERT_TRUE(ApplyRope<float>(Space(), xd, 8, 30, /*inverse=*/true).ok());
  const std::vector<float> back = ToHost(Matrix<float, Space>(xd.data(), 1, B * S * W));
  for (size_t i = 0; i < x.size(); ++i) ASSERT_NEAR(back[i], x[i], 1e-5) << i;  // R^T R = I, float rounding
}

TYPED_TEST(BackwardTest, CausalAttentionMatchesFiniteDifferences) {
  using Space = TypeParam;
  const int64_t B = 2, S = 6, Nh = 4, Nkv = 2, Dh = 4, Wq = Nh * Dh, Wkv = Nkv * Dh;
  const std::vector<float> q = RandomNormal(B * S * Wq, 0.7f, 8), k = RandomNormal(B * S * Wkv, 0.7f, 9);
  const std::vector<float> v = RandomNormal(B * S * Wkv, 1.0f, 10), g = RandomNormal(B * S * Wq, 1.0f, 11);
  std::vector<int64_t> mask(B * S, 1);
  mask[S + 0] = mask[S + 1] = mask[S + 2] = 0;  // row 1 left-padded (key 0 stays visible)
  auto loss = [&](const std::vector<double>& qs, const std::vector<double>& ks, const std::vector<double>& vs) {
    const std::vector<double> out = reference::Attention(qs, ks, vs, mask, B, S, S, Nh, Nkv, Dh, 0);
    double total = 0;
    for (size_t i = 0; i < out.size(); ++i) total += g[i] * out[i];
    return total;
  };
  auto dev3 = [](const std::vector<float>& h, int64_t w, const char* name) {
    Tensor3<float, Space> d(std::string(name), B, S, w);
    Kokkos::deep_copy(d, Kokkos::View<const float***, Kokkos::LayoutRight, Kokkos::HostSpace, Kokkos::MemoryUnmanaged>(h.data(), B, S, w));
    return d;
  };
  Kokkos::View<int64_t**, Kokkos::LayoutRight, typename Space::memory_space> md("mask", B, S);
  Kokkos::deep_copy(md, Kokkos::View<const int64_t**, Kokkos::LayoutRight, Kokkos::HostSpace, Kokkos::MemoryUnmanaged>(mask.data(), B, S));
  const auto Q = ToDouble(q), K = ToDouble(k), V = ToDouble(v);
  const auto want_dq = NumericGradient([&](const std::vector<double>& x) { return loss(x, K, V); }, Q);
  const auto want_dk = NumericGradient([&](const std::vector<double>& x) { return loss(Q, x, V); }, K);
  const auto want_dv = NumericGradient([&](const std::vector<double>& x) { return loss(Q, K, x); }, V);
  auto flat = [](Tensor3<float, Space> t) { return ToHost(Matrix<float, Space>(t.data(), 1, t.size())); };
  // Both paths (attention_gemm.h); the small scores budget makes chunks of 2 query rows.
  for (const auto& [path, budget, name] : {std::tuple{AttentionPath::kFused, 0, "fused"},
                                           std::tuple{AttentionPath::kGemm, 0, "gemm"},
                                           std::tuple{AttentionPath::kGemm, 40, "gemm, small chunks"}}) {
    SCOPED_TRACE(name);
    ExecutionContext<Space> ctx;
    ctx.tuning().attention_path = path;
    if (budget > 0) ctx.tuning().max_score_elements = budget;
    Tensor3<float, Space> dq("dq", B, S, Wq), dk("dk", B, S, Wkv), dv("dv", B, S, Wkv);
    Kokkos::deep_copy(dk, 7.0f);  // written, not accumulated
    const absl::Status status = CausalAttentionBackward<Space>(ctx, dev3(q, Wq, "q"), dev3(k, Wkv, "k"),
                                                               dev3(v, Wkv, "v"), md, dev3(g, Wq, "g"), Nh, Nkv, Dh,
                                                               dq, dk, dv);
    ASSERT_TRUE(status.ok()) << status;
    ExpectClose(flat(dq), want_dq, 1e-5, "dq");
    ExpectClose(flat(dk), want_dk, 1e-5, "dk");
    ExpectClose(flat(dv), want_dv, 1e-5, "dv");
  }
}

TYPED_TEST(BackwardTest, EmbeddingGradientSkipsThePadRow) {
  using Space = TypeParam;
  const int64_t N = 5, H = 3, V = 4;
  const std::vector<int64_t> ids = {2, 0, 2, 3, 0};
  const std::vector<float> dh = RandomNormal(N * H, 1.0f, 12);
  Vector<int64_t, Space> idd("ids", N);
  Kokkos::deep_copy(idd, Kokkos::View<const int64_t*, Kokkos::HostSpace, Kokkos::MemoryUnmanaged>(ids.data(), N));
  Matrix<float, Space> table("dtable", V, H);
  ASSERT_TRUE(EmbeddingBackward<Space>(Space(), idd, ToDevice<Space>(dh, N, H, "dh"), 0, table).ok());
  const std::vector<float> got = ToHost(table);
  for (int64_t h = 0; h < H; ++h) {
    EXPECT_EQ(got[0 * H + h], 0.0f);  // <pad>: no gradient
    EXPECT_EQ(got[1 * H + h], 0.0f);  // unused id
    EXPECT_FLOAT_EQ(got[2 * H + h], dh[0 * H + h] + dh[2 * H + h]);
    EXPECT_FLOAT_EQ(got[3 * H + h], dh[3 * H + h]);
  }
}

// Router losses and their backward against finite differences of the double-precision loss
// L = sum_{t,e} dprobs(t,e) p(t,e) / grad_scale + aux_w * aux + z_w * z (losses.h), with the top-2
// fractions f_e held constant as the kernel documents; grad_scale 4 checks the scaling. The
// kernel's aux and z must equal the same double formulas. N = 37 tokens, E = 8 experts, seed 71.
TYPED_TEST(BackwardTest, RouterLossMatchesFiniteDifferences) {
  using Space = TypeParam;
  const int64_t N = 37, E = 8;
  const double aux_w = 0.01 / 2, z_w = 1e-4 / 2, grad_scale = 4.0;
  const std::vector<float> logits = RandomNormal(N * E, 1.5f, 71), dprobs = RandomNormal(N * E, 0.3f, 72);
  std::vector<int32_t> experts(N * 2);
  for (int64_t t = 0; t < N; ++t) {  // top-2 by logit (= by probability)
    const float* row = logits.data() + t * E;
    int32_t first = 0;
    for (int32_t e = 1; e < E; ++e) first = row[e] > row[first] ? e : first;
    int32_t second = first == 0 ? 1 : 0;
    for (int32_t e = 0; e < E; ++e) second = e != first && row[e] > row[second] ? e : second;
    experts[2 * t] = first, experts[2 * t + 1] = second;
  }
  std::vector<double> fraction(E, 0.0);
  for (int32_t e : experts) fraction[e] += 1.0 / N;
  auto parts_of = [&](const std::vector<double>& x, double& aux, double& z, double& linear) {
    std::vector<double> mean_prob(E, 0.0);
    z = linear = 0;
    for (int64_t t = 0; t < N; ++t) {
      double mx = x[t * E];
      for (int64_t e = 1; e < E; ++e) mx = std::max(mx, x[t * E + e]);
      double sum = 0;
      for (int64_t e = 0; e < E; ++e) sum += std::exp(x[t * E + e] - mx);
      const double log_z = mx + std::log(sum);
      z += log_z * log_z / N;
      for (int64_t e = 0; e < E; ++e) {
        const double p = std::exp(x[t * E + e] - log_z);
        mean_prob[e] += p / N, linear += double(dprobs[t * E + e]) * p / grad_scale;
      }
    }
    aux = 0;
    for (int64_t e = 0; e < E; ++e) aux += E * fraction[e] * mean_prob[e];
  };
  auto loss = [&](const std::vector<double>& x) {
    double aux, z, linear;
    parts_of(x, aux, z, linear);
    return linear + aux_w * aux + z_w * z;
  };
  const std::vector<double> x(logits.begin(), logits.end());
  const std::vector<double> want = NumericGradient(loss, x);
  double want_aux, want_z, unused;
  parts_of(x, want_aux, want_z, unused);

  auto d_logits = Matrix<float, Space>("d_logits", N, E);
  Kokkos::View<double*, typename Space::memory_space> parts("parts", 2);
  ASSERT_TRUE((RouterLossBackward<Space>(Space(), ToDevice<Space>(logits, N, E), ToDevice<Space>(experts, N, 2),
                                         ToDevice<Space>(dprobs, N, E), aux_w, z_w, grad_scale, d_logits, parts)
                   .ok()));
  const std::vector<float> got = ToHost(d_logits);
  const std::vector<double> got_parts = ToHost(parts);
  double scale = 0;
  for (double g : want) scale = std::max(scale, std::fabs(g));
  for (int64_t i = 0; i < N * E; ++i) {
    // float32 rounding of a double result (2^-24 relative) and the difference quotient's 1e-8.
    ASSERT_NEAR(got[i] / grad_scale, want[i], 1e-6 * scale + 1e-8) << "d_logits[" << i << "] on " << Space::name();
  }
  EXPECT_NEAR(got_parts[0], want_aux, 1e-12 * want_aux) << "aux on " << Space::name();
  EXPECT_NEAR(got_parts[1], want_z, 1e-12 * want_z) << "z on " << Space::name();
  // Shapes are checked.
  auto wrong = Matrix<float, Space>("wrong", N, E + 1);
  EXPECT_FALSE((RouterLossBackward<Space>(Space(), ToDevice<Space>(logits, N, E), ToDevice<Space>(experts, N, 2),
                                          ToDevice<Space>(dprobs, N, E), aux_w, z_w, grad_scale, wrong, parts)
                    .ok()));
}

// RmsNormBackward against the double-precision chain rule (kernels/reference/rms_norm.h) at
// shapes whose rows are not a whole number of the kernel's row blocks, nor columns of its column
// tiles; dw accumulates into what it holds. Two runs give the same bits (fixed-order sums).
TYPED_TEST(BackwardTest, RmsNormMatchesReferenceAtUnevenShapes) {
  using Space = TypeParam;
  for (const auto& [N, H] : {std::pair<int64_t, int64_t>{77, 300}, {1, 9}, {200, 64}, {33, 257}}) {
    SCOPED_TRACE(::testing::Message() << "N = " << N << ", H = " << H << " on " << Space::name());
    const float eps = 1e-6f;
    const std::vector<float> x = RandomNormal(N * H, 1.0f, 91), w = RandomNormal(H, 1.0f, 92);
    const std::vector<float> g = RandomNormal(N * H, 1.0f, 93), dw0 = RandomNormal(H, 0.5f, 94);
    std::vector<double> want_dx, want_dw;
    reference::RmsNormBackward(x, w, g, N, H, eps, want_dx, want_dw);
    for (int64_t h = 0; h < H; ++h) want_dw[h] += dw0[h];
    auto wd = ToDevice<Space>(w, 1, H, "w");
    std::vector<std::vector<float>> runs;
    for (int run = 0; run < 2; ++run) {
      Matrix<float, Space> dx("dx", N, H);
      Matrix<float, Space> dw = ToDevice<Space>(dw0, 1, H, "dw");
      ASSERT_TRUE(RmsNormBackward<Space>(ExecutionContext<Space>(), ToDevice<Space>(x, N, H, "x"), ConstVector<float, Space>(wd.data(), H),
                                         ToDevice<Space>(g, N, H, "g"), eps, dx, Vector<float, Space>(dw.data(), H))
                      .ok());
      ExpectClose(ToHost(dx), want_dx, 1e-5, "dx");
      ExpectClose(ToHost(dw), want_dw, 1e-5, "dw");
      runs.push_back(ToHost(dx));
      const std::vector<float> dw_host = ToHost(dw);
      runs.back().insert(runs.back().end(), dw_host.begin(), dw_host.end());
    }
    EXPECT_EQ(runs[0], runs[1]) << "not deterministic";
  }
}

// The reference LM loss's gradient (kernels/reference/ops.h) is the derivative of its loss:
// central differences at every logit of a small row, label smoothing and z-loss on.
TEST(LmLossReference, GradientIsTheLossDerivative) {
  const int64_t V = 7, label = 3;
  const double ls = 0.1, z = 0.01;
  std::vector<float> logits = RandomNormal(V, 2.0f, 101);
  const reference::LmLossRow row = reference::LmLoss(logits.data(), V, label, ls, z);
  for (int64_t v = 0; v < V; ++v) {
    // Steps in float logits: h = 2^-8 is exact; the quotient's error ~h^2 f''' ~ 1e-5.
    const float keep = logits[v], h = 1.0f / 256;
    logits[v] = keep + h;
    const double up = reference::LmLoss(logits.data(), V, label, ls, z).loss;
    logits[v] = keep - h;
    const double down = reference::LmLoss(logits.data(), V, label, ls, z).loss;
    logits[v] = keep;
    EXPECT_NEAR(row.grad[v], (up - down) / (2 * h), 1e-4) << v;
  }
}

// LmLossBackward row by row against the double reference: vocabularies that are not a multiple of
// any block or pack size (5, 1,003, 70,001) and one that is a whole number of 16-byte packs but
// not of the kernel's row segments (20,004); rows with label < 0 (zero gradient, zero loss)
// mixed in; labels at both ends of the row; a row of large spread around +80 (exp overflows
// float32 without the max subtracted) and a row whose label logit dominates (softmax ~ 1 there:
// softmax - target cancels); grad_scale != 1 (the gradient only). Bounds: float32 exp and
// logit - max give ~1e-7 relative per softmax entry (2e-6 allowed, 1e-12 absolute below that);
// the row sums are in double, so the loss stays within ~1e-9 relative (1e-7 allowed). Two runs
// give the same bits.
TYPED_TEST(BackwardTest, LmLossMatchesReference) {
  using Space = TypeParam;
  struct Case {
    int64_t V;
    double ls, z, grad_scale;
  };
  for (const Case& c : {Case{5, 0.1, 1e-2, 1.0}, Case{1003, 0.1, 1e-2, 4.0}, Case{20004, 0.0, 1e-4, 1.0},
                        Case{70001, 0.1, 1e-3, 1024.0}}) {
    const int64_t V = c.V, R = 7;
    SCOPED_TRACE(::testing::Message() << "V = " << V << " on " << Space::name());
    std::vector<float> logits = RandomNormal(R * V, 1.0f, uint32_t(200 + V));
    const std::vector<int64_t> labels = {V / 2, -1, 0, V - 1, 1, -100, V / 3};
    for (int64_t v = 0; v < V; ++v) logits[3 * V + v] = 80.0f + 20.0f * logits[3 * V + v];  // large spread
    logits[4 * V + 1] = 40.0f;                                                                // label dominates
    std::vector<reference::LmLossRow> want(R);
    for (int64_t r = 0; r < R; ++r) {
      if (labels[r] >= 0) want[r] = reference::LmLoss(logits.data() + r * V, V, labels[r], c.ls, c.z);
    }
    Vector<int64_t, Space> labels_d("labels", R);
    Kokkos::deep_copy(labels_d, Kokkos::View<const int64_t*, Kokkos::HostSpace, Kokkos::MemoryUnmanaged>(labels.data(), R));
    std::vector<std::vector<float>> grads;
    std::vector<std::vector<double>> losses;
    for (int run = 0; run < 2; ++run) {
      Matrix<float, Space> lg = ToDevice<Space>(logits, R, V, "logits");
      Vector<double, Space> loss("loss", R);
      Kokkos::deep_copy(loss, 7.0);  // written, not accumulated
      ASSERT_TRUE(LmLossBackward<Space>(ExecutionContext<Space>(), lg, labels_d, c.ls, c.z, loss, c.grad_scale).ok());
      grads.push_back(ToHost(lg));
      losses.push_back(ToHost(loss));
    }
    const std::vector<float>& got = grads[0];
    const double off = c.ls / double(V - 1);
    for (int64_t r = 0; r < R; ++r) {
      if (labels[r] < 0) {
        EXPECT_EQ(losses[0][r], 0.0) << "row " << r;
        for (int64_t v = 0; v < V; ++v) ASSERT_EQ(got[r * V + v], 0.0f) << "row " << r << ", " << v;
        continue;
      }
      EXPECT_NEAR(losses[0][r], want[r].loss, 1e-7 * (1 + std::fabs(want[r].loss))) << "row " << r;
      for (int64_t v = 0; v < V; ++v) {
        const double g = want[r].grad[v], softmax_part = g + (v == labels[r] ? 1 - c.ls : off);
        ASSERT_NEAR(got[r * V + v] / c.grad_scale, g, 2e-6 * (std::fabs(softmax_part) + std::fabs(g)) + 1e-12)
            << "row " << r << ", " << v << " (label " << labels[r] << ")";
      }
    }
    EXPECT_EQ(grads[0], grads[1]) << "gradient not deterministic";
    EXPECT_EQ(losses[0], losses[1]) << "loss not deterministic";
  }
}

// CombineBackward against its definition, computed by hand in double: top-2 routing of 37 tokens
// over 4 experts with capacity 12 (over a dozen assignments dropped), H = 300. Rows of
// d_expert_out that no kept assignment fills, and dprobs outside kept assignments, are zeroed
// (both start as 7).
TYPED_TEST(BackwardTest, CombineBackwardMatchesDefinition) {
  using Space = TypeParam;
  const int64_t T = 37, E = 4, H = 300, C = 12;
  const reference::Top2Routing routing = reference::RouteTop2(RandomNormal(T * E, 1.0f, 111), T, E);
  const std::vector<float> probs(routing.probs.begin(), routing.probs.end());
  const std::vector<float> dy = RandomNormal(T * H, 1.0f, 112), expert_out = RandomNormal(E * C * H, 1.0f, 113);
  std::vector<double> want_d_out(E * C * H, 0.0), want_dprobs(T * E, 0.0);
  std::vector<bool> kept(T * E, false);
  int64_t dropped = 0;
  for (int64_t t = 0; t < T; ++t)
    for (int k = 0; k < 2; ++k) {
      const int64_t e = routing.expert[t * 2 + k], slot = routing.rank[t * 2 + k];
      if (slot >= C) {
        ++dropped;
        continue;
      }
      double dot = 0;
      for (int64_t h = 0; h < H; ++h) {
        want_d_out[(e * C + slot) * H + h] = double(probs[t * E + e]) * double(dy[t * H + h]);
        dot += double(dy[t * H + h]) * double(expert_out[(e * C + slot) * H + h]);
      }
      want_dprobs[t * E + e] = dot, kept[t * E + e] = true;
    }
  ASSERT_GT(dropped, 10);
  Matrix<float, Space> d_out("d_expert_out", E * C, H), dprobs("dprobs", T, E);
  Kokkos::deep_copy(d_out, 7.0f);
  Kokkos::deep_copy(dprobs, 7.0f);
  ASSERT_TRUE(CombineBackward<Space>(Space(), ToDevice<Space>(dy, T, H, "dy"), ToDevice<Space>(expert_out, E * C, H, "out"),
                                     ToDevice<Space>(probs, T, E, "probs"), ToDevice<Space>(routing.expert, T, 2, "experts"),
                                     ToDevice<Space>(routing.rank, T, 2, "rank"), C, d_out, dprobs)
                  .ok());
  const std::vector<float> got_d_out = ToHost(d_out), got_dprobs = ToHost(dprobs);
  for (size_t i = 0; i < got_d_out.size(); ++i) {
    ASSERT_NEAR(got_d_out[i], want_d_out[i], 1e-6 * std::fabs(want_d_out[i])) << "d_expert_out[" << i << "]";
  }
  ExpectClose(got_dprobs, want_dprobs, 1e-6, "dprobs");
  for (size_t i = 0; i < got_dprobs.size(); ++i) {
    if (!kept[i]) {
      ASSERT_EQ(got_dprobs[i], 0.0f) << "dprobs[" << i << "]";
    }
  }
}

}  // namespace
}  // namespace openmoe::kernels

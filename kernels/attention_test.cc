// RoPE and OpenMoE attention on every backend against the double reference: padding (left
// padded rows), key 0 always visible, causal offsets (a decode step), grouped kv heads.
#include "kernels/attention.h"

#include "kernels/attention_gemm.h"

#include <algorithm>
#include <cfloat>
#include <cmath>
#include <string>
#include <utility>
#include <vector>

#include "gtest/gtest.h"
#include "kernels/reference/ops.h"
#include "openmoe/core/bf16.h"
#include "openmoe/core/test_util.h"

namespace openmoe::kernels {
namespace {

using openmoe::testing::RandomNormal;
using openmoe::testing::ToHost;

template <class Space, class T = float>
Tensor3<T, Space> ToDevice3(const std::vector<T>& host, int64_t a, int64_t b, int64_t c, const std::string& label) {
  Tensor3<T, Space> device(label, a, b, c);
  Kokkos::deep_copy(device, Kokkos::View<const T***, Kokkos::LayoutRight, Kokkos::HostSpace,
                                         Kokkos::MemoryUnmanaged>(host.data(), a, b, c));
  return device;
}

std::vector<double> ToDouble(const std::vector<float>& v) { return std::vector<double>(v.begin(), v.end()); }

// A host key mask [B, capacity] on the device.
template <class Space>
Kokkos::View<int64_t**, Kokkos::LayoutRight, typename Space::memory_space> MaskToDevice(const std::vector<int64_t>& mask,
                                                                                      int64_t B, int64_t capacity) {
  Kokkos::View<int64_t**, Kokkos::LayoutRight, typename Space::memory_space> device("mask", B, capacity);
  Kokkos::deep_copy(device, Kokkos::View<const int64_t**, Kokkos::LayoutRight, Kokkos::HostSpace,
                                         Kokkos::MemoryUnmanaged>(mask.data(), B, capacity));
  return device;
}

// A key mask [B, capacity] of ones, except the first `padding` columns of row 1 (left padding).
template <class Space>
Kokkos::View<int64_t**, Kokkos::LayoutRight, typename Space::memory_space> SecondRowLeftPadded(int64_t B, int64_t capacity,
                                                                                             int64_t padding) {
  std::vector<int64_t> mask(B * capacity, 1);
  for (int64_t j = 0; j < padding; ++j) mask[capacity + j] = 0;
  return MaskToDevice<Space>(mask, B, capacity);
}

// x rounded to bf16: the bf16 values, and x replaced by them (the reference's inputs).
std::vector<bf16> RoundToBf16(std::vector<float>& x) {
  std::vector<bf16> rounded;
  for (float& e : x) rounded.push_back(bf16(e)), e = float(rounded.back());
  return rounded;
}

// Per-element bound on |float32 attention - double reference| for q, k, v [B, S, heads*Dh] as in
// reference::Attention. For the query row (b, s, h) with n visible keys j, let A_j = sum_d |q_d k_jd|,
// A = max_j A_j, p_j the exact softmax weights and W_d = sum_j p_j |v_jd|; eps = FLT_EPSILON = 2u
// (u: float32 unit roundoff). What the kernels (every path) compute differs from the exact maths by:
//  1. the score q.k_j, Dh products summed in float32 in any order: <= Dh u A_j (1 + O(u)) <= Dh eps A;
//  2. s_j - max (the max itself is a shift common to all keys, which the normalisation cancels):
//     one rounding, <= u (|s_j| + |max|) <= eps A;
//  3. exp: <= 2 ulp relative (CUDA expf; glibc < 1 ulp), i.e. <= 2 eps on the log of the weight;
//  4. CUDA split-key merges rescale each chunk's partial sum and P.V alike by exp(m_c - M): items
//     2 and 3 once more for that chunk's weights, <= eps A + 2 eps.
// So each unnormalised weight is exp(s_j - max + e_j) with |e_j| <= delta = (Dh + 2) eps A + 4 eps;
// normalised, p'_j = p_j exp(e_j) / sum_i p_i exp(e_i) lies within p_j exp(+-2 delta), and
// |sum_j (p'_j - p_j) v_jd| <= expm1(2 delta) W_d.
//  5. The sums of n weights and of n products p'_j v_jd (n - 1 additions each, any order or tree,
//     incl. the chunk merges), the products, 1/sum and the final multiply (GEMM path: p = exp *
//     (1/sum) rounded, then P.V): <= (2n + 6) u <= (n + 4) eps relative, on sum_j p'_j |v_jd| <=
//     exp(2 delta) W_d.
// Bound: (expm1(2 delta) + (n + 4) eps exp(2 delta)) W_d. It grows with Dh A (not Dh^2 max|q k|
// max|v|), and is relative to the weighted |v|: leaving out a key j moves out_d by p_j |v_jd - out_d|,
// far above it unless p_j is tiny.
std::vector<double> AttentionErrorBounds(const std::vector<float>& q, const std::vector<float>& k,
                                         const std::vector<float>& v, const std::vector<int64_t>& key_mask,
                                         int64_t B, int64_t Sq, int64_t Sk, int64_t Nh, int64_t Nkv, int64_t Dh,
                                         int64_t q_offset, double extra_relative = 0.0) {
  const double eps = FLT_EPSILON;
  std::vector<double> bound(B * Sq * Nh * Dh);
  for (int64_t b = 0; b < B; ++b)
    for (int64_t s = 0; s < Sq; ++s)
      for (int64_t h = 0; h < Nh; ++h) {
        const int64_t kvh = h / (Nh / Nkv);
        std::vector<int64_t> keys;
        for (int64_t j = 0; j < Sk && j <= q_offset + s; ++j)
          if (j == 0 || key_mask[b * Sk + j] != 0) keys.push_back(j);
        std::vector<double> score(keys.size());
        double A = 0.0, max_score = -INFINITY;
        for (size_t i = 0; i < keys.size(); ++i) {
          double dot = 0.0, abs_sum = 0.0;
          for (int64_t d = 0; d < Dh; ++d) {
            const double x = double(q[((b * Sq + s) * Nh + h) * Dh + d]) * k[((b * Sk + keys[i]) * Nkv + kvh) * Dh + d];
            dot += x, abs_sum += std::fabs(x);
          }
          score[i] = dot, A = std::max(A, abs_sum), max_score = std::max(max_score, dot);
        }
        double sum = 0.0;
        for (double& e : score) sum += (e = std::exp(e - max_score));
        const double n = double(keys.size()), delta = (Dh + 2) * eps * A + 4 * eps;
        const double relative = std::expm1(2 * delta) + (n + 4) * eps * std::exp(2 * delta) + extra_relative;
        for (int64_t d = 0; d < Dh; ++d) {
          double W = 0.0;
          for (size_t i = 0; i < keys.size(); ++i)
            W += score[i] / sum * std::fabs(v[((b * Sk + keys[i]) * Nkv + kvh) * Dh + d]);
          bound[((b * Sq + s) * Nh + h) * Dh + d] = relative * W;
        }
      }
  return bound;
}

// Both attention paths on every backend: the fused kernels, and the batched GEMMs with the
// default scores budget and with one so small that every chunk has a few query rows.
struct PathCase {
  AttentionPath path;
  int64_t max_score_elements;
  const char* name;
};
constexpr PathCase kPaths[] = {{AttentionPath::kFused, 0, "fused"},
                               {AttentionPath::kGemm, 0, "gemm"},
                               {AttentionPath::kGemm, 300, "gemm, small chunks"}};
// The CUDA decode attention kernels (attention.cc), each with both of its key counts: the
// warp-split kernel with 16 and 32 keys per warp (its own automatic choice is 32 at these small
// shapes, 16 for batch-16 decoding of the real models) and the block-split kernel (the automatic
// kernel at these shapes) with 4 and 8 keys per lane in blocks of 8 warps (its most), 8 keys per
// lane in blocks of 4 warps, and 4 in blocks of 2 warps (fewer threads than Dh 128: its folds loop).
// Host backends do not split keys; the loops still check them.
struct DecodeKernelChoice {
  DecodeAttentionKernel kernel;
  int keys;   // per warp (warp split) or per lane (block split); 0: automatic
  int warps;  // per block (block split); 0: automatic
  const char* name;
};
constexpr DecodeKernelChoice kAutomaticDecodeKernel = {DecodeAttentionKernel::kAuto, 0, 0, "automatic decode kernel"};
constexpr DecodeKernelChoice kDecodeKernels[] = {
    {DecodeAttentionKernel::kWarpSplit, 16, 0, "warp split, 16 keys per warp"},
    {DecodeAttentionKernel::kWarpSplit, 32, 0, "warp split, 32 keys per warp"},
    {DecodeAttentionKernel::kBlockSplit, 4, 8, "block split, 4 keys per lane, 8 warps"},
    {DecodeAttentionKernel::kBlockSplit, 8, 8, "block split, 8 keys per lane, 8 warps"},
    {DecodeAttentionKernel::kBlockSplit, 8, 4, "block split, 8 keys per lane, 4 warps"},
    {DecodeAttentionKernel::kBlockSplit, 4, 2, "block split, 4 keys per lane, 2 warps"}};

template <class Space>
void UseDecodeKernel(const DecodeKernelChoice& choice, ExecutionContext<Space>& ctx) {
  ctx.tuning().decode_attention_kernel = choice.kernel;
  if (choice.kernel == DecodeAttentionKernel::kWarpSplit) ctx.tuning().split_key_warp_keys = choice.keys;
  if (choice.kernel == DecodeAttentionKernel::kBlockSplit) {
    ctx.tuning().block_split_lane_keys = choice.keys;
    ctx.tuning().block_split_warps = choice.warps;
  }
}

// A context whose attention takes the case's path, with the given decode kernel.
template <class Space>
ExecutionContext<Space> ContextFor(const PathCase& c, const DecodeKernelChoice& decode = kAutomaticDecodeKernel) {
  ExecutionContext<Space> ctx;
  ctx.tuning().attention_path = c.path;
  if (c.max_score_elements > 0) ctx.tuning().max_score_elements = c.max_score_elements;
  UseDecodeKernel(decode, ctx);
  return ctx;
}

template <class Space>
class AttentionTest : public ::testing::Test {};
TYPED_TEST_SUITE(AttentionTest, openmoe::testing::Backends);

TYPED_TEST(AttentionTest, RopeMatchesReference) {
  using Space = TypeParam;
  const int64_t B = 2, S = 19, heads = 3, Dh = 24;
  const std::vector<float> x = RandomNormal(B * S * heads * Dh, 1.0f, 7);
  for (int64_t offset : {0, 5, 2000}) {
    auto xd = ToDevice3<Space>(x, B, S, heads * Dh, "x");
    ASSERT_TRUE(ApplyRope<float>(Space(), xd, Dh, offset).ok());
    const std::vector<float> got = ToHost(xd);
    const std::vector<double> want = reference::Rope(ToDouble(x), B, S, heads * Dh, Dh, offset);
    // cos/sin are computed in double and rounded to float, then two float products and a sum:
    // a few ulps of |x| (<= 5 for these draws).
    for (size_t i = 0; i < got.size(); ++i) ASSERT_NEAR(got[i], want[i], 8 * FLT_EPSILON * 5) << i << " offset " << offset;
  }
  auto bad = ToDevice3<Space>(x, B, S, heads * Dh, "odd");
  EXPECT_FALSE(ApplyRope<float>(Space(), bad, 7, 0).ok());
}

TYPED_TEST(AttentionTest, MatchesReferenceWithPaddingOffsetsAndGroups) {
  using Space = TypeParam;
  struct Case { int64_t B, Sq, Sk, Nh, Nkv, Dh, q_offset; };
  // Cases 4-6 are decode-shaped (few queries, > 64 keys): the split-key path on GPUs.
  for (const DecodeKernelChoice& decode : kDecodeKernels)
  for (const PathCase& path : kPaths)
  for (const Case c : {Case{2, 19, 19, 4, 4, 24, 0}, Case{3, 1, 11, 4, 2, 16, 10}, Case{2, 5, 9, 6, 3, 8, 4},
                       Case{2, 1, 150, 4, 2, 16, 149}, Case{1, 3, 200, 4, 4, 8, 120},
                       Case{2, 1, 300, 2, 1, 128, 299}, Case{2, 40, 50, 4, 2, 16, 10}}) {
    const ExecutionContext<Space> ctx = ContextFor<Space>(path, decode);
    const uint32_t seed = 31 + c.Sq * 7 + c.Nkv;
    const std::vector<float> q = RandomNormal(c.B * c.Sq * c.Nh * c.Dh, 0.5f, seed);
    const std::vector<float> k = RandomNormal(c.B * c.Sk * c.Nkv * c.Dh, 0.5f, seed + 1);
    const std::vector<float> v = RandomNormal(c.B * c.Sk * c.Nkv * c.Dh, 1.0f, seed + 2);
    std::vector<int64_t> mask(c.B * c.Sk, 1);
    for (int64_t j = 0; j < 3 && j < c.Sk; ++j) mask[(c.B - 1) * c.Sk + j] = 0;  // left-padded last row
    auto qd = ToDevice3<Space>(q, c.B, c.Sq, c.Nh * c.Dh, "q");
    auto kd = ToDevice3<Space>(k, c.B, c.Sk, c.Nkv * c.Dh, "k");
    auto vd = ToDevice3<Space>(v, c.B, c.Sk, c.Nkv * c.Dh, "v");
    const auto md = MaskToDevice<Space>(mask, c.B, c.Sk);
    Tensor3<float, Space> out("out", c.B, c.Sq, c.Nh * c.Dh);
    absl::Status s = CausalAttention<float>(ctx, qd, kd, vd, md, c.Nh, c.Nkv, c.Dh, c.Sk, c.q_offset, out);
    ASSERT_TRUE(s.ok()) << s;
    const std::vector<float> got = ToHost(out);
    const std::vector<double> want = reference::Attention(ToDouble(q), ToDouble(k), ToDouble(v), mask, c.B, c.Sq,
                                                          c.Sk, c.Nh, c.Nkv, c.Dh, c.q_offset);
    const std::vector<double> bound =
        AttentionErrorBounds(q, k, v, mask, c.B, c.Sq, c.Sk, c.Nh, c.Nkv, c.Dh, c.q_offset);  // derived above
    for (size_t i = 0; i < got.size(); ++i)
      ASSERT_NEAR(got[i], want[i], bound[i]) << i << " seed " << seed << " Dh " << c.Dh << " Sk " << c.Sk << " "
                                             << path.name << " " << decode.name;
  }
}

// bf16 storage at decode shapes with the models' head_dim of 128 (the split-key path with
// 16-byte packs on GPUs), a row padded on the left by whole key chunks and blocks: reference of the
// rounded inputs; the only extra error is the bf16 rounding of the output (2^-8 relative to
// max|v|).
TYPED_TEST(AttentionTest, Bf16DecodeMatchesReferenceOfRoundedInputs) {
  using Space = TypeParam;
  const int64_t B = 2, Sq = 1, Sk = 301, Nh = 4, Nkv = 2, Dh = 128, q_offset = 300;
  const uint32_t seed = 77;
  std::vector<float> q = RandomNormal(B * Sq * Nh * Dh, 0.1f, seed);
  std::vector<float> k = RandomNormal(B * Sk * Nkv * Dh, 0.1f, seed + 1);
  std::vector<float> v = RandomNormal(B * Sk * Nkv * Dh, 1.0f, seed + 2);
  const std::vector<bf16> qb = RoundToBf16(q), kb = RoundToBf16(k), vb = RoundToBf16(v);
  std::vector<int64_t> mask(B * Sk, 1);
  // Row 1: 260 padding keys: warp-split chunks of 32 keys (32-255) and whole block-split blocks
  // (keys 16-255, 64-255 or 128-255) without a visible key (key 0 always is).
  for (int64_t j = 0; j < 260; ++j) mask[Sk + j] = 0;
  auto qd = ToDevice3<Space>(qb, B, Sq, Nh * Dh, "q");
  auto kd = ToDevice3<Space>(kb, B, Sk, Nkv * Dh, "k");
  auto vd = ToDevice3<Space>(vb, B, Sk, Nkv * Dh, "v");
  const auto md = MaskToDevice<Space>(mask, B, Sk);
  const std::vector<double> want =
      reference::Attention(ToDouble(q), ToDouble(k), ToDouble(v), mask, B, Sq, Sk, Nh, Nkv, Dh, q_offset);
  for (const DecodeKernelChoice& decode : kDecodeKernels)
  for (const PathCase& path : kPaths) {
    const ExecutionContext<Space> ctx = ContextFor<Space>(path, decode);
    Tensor3<bf16, Space> out("out", B, Sq, Nh * Dh);
    absl::Status s = CausalAttention<bf16>(ctx, qd, kd, vd, md, Nh, Nkv, Dh, Sk, q_offset, out);
    ASSERT_TRUE(s.ok()) << s;
    const std::vector<bf16> got = ToHost(out);
    // Scores: |q.k| sums of 128 products of ~0.01 each (float32 error ~1e-7 relative), so the
    // float32 part is far below the output rounding: 2^-8 * |out| (|v| <= 5) + 1e-5.
    for (size_t i = 0; i < got.size(); ++i) {
      ASSERT_NEAR(float(got[i]), want[i], std::ldexp(std::fabs(want[i]), -8) + 1e-5)
          << i << " seed " << seed << " " << path.name << " " << decode.name;
    }
  }
}

// bf16 storage at prefill shapes on the GEMM path (on CUDA the softmax's register kernels: 16
// keys per lane up to 512 keys, 64 up to 2048, the loops beyond), against the reference of the rounded inputs, with
// probabilities split into two bf16 halves (training) and rounded once (inference). Bound: the
// float32 bound above plus the rounding of each weight (2^-8 relative, once rounded; 2^-16 for
// the split pair), both relative to W_d = sum_j p_j |v_jd|, plus the output's rounding 2^-8 |out|.
TYPED_TEST(AttentionTest, Bf16PrefillMatchesReferenceOfRoundedInputs) {
  using Space = TypeParam;
  struct Case { int64_t B, Sq, Sk, Nh, Nkv, Dh, q_offset; };
  for (const bool split : {true, false})
  // Keys: <= 512, <= 2048 and beyond (on CUDA the two register kernels and the loops).
  for (const Case c : {Case{2, 40, 40, 4, 2, 16, 0}, Case{2, 24, 600, 2, 2, 16, 576}, Case{1, 16, 2100, 2, 1, 8, 2084}}) {
    const uint32_t seed = 91 + uint32_t(c.Sk);
    std::vector<float> q = RandomNormal(c.B * c.Sq * c.Nh * c.Dh, 0.3f, seed);
    std::vector<float> k = RandomNormal(c.B * c.Sk * c.Nkv * c.Dh, 0.3f, seed + 1);
    std::vector<float> v = RandomNormal(c.B * c.Sk * c.Nkv * c.Dh, 1.0f, seed + 2);
    const std::vector<bf16> qb = RoundToBf16(q), kb = RoundToBf16(k), vb = RoundToBf16(v);
    std::vector<int64_t> mask(c.B * c.Sk, 1);
    for (int64_t j = 0; j < 5; ++j) mask[(c.B - 1) * c.Sk + j] = 0;  // left-padded last row
    auto qd = ToDevice3<Space>(qb, c.B, c.Sq, c.Nh * c.Dh, "q");
    auto kd = ToDevice3<Space>(kb, c.B, c.Sk, c.Nkv * c.Dh, "k");
    auto vd = ToDevice3<Space>(vb, c.B, c.Sk, c.Nkv * c.Dh, "v");
    const auto md = MaskToDevice<Space>(mask, c.B, c.Sk);
    ExecutionContext<Space> ctx = ContextFor<Space>(kPaths[1]);  // the GEMM path
    ctx.tuning().split_16bit_probs = split;
    Tensor3<bf16, Space> out("out", c.B, c.Sq, c.Nh * c.Dh);
    absl::Status s = CausalAttention<bf16>(ctx, qd, kd, vd, md, c.Nh, c.Nkv, c.Dh, c.Sk, c.q_offset, out);
    ASSERT_TRUE(s.ok()) << s;
    const std::vector<bf16> got = ToHost(out);
    const std::vector<double> want = reference::Attention(ToDouble(q), ToDouble(k), ToDouble(v), mask, c.B, c.Sq,
                                                          c.Sk, c.Nh, c.Nkv, c.Dh, c.q_offset);
    const std::vector<double> bound = AttentionErrorBounds(q, k, v, mask, c.B, c.Sq, c.Sk, c.Nh, c.Nkv, c.Dh,
                                                           c.q_offset, std::ldexp(1.0, split ? -16 : -8));
    for (size_t i = 0; i < got.size(); ++i) {
      ASSERT_NEAR(float(got[i]), want[i], bound[i] + std::ldexp(std::fabs(want[i]), -8) + 1e-6)
          << i << " seed " << seed << " Sk " << c.Sk << (split ? " split" : " rounded once");
    }
  }
}

// RopeAndAppend against ApplyRope on q and k and plain copies into the caches, bit for bit (both
// rotate through RopeCosSin and RotatePair), for qkv [B, S, (Nh + 2 Nkv) Dh] written at `offset`.
template <class Space, class T>
void CheckRopeAndAppend(int64_t B, int64_t S, int64_t Nh, int64_t Nkv, int64_t Dh, int64_t offset, uint32_t seed) {
  const int64_t Wq = Nh * Dh, Wkv = Nkv * Dh, S_max = offset + S + 1;
  auto random = [](size_t n, uint32_t seed) {
    std::vector<T> out;
    for (float e : RandomNormal(n, 1.0f, seed)) out.push_back(T(e));
    return out;
  };
  const std::vector<T> q = random(B * S * Wq, seed), k = random(B * S * Wkv, seed + 1), v = random(B * S * Wkv, seed + 2);
  std::vector<T> qkv;  // rows [q | k | v]
  for (int64_t r = 0; r < B * S; ++r) {
    qkv.insert(qkv.end(), q.begin() + r * Wq, q.begin() + (r + 1) * Wq);
    qkv.insert(qkv.end(), k.begin() + r * Wkv, k.begin() + (r + 1) * Wkv);
    qkv.insert(qkv.end(), v.begin() + r * Wkv, v.begin() + (r + 1) * Wkv);
  }
  auto q1 = ToDevice3<Space>(q, B, S, Wq, "q1"), k1 = ToDevice3<Space>(k, B, S, Wkv, "k1");
  auto vd = ToDevice3<Space>(v, B, S, Wkv, "v");
  auto qkvd = ToDevice3<Space>(qkv, B, S, Wq + 2 * Wkv, "qkv");
  Tensor3<T, Space> q2("q2", B, S, Wq);
  Tensor3<T, Space> kc1("kc1", B, S_max, Wkv), vc1("vc1", B, S_max, Wkv);
  Tensor3<T, Space> kc2("kc2", B, S_max, Wkv), vc2("vc2", B, S_max, Wkv);
  ASSERT_TRUE(ApplyRope<T>(Space(), q1, Dh, offset).ok());
  ASSERT_TRUE(ApplyRope<T>(Space(), k1, Dh, offset).ok());
  const auto columns = std::make_pair(offset, offset + S);
  Kokkos::deep_copy(Kokkos::subview(kc1, Kokkos::ALL, columns, Kokkos::ALL), k1);
  Kokkos::deep_copy(Kokkos::subview(vc1, Kokkos::ALL, columns, Kokkos::ALL), vd);
  ASSERT_TRUE(RopeAndAppend<T>(Space(), qkvd, Dh, Wkv, offset, q2, kc2, vc2).ok());
  const std::string shape = "B " + std::to_string(B) + " S " + std::to_string(S) + " Nh " + std::to_string(Nh) +
                            " Nkv " + std::to_string(Nkv) + " Dh " + std::to_string(Dh);
  const std::pair<Tensor3<T, Space>, Tensor3<T, Space>> pairs[] = {{q2, q1}, {kc2, kc1}, {vc2, vc1}};
  for (const auto& [got_view, want_view] : pairs) {
    const std::vector<T> got = ToHost(got_view), want = ToHost(want_view);
    for (size_t i = 0; i < got.size(); ++i)
      ASSERT_EQ(float(got[i]), float(want[i])) << want_view.label() << " element " << i << " (" << shape << ")";
  }
  Tensor3<T, Space> small("small", B, offset + S - 1, Wkv);
  EXPECT_FALSE(RopeAndAppend<T>(Space(), qkvd, Dh, Wkv, offset, q2, small, small).ok());
}

// The kernel gives each thread one j of a group of heads, as many heads as keep >= 2^17 threads:
// one head per thread (the small shape, a decode-like step), groups of 2 heads (B S Dh / 2 = 44800
// threads per group), all 6 heads in one group (2 x 1024 x 64 = 2^17) with 2 kv heads, i.e. q heads
// without k and v in the group and a last batch of in-flight heads cut short.
TYPED_TEST(AttentionTest, RopeAndAppendEqualsRopeThenCopies) {
  CheckRopeAndAppend<TypeParam, float>(/*B=*/2, /*S=*/3, /*Nh=*/4, /*Nkv=*/2, /*Dh=*/8, /*offset=*/5, 71);
  CheckRopeAndAppend<TypeParam, float>(1, 700, 5, 5, 128, 3, 74);
  CheckRopeAndAppend<TypeParam, float>(2, 1024, 6, 2, 128, 0, 77);
  CheckRopeAndAppend<TypeParam, bf16>(2, 1024, 6, 2, 128, 11, 80);
}

// A step replayed as a CUDA graph reads its position from device memory: with the offset there
// (and only a capacity bound on the host), RoPE + append and attention give exactly the results
// of the host-offset calls.
TYPED_TEST(AttentionTest, DeviceOffsetEqualsHostOffset) {
  using Space = TypeParam;
  const int64_t B = 2, Nh = 4, Nkv = 2, Dh = 16, capacity = 200, L = 149;
  const int64_t Wq = Nh * Dh, Wkv = Nkv * Dh;
  const std::vector<float> qkv = RandomNormal(B * (Wq + 2 * Wkv), 0.5f, 81);
  const std::vector<float> cache0 = RandomNormal(B * capacity * Wkv, 0.5f, 82);
  auto md = SecondRowLeftPadded<Space>(B, capacity, 40);
  Kokkos::View<int64_t, typename Space::memory_space> offset("offset");
  Kokkos::deep_copy(offset, L);
  std::vector<std::vector<float>> results[2];
  for (int device = 0; device < 2; ++device) {
    auto qkvd = ToDevice3<Space>(qkv, B, 1, Wq + 2 * Wkv, "qkv");
    auto kc = ToDevice3<Space>(cache0, B, capacity, Wkv, "k"), vc = ToDevice3<Space>(cache0, B, capacity, Wkv, "v");
    Tensor3<float, Space> q("q", B, 1, Wq), out("out", B, 1, Wq);
    const int64_t* dev = device ? offset.data() : nullptr;
    ASSERT_TRUE(RopeAndAppend<float>(Space(), qkvd, Dh, Wkv, device ? 0 : L, q, kc, vc, dev).ok());
    ASSERT_TRUE(CausalAttention<float>(ExecutionContext<Space>(), q, kc, vc, md, Nh, Nkv, Dh, device ? capacity : L + 1,
                                       device ? 0 : L, out, dev).ok());
    results[device] = {ToHost(q), ToHost(kc), ToHost(vc), ToHost(out)};
  }
  EXPECT_EQ(results[1], results[0]);
}

TYPED_TEST(AttentionTest, KeyZeroIsVisibleEvenWhenMasked) {
  using Space = TypeParam;
  // One query at position 2 whose keys 0..2 are all padding: only key 0 counts, so out = v[0].
  const int64_t Dh = 4;
  const std::vector<float> q = {1, 0, 0, 0}, k(3 * Dh, 0.5f), v = {1, 2, 3, 4, 10, 10, 10, 10, 20, 20, 20, 20};
  auto qd = ToDevice3<Space>(q, 1, 1, Dh, "q");
  auto kd = ToDevice3<Space>(k, 1, 3, Dh, "k");
  auto vd = ToDevice3<Space>(v, 1, 3, Dh, "v");
  Kokkos::View<int64_t**, Kokkos::LayoutRight, typename Space::memory_space> md("mask", 1, 3);  // zeros
  Tensor3<float, Space> out("out", 1, 1, Dh);
  ASSERT_TRUE(CausalAttention<float>(ExecutionContext<Space>(), qd, kd, vd, md, 1, 1, Dh, 3, 2, out).ok());
  EXPECT_EQ(ToHost(out), (std::vector<float>{1, 2, 3, 4}));
}

// A prefill chunk into a KV cache larger than its valid keys (generation: capacity > prompt):
// both paths read only the first num_keys rows, so NaN in the rest of the cache changes nothing,
// and they agree with the reference over the valid keys.
TYPED_TEST(AttentionTest, ReadsOnlyTheValidKeysOfALargerCache) {
  using Space = TypeParam;
  const int64_t B = 2, Sq = 20, capacity = 64, num_keys = 30, q_offset = 10, Nh = 4, Nkv = 2, Dh = 8;
  const std::vector<float> q = RandomNormal(B * Sq * Nh * Dh, 0.5f, 91);
  std::vector<float> k = RandomNormal(B * capacity * Nkv * Dh, 0.5f, 92), v = RandomNormal(B * capacity * Nkv * Dh, 1.0f, 93);
  std::vector<float> k_valid, v_valid;  // [B, num_keys, Nkv*Dh] for the reference
  for (int64_t b = 0; b < B; ++b)
    for (int64_t j = 0; j < capacity; ++j)
      for (int64_t c = 0; c < Nkv * Dh; ++c) {
        const int64_t idx = (b * capacity + j) * Nkv * Dh + c;
        if (j < num_keys) {
          k_valid.push_back(k[idx]), v_valid.push_back(v[idx]);
        } else {
          k[idx] = v[idx] = std::nanf("");
        }
      }
  std::vector<int64_t> mask(B * capacity, 1), mask_valid(B * num_keys, 1);
  for (int64_t j = 0; j < 4; ++j) mask[capacity + j] = mask_valid[num_keys + j] = 0;  // row 1 left-padded
  Kokkos::View<int64_t**, Kokkos::LayoutRight, typename Space::memory_space> md("mask", B, capacity);
  Kokkos::deep_copy(md, Kokkos::View<const int64_t**, Kokkos::LayoutRight, Kokkos::HostSpace, Kokkos::MemoryUnmanaged>(
                            mask.data(), B, capacity));
  const std::vector<double> want = reference::Attention(ToDouble(q), ToDouble(k_valid), ToDouble(v_valid), mask_valid,
                                                        B, Sq, num_keys, Nh, Nkv, Dh, q_offset);
  for (const PathCase& path : kPaths) {
    const ExecutionContext<Space> ctx = ContextFor<Space>(path);
    Tensor3<float, Space> out("out", B, Sq, Nh * Dh);
    ASSERT_TRUE(CausalAttention<float>(ctx, ToDevice3<Space>(q, B, Sq, Nh * Dh, "q"),
                                       ToDevice3<Space>(k, B, capacity, Nkv * Dh, "k"),
                                       ToDevice3<Space>(v, B, capacity, Nkv * Dh, "v"), md, Nh, Nkv, Dh, num_keys,
                                       q_offset, out).ok());
    const std::vector<float> got = ToHost(out);
    // float32 scores of 8 products of ~0.25 and weights summing to 1 over |v| < 5: errors ~1e-6.
    for (size_t i = 0; i < got.size(); ++i) ASSERT_NEAR(got[i], want[i], 1e-5) << i << " " << path.name;
  }
}

// A decode step's fused RoPE + append + attention (one kernel on CUDA) against the two ops it
// replaces, with the new key inside a chunk (L = 149) and first in its chunk (L = 160 for 32-key
// warps, 128 for the block-split kernel's blocks of 64 and 128 keys at Dh 128; the other keys of
// that chunk lie beyond the step). The caches get the same new column, bit for bit (both
// paths rotate the same raw key with the same cos/sin, RopeCosSin of the same position, through
// RotatePair, which every RoPE kernel uses so that all round alike; the value is copied); the
// outputs agree to float32 summation order (float) or to one rounding of the output (bf16: 2^-8
// relative, twice for a rotated q element whose rounding could differ by a contracted multiply-add).
// Only where the fused kernel exists (FusedDecodeStepSupported); elsewhere both calls would run the
// same two ops.
template <class Space, class T>
void CheckFusedDecodeStep(int64_t Dh, int64_t L, uint32_t seed, const DecodeKernelChoice& decode) {
  ExecutionContext<Space> ctx;
  UseDecodeKernel(decode, ctx);
  const int64_t B = 2, Nh = 4, Nkv = 2, capacity = 200;
  const int64_t Wq = Nh * Dh, Wkv = Nkv * Dh;
  std::vector<T> qkv, cache0;
  for (float e : RandomNormal(B * (Wq + 2 * Wkv), 0.3f, seed)) qkv.push_back(T(e));
  for (float e : RandomNormal(B * capacity * Wkv, 0.3f, seed + 1)) cache0.push_back(T(e));
  auto md = SecondRowLeftPadded<Space>(B, capacity, 40);
  Kokkos::View<int64_t, typename Space::memory_space> offset("offset");
  Kokkos::deep_copy(offset, L);
  auto qkvd = ToDevice3<Space>(qkv, B, 1, Wq + 2 * Wkv, "qkv");
  // The two ops with the position on the host.
  auto kc1 = ToDevice3<Space>(cache0, B, capacity, Wkv, "k1"), vc1 = ToDevice3<Space>(cache0, B, capacity, Wkv, "v1");
  Tensor3<T, Space> q1("q1", B, 1, Wq), out1("out1", B, 1, Wq);
  ASSERT_TRUE(RopeAndAppend<T>(Space(), qkvd, Dh, Wkv, L, q1, kc1, vc1).ok());
  ASSERT_TRUE(CausalAttention<T>(ctx, q1, kc1, vc1, md, Nh, Nkv, Dh, L + 1, L, out1).ok());
  // The fused step with the position on the device.
  auto kc2 = ToDevice3<Space>(cache0, B, capacity, Wkv, "k2"), vc2 = ToDevice3<Space>(cache0, B, capacity, Wkv, "v2");
  Tensor3<T, Space> q2("q2", B, 1, Wq), out2("out2", B, 1, Wq);
  absl::Status s = RopeAppendAttention<T>(ctx, qkvd, q2, kc2, vc2, md, Nh, Nkv, Dh, out2, offset.data());
  ASSERT_TRUE(s.ok()) << s;
  // The fused kernel does not write q (attention.h): q2 still all zeros shows that kc2, vc2 and out2
  // come from it, not from the two ops again.
  const std::vector<T> q2_host = ToHost(q2);
  for (size_t i = 0; i < q2_host.size(); ++i)
    ASSERT_EQ(float(q2_host[i]), 0.0f) << "q " << i << ": RopeAppendAttention wrote q, so it did not take its fused "
                                       << "path (Dh " << Dh << ", seed " << seed << ")";
  const std::vector<T> k1 = ToHost(kc1), k2 = ToHost(kc2);
  for (size_t i = 0; i < k1.size(); ++i) ASSERT_EQ(float(k2[i]), float(k1[i])) << "key cache " << i << " seed " << seed;
  const std::vector<T> v1 = ToHost(vc1), v2 = ToHost(vc2);
  for (size_t i = 0; i < v1.size(); ++i) ASSERT_EQ(float(v2[i]), float(v1[i])) << "value cache " << i;
  const std::vector<T> want = ToHost(out1), got = ToHost(out2);
  const bool is_float = sizeof(T) == 4;
  for (size_t i = 0; i < want.size(); ++i) {
    const float w = float(want[i]);
    ASSERT_NEAR(float(got[i]), w, is_float ? 1e-5f : std::ldexp(std::fabs(w), -7) + 1e-4f)
        << i << " Dh " << Dh << " L " << L << " seed " << seed << " " << decode.name;
  }
}

TYPED_TEST(AttentionTest, FusedDecodeStepEqualsRopeAppendThenAttention) {
  if (!FusedDecodeStepSupported<TypeParam>()) {
    GTEST_SKIP() << "no fused decode step on " << TypeParam::name()
                 << " (host memory): RopeAppendAttention runs RopeAndAppend then CausalAttention, the very ops this "
                    "test compares it with";
  }
  // L = 149 is inside its chunk; 160 and 128 are first in theirs (above); with L = 40 at Dh 128 the
  // keys fit one 64- or 128-key block of a cache of several (the block-split kernel's direct output;
  // the 2-warp blocks of 16 keys still fold three).
  for (const DecodeKernelChoice& decode : kDecodeKernels)
    for (int64_t L : {40, 128, 149, 160}) {
      CheckFusedDecodeStep<TypeParam, float>(16, L, 91, decode);
      CheckFusedDecodeStep<TypeParam, bf16>(128, L, 93, decode);
    }
}

}  // namespace
}  // namespace openmoe::kernels

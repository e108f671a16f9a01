#include "kernels/backward.h"

#include <cfloat>
#include <cmath>

#include "absl/strings/str_cat.h"
#include "kernels/attention_gemm.h"
#include "kernels/instantiate.h"
#include "kernels/launch.h"
#include "kernels/layer_math.h"

namespace openmoe::kernels {
namespace {
constexpr int64_t kMaxHeadDim = 128;  // per-thread rows of the attention backward
}  // namespace

template <class ExecSpace>
absl::Status RmsNormBackward(const ExecSpace& space, ConstMatrix<float, ExecSpace> x, ConstVector<float, ExecSpace> w,
                             ConstMatrix<float, ExecSpace> dy, float eps, Matrix<float, ExecSpace> dx,
                             Vector<float, ExecSpace> dw) {
  const int64_t N = x.extent(0), H = x.extent(1);
  if (w.extent(0) != size_t(H) || dw.extent(0) != size_t(H) || dy.extent(0) != size_t(N) || dy.extent(1) != size_t(H) ||
      dx.extent(0) != size_t(N) || dx.extent(1) != size_t(H)) {
    return absl::InvalidArgumentError(absl::StrCat("RmsNormBackward: shapes do not fit x [", N, ", ", H, "]"));
  }
  using Member = typename Kokkos::TeamPolicy<ExecSpace>::member_type;
  const float inv_h = 1.0f / float(H);
  Kokkos::parallel_for(
      "openmoe::kernels::RmsNormBackward.dx", RowTeams(space, N, 256), KOKKOS_LAMBDA(const Member& team) {
        const int64_t t = team.league_rank();
        float sum_sq = 0.0f, sum_wdx = 0.0f;
        Kokkos::parallel_reduce(
            Kokkos::TeamThreadRange(team, H), [&](const int64_t j, float& s) { s += x(t, j) * x(t, j); }, sum_sq);
        Kokkos::parallel_reduce(
            Kokkos::TeamThreadRange(team, H), [&](const int64_t j, float& s) { s += w(j) * dy(t, j) * x(t, j); },
            sum_wdx);
        const float r = 1.0f / Kokkos::Experimental::sqrt(sum_sq * inv_h + eps);
        Kokkos::parallel_for(Kokkos::TeamThreadRange(team, H), [&](const int64_t j) {
          dx(t, j) = r * w(j) * dy(t, j) - x(t, j) * r * r * r * sum_wdx * inv_h;
        });
      });
  // dw: one thread per column, rows in order (deterministic); r recomputed per row.
  Kokkos::View<float*, typename ExecSpace::memory_space> r("rms_backward.r", N);
  Kokkos::parallel_for(
      "openmoe::kernels::RmsNormBackward.r", RowTeams(space, N, 256), KOKKOS_LAMBDA(const Member& team) {
        const int64_t t = team.league_rank();
        float sum_sq = 0.0f;
        Kokkos::parallel_reduce(
            Kokkos::TeamThreadRange(team, H), [&](const int64_t j, float& s) { s += x(t, j) * x(t, j); }, sum_sq);
        Kokkos::single(Kokkos::PerTeam(team), [&]() { r(t) = 1.0f / Kokkos::Experimental::sqrt(sum_sq * inv_h + eps); });
      });
  Kokkos::parallel_for(
      "openmoe::kernels::RmsNormBackward.dw", FlatRange(space, H), KOKKOS_LAMBDA(const int64_t j) {
        float acc = 0.0f;
        for (int64_t t = 0; t < N; ++t) acc += dy(t, j) * x(t, j) * r(t);
        dw(j) += acc;
      });
  return absl::OkStatus();
}

template <class ExecSpace>
absl::Status SwigluBackward(const ExecSpace& space, ConstMatrix<float, ExecSpace> gate, ConstMatrix<float, ExecSpace> up,
                            ConstMatrix<float, ExecSpace> dact, Matrix<float, ExecSpace> dgate,
                            Matrix<float, ExecSpace> dup) {
  const int64_t N = up.extent(0), I = up.extent(1);
  if (gate.extent(0) != size_t(N) || gate.extent(1) != size_t(2 * I) || dact.extent(0) != size_t(N) ||
      dact.extent(1) != size_t(I) || dgate.extent(1) != size_t(2 * I) || dup.extent(1) != size_t(I)) {
    return absl::InvalidArgumentError(absl::StrCat("SwigluBackward: expected gate [N, ", 2 * I, "], up/dact [N, ", I, "]"));
  }
  Kokkos::parallel_for(
      "openmoe::kernels::SwigluBackward", FlatRange(space, N * I), KOKKOS_LAMBDA(const int64_t idx) {
        const int64_t t = idx / I, i = idx % I;
        SwigluGradient(gate(t, i), gate(t, I + i), up(t, i), dact(t, i), dgate(t, i), dgate(t, I + i), dup(t, i));
      });
  return absl::OkStatus();
}

template <class ExecSpace>
absl::Status SwigluBackwardFused(const ExecSpace& space, ConstMatrix<float, ExecSpace> gate_up,
                                 ConstMatrix<float, ExecSpace> dact, Matrix<float, ExecSpace> d_gate_up) {
  const int64_t N = dact.extent(0), I = dact.extent(1);
  if (gate_up.extent(0) != size_t(N) || gate_up.extent(1) != size_t(3 * I) || d_gate_up.extent(0) != size_t(N) ||
      d_gate_up.extent(1) != size_t(3 * I)) {
    return absl::InvalidArgumentError(absl::StrCat("SwigluBackwardFused: expected gate_up / d_gate_up [", N, ", ", 3 * I,
                                                   "] for dact [", N, ", ", I, "]"));
  }
  Kokkos::parallel_for(
      "openmoe::kernels::SwigluBackwardFused", FlatRange(space, N * I), KOKKOS_LAMBDA(const int64_t idx) {
        const int64_t t = idx / I, i = idx % I;
        SwigluGradient(gate_up(t, i), gate_up(t, I + i), gate_up(t, 2 * I + i), dact(t, i), d_gate_up(t, i),
                       d_gate_up(t, I + i), d_gate_up(t, 2 * I + i));
      });
  return absl::OkStatus();
}

template <class ExecSpace>
absl::Status CausalAttentionBackward(const ExecutionContext<ExecSpace>& ctx, Tensor3<const float, ExecSpace> q,
                                     Tensor3<const float, ExecSpace> k, Tensor3<const float, ExecSpace> v,
                                     Kokkos::View<const int64_t**, Kokkos::LayoutRight, typename ExecSpace::memory_space> mask,
                                     Tensor3<const float, ExecSpace> dout, int64_t Nh, int64_t Nkv, int64_t Dh,
                                     Tensor3<float, ExecSpace> dq, Tensor3<float, ExecSpace> dk,
                                     Tensor3<float, ExecSpace> dv) {
  const auto& space = ctx.space();
  const int64_t B = q.extent(0), S = q.extent(1);
  if (Nkv <= 0 || Nh % Nkv != 0 || q.extent(2) != size_t(Nh * Dh) || k.extent(2) != size_t(Nkv * Dh) ||
      k.extent(1) < size_t(S) || dk.extent(1) != size_t(S) || dq.extent(1) != size_t(S)) {
    return absl::InvalidArgumentError("CausalAttentionBackward: q, k, v, dq, dk, dv do not fit [B, S, heads * Dh]");
  }
  if (UseGemmAttention<ExecSpace>(ctx.tuning(), S)) {  // CUDA (attention_gemm.h)
    return GemmAttentionBackward<ExecSpace>(ctx, q, k, v, mask, dout, Nh, Nkv, Dh, dq, dk, dv);
  }
  if (Dh > kMaxHeadDim) {
    return absl::InvalidArgumentError(absl::StrCat("CausalAttentionBackward: head_dim ", Dh, " > ", kMaxHeadDim));
  }
  const int64_t group = Nh / Nkv;
  using MemSpace = typename ExecSpace::memory_space;
  Kokkos::View<float***, Kokkos::LayoutRight, MemSpace> lse("attention_backward.lse", B, S, Nh);    // log-sum-exp
  Kokkos::View<float***, Kokkos::LayoutRight, MemSpace> delta("attention_backward.delta", B, S, Nh);  // sum_j P dP
  auto visible = KOKKOS_LAMBDA(const int64_t b, const int64_t i, const int64_t j) {
    return j <= i && (j == 0 || mask(b, j) != 0);
  };
  // Pass 1, per query row (rows vary fastest, so the threads of a warp walk the same key row:
  // broadcast loads): online softmax statistics, then in one more walk
  // delta = sum_j P dP, A = sum_j P dP k_j and Pk = sum_j P k_j, so dq = A - delta * Pk.
  // The row's q and dout and the accumulators live in per-thread arrays (coalesced local memory).
  Kokkos::parallel_for(
      "openmoe::kernels::CausalAttentionBackward.dq", FlatRange(space, B * S * Nh), KOKKOS_LAMBDA(const int64_t idx) {
        const int64_t i = idx % S, h = (idx / S) % Nh, b = idx / (Nh * S);
        const int64_t qc = h * Dh, kc = (h / group) * Dh;
        float q_row[kMaxHeadDim], do_row[kMaxHeadDim], acc[kMaxHeadDim], pk[kMaxHeadDim];
        for (int64_t d = 0; d < Dh; ++d) q_row[d] = q(b, i, qc + d), do_row[d] = dout(b, i, qc + d), acc[d] = pk[d] = 0.0f;
        float m = -FLT_MAX, sum = 0.0f;
        for (int64_t j = 0; j <= i; ++j) {
          if (!visible(b, i, j)) continue;
          float s = 0.0f;
          for (int64_t d = 0; d < Dh; ++d) s += q_row[d] * k(b, j, kc + d);
          if (s > m) sum = sum * Kokkos::Experimental::exp(m - s), m = s;
          sum += Kokkos::Experimental::exp(s - m);
        }
        const float log_sum = m + Kokkos::Experimental::log(sum);
        float dsum = 0.0f;
        for (int64_t j = 0; j <= i; ++j) {
          if (!visible(b, i, j)) continue;
          float s = 0.0f, dp = 0.0f;
          for (int64_t d = 0; d < Dh; ++d) s += q_row[d] * k(b, j, kc + d), dp += do_row[d] * v(b, j, kc + d);
          const float p = Kokkos::Experimental::exp(s - log_sum);
          dsum += p * dp;
          for (int64_t d = 0; d < Dh; ++d) acc[d] += p * dp * k(b, j, kc + d), pk[d] += p * k(b, j, kc + d);
        }
        lse(b, i, h) = log_sum, delta(b, i, h) = dsum;
        for (int64_t d = 0; d < Dh; ++d) dq(b, i, qc + d) = acc[d] - dsum * pk[d];
      });
  // Pass 2, per key row and kv head (key rows vary fastest; every thread of a warp starts its
  // query walk at the warp's first key row, so they read the same query row: broadcast): dk and
  // dv summed over the queries (and heads) that see the key.
  Kokkos::parallel_for(
      "openmoe::kernels::CausalAttentionBackward.dkdv", FlatRange(space, B * S * Nkv), KOKKOS_LAMBDA(const int64_t idx) {
        const int64_t j = idx % S, g = (idx / S) % Nkv, b = idx / (Nkv * S);
        const int64_t kc = g * Dh;
        float k_row[kMaxHeadDim], v_row[kMaxHeadDim], dk_row[kMaxHeadDim], dv_row[kMaxHeadDim];
        for (int64_t d = 0; d < Dh; ++d) k_row[d] = k(b, j, kc + d), v_row[d] = v(b, j, kc + d), dk_row[d] = dv_row[d] = 0.0f;
        for (int64_t h = g * group; h < (g + 1) * group; ++h) {
          const int64_t qc = h * Dh;
          for (int64_t i = j - j % 32; i < S; ++i) {
            if (i < j || !visible(b, i, j)) continue;
            float s = 0.0f, dp = 0.0f;
            for (int64_t d = 0; d < Dh; ++d) s += q(b, i, qc + d) * k_row[d], dp += dout(b, i, qc + d) * v_row[d];
            const float p  = Kokkos::Experimental::exp(s - lse(b, i, h));
            const float ds = p * (dp - delta(b, i, h));
            for (int64_t d = 0; d < Dh; ++d) dk_row[d] += ds * q(b, i, qc + d), dv_row[d] += p * dout(b, i, qc + d);
          }
        }
        for (int64_t d = 0; d < Dh; ++d) dk(b, j, kc + d) = dk_row[d], dv(b, j, kc + d) = dv_row[d];
      });
  return absl::OkStatus();
}

template <class ExecSpace>
absl::Status EmbeddingBackward(const ExecSpace& space, ConstVector<int64_t, ExecSpace> ids,
                               ConstMatrix<float, ExecSpace> dh, int64_t pad_id, Matrix<float, ExecSpace> dtable) {
  const int64_t N = ids.extent(0), H = dh.extent(1), V = dtable.extent(0);
  if (dh.extent(0) != size_t(N) || dtable.extent(1) != size_t(H)) {
    return absl::InvalidArgumentError("EmbeddingBackward: dh must be [N, H] and dtable [V, H]");
  }
  Kokkos::parallel_for(
      "openmoe::kernels::EmbeddingBackward", FlatRange(space, H), KOKKOS_LAMBDA(const int64_t h) {
        for (int64_t t = 0; t < N; ++t) {  // tokens in order: deterministic sums
          const int64_t id = ids(t);
          if (id != pad_id && id >= 0 && id < V) dtable(id, h) += dh(t, h);
        }
      });
  return absl::OkStatus();
}

template <class ExecSpace>
absl::Status LmLossBackward(const ExecSpace& space, Matrix<float, ExecSpace> logits, ConstVector<int64_t, ExecSpace> labels,
                            double label_smoothing, double z_loss_factor, Vector<double, ExecSpace> loss,
                            double grad_scale) {
  const int64_t R = logits.extent(0), V = logits.extent(1);
  if (labels.extent(0) != size_t(R) || loss.extent(0) != size_t(R) || V < 2) {
    return absl::InvalidArgumentError("LmLossBackward: labels and loss must have one entry per logits row");
  }
  const double ls = label_smoothing, off = ls / double(V - 1);
  const double constant = -((1 - ls) * std::log(1 - ls) + double(V - 1) * off * std::log(off + 1e-20));
  using Member = typename Kokkos::TeamPolicy<ExecSpace>::member_type;
  Kokkos::parallel_for(
      "openmoe::kernels::LmLossBackward", RowTeams(space, R, 256), KOKKOS_LAMBDA(const Member& team) {
        const int64_t r = team.league_rank(), label = labels(r);
        if (label < 0) {
          Kokkos::parallel_for(Kokkos::TeamThreadRange(team, V), [&](const int64_t v) { logits(r, v) = 0.0f; });
          Kokkos::single(Kokkos::PerTeam(team), [&]() { loss(r) = 0.0; });
          return;
        }
        double m = -DBL_MAX;
        Kokkos::parallel_reduce(
            Kokkos::TeamThreadRange(team, V), [&](const int64_t v, double& mx) { mx = logits(r, v) > mx ? logits(r, v) : mx; },
            Kokkos::Max<double>(m));
        double sum_exp = 0.0, sum_logits = 0.0;
        Kokkos::parallel_reduce(
            Kokkos::TeamThreadRange(team, V),
            [&](const int64_t v, double& s) { s += Kokkos::Experimental::exp(double(logits(r, v)) - m); }, sum_exp);
        Kokkos::parallel_reduce(
            Kokkos::TeamThreadRange(team, V), [&](const int64_t v, double& s) { s += logits(r, v); }, sum_logits);
        const double log_z = m + Kokkos::Experimental::log(sum_exp);
        const double label_logit = logits(r, label);
        team.team_barrier();  // every thread has read the row before it is overwritten
        Kokkos::single(Kokkos::PerTeam(team), [&]() {
          const double label_term = label_logit - log_z, all_terms = sum_logits - double(V) * log_z;
          const double cross = (1 - ls) * label_term + off * (all_terms - label_term);
          loss(r) = -cross + z_loss_factor * log_z * log_z - constant;
        });
        const double scale = 1.0 + 2.0 * z_loss_factor * log_z;
        Kokkos::parallel_for(Kokkos::TeamThreadRange(team, V), [&](const int64_t v) {
          const double p = Kokkos::Experimental::exp(double(logits(r, v)) - log_z);
          logits(r, v) = float(grad_scale * (p * scale - (v == label ? 1 - ls : off)));
        });
      });
  return absl::OkStatus();
}

template <class ExecSpace>
absl::Status CombineBackward(const ExecSpace& space, ConstMatrix<float, ExecSpace> dy,
                             ConstMatrix<float, ExecSpace> expert_out, ConstMatrix<float, ExecSpace> probs,
                             ConstMatrix<int32_t, ExecSpace> experts, ConstMatrix<int32_t, ExecSpace> rank,
                             int64_t capacity, Matrix<float, ExecSpace> d_expert_out, Matrix<float, ExecSpace> dprobs) {
  const int64_t N = dy.extent(0), H = dy.extent(1), E = probs.extent(1);
  if (expert_out.extent(1) != size_t(H) || d_expert_out.extent(0) != expert_out.extent(0) ||
      dprobs.extent(0) != size_t(N) || dprobs.extent(1) != size_t(E)) {
    return absl::InvalidArgumentError("CombineBackward: expert_out [E*C, H], probs/dprobs [N, E] and dy [N, H] must agree");
  }
  Kokkos::deep_copy(space, d_expert_out, 0.0f);
  Kokkos::deep_copy(space, dprobs, 0.0f);
  Kokkos::parallel_for(
      "openmoe::kernels::CombineBackward", FlatRange(space, N * 2), KOKKOS_LAMBDA(const int64_t idx) {
        const int64_t t = idx / 2, k = idx % 2;
        const int32_t e = experts(t, k), slot = rank(t, k);
        if (slot >= capacity) return;
        const int64_t row = e * capacity + slot;
        float dot = 0.0f;
        for (int64_t h = 0; h < H; ++h) {
          dot += dy(t, h) * expert_out(row, h);
          d_expert_out(row, h) = probs(t, e) * dy(t, h);
        }
        dprobs(t, e) = dot;  // the two experts of a token differ
      });
  return absl::OkStatus();
}

template <class ExecSpace>
absl::Status DispatchBackward(const ExecSpace& space, ConstMatrix<float, ExecSpace> d_dispatched,
                              ConstMatrix<int32_t, ExecSpace> experts, ConstMatrix<int32_t, ExecSpace> rank,
                              int64_t capacity, Matrix<float, ExecSpace> dx) {
  const int64_t N = dx.extent(0), H = dx.extent(1);
  if (d_dispatched.extent(1) != size_t(H)) return absl::InvalidArgumentError("DispatchBackward: widths differ");
  Kokkos::parallel_for(
      "openmoe::kernels::DispatchBackward", FlatRange(space, N * H), KOKKOS_LAMBDA(const int64_t idx) {
        const int64_t t = idx / H, h = idx % H;
        float acc = dx(t, h);
        for (int k = 0; k < 2; ++k) {
          const int32_t slot = rank(t, k);
          if (slot < capacity) acc += d_dispatched(experts(t, k) * capacity + slot, h);
        }
        dx(t, h) = acc;
      });
  return absl::OkStatus();
}

template <class ExecSpace>
absl::Status RouterLossBackward(const ExecSpace& space, ConstMatrix<float, ExecSpace> logits,
                                ConstMatrix<int32_t, ExecSpace> experts, ConstMatrix<float, ExecSpace> dprobs,
                                double aux_weight, double z_weight, double grad_scale, Matrix<float, ExecSpace> d_logits,
                                Kokkos::View<double*, typename ExecSpace::memory_space> parts) {
  using MemSpace = typename ExecSpace::memory_space;
  const int64_t N = logits.extent(0), E = logits.extent(1);
  if (N == 0 || E < 2 || experts.extent(0) != size_t(N) || experts.extent(1) != 2 || dprobs.extent(0) != size_t(N) ||
      dprobs.extent(1) != size_t(E) || d_logits.extent(0) != size_t(N) || d_logits.extent(1) != size_t(E) ||
      parts.extent(0) < 2) {
    return absl::InvalidArgumentError(absl::StrCat("RouterLossBackward: logits [", N, ", ", E, "] with experts [",
                                                   experts.extent(0), ", ", experts.extent(1), "], dprobs [",
                                                   dprobs.extent(0), ", ", dprobs.extent(1), "], d_logits [",
                                                   d_logits.extent(0), ", ", d_logits.extent(1), "], parts [",
                                                   parts.extent(0), "]: need N > 0, E >= 2, [N, 2], [N, E], [N, E], [2]"));
  }
  Kokkos::View<double*, MemSpace> log_z(Kokkos::view_alloc(Kokkos::WithoutInitializing, "router.log_z"), N);  // [N]
  Kokkos::View<double*, MemSpace> fraction(Kokkos::view_alloc(Kokkos::WithoutInitializing, "router.fraction"), E);  // [E]
  Kokkos::View<double*, MemSpace> mean_prob(Kokkos::view_alloc(Kokkos::WithoutInitializing, "router.mean_prob"), E);  // [E]
  Kokkos::parallel_for(
      "openmoe::kernels::RouterLogZ", FlatRange(space, N), KOKKOS_LAMBDA(const int64_t t) {
        double max_logit = logits(t, 0);
        for (int64_t e = 1; e < E; ++e) max_logit = max_logit > logits(t, e) ? max_logit : double(logits(t, e));
        double sum = 0;
        for (int64_t e = 0; e < E; ++e) sum += Kokkos::Experimental::exp(double(logits(t, e)) - max_logit);
        log_z(t) = max_logit + Kokkos::Experimental::log(sum);
      });
  // Per expert, over the tokens in order: f_e and P_e.
  using Team = Kokkos::TeamPolicy<ExecSpace>;
  Kokkos::parallel_for(
      "openmoe::kernels::RouterFractions", Team(space, E, Kokkos::AUTO), KOKKOS_LAMBDA(const typename Team::member_type& team) {
        const int64_t e = team.league_rank();
        double count = 0, prob = 0;
        Kokkos::parallel_reduce(
            Kokkos::TeamThreadRange(team, N),
            [&](const int64_t t, double& c) { c += double(experts(t, 0) == e) + double(experts(t, 1) == e); }, count);
        Kokkos::parallel_reduce(
            Kokkos::TeamThreadRange(team, N),
            [&](const int64_t t, double& p) { p += Kokkos::Experimental::exp(double(logits(t, e)) - log_z(t)); }, prob);
        Kokkos::single(Kokkos::PerTeam(team), [&]() { fraction(e) = count / double(N), mean_prob(e) = prob / double(N); });
      });
  // The two loss values: one team, its threads splitting the tokens (the z-sum over N was one
  // thread's loop before: N = 2048 serial iterations per MoE layer on a GPU).
  Kokkos::parallel_for(
      "openmoe::kernels::RouterLossParts", Team(space, 1, Kokkos::AUTO), KOKKOS_LAMBDA(const typename Team::member_type& team) {
        double balance = 0, z_sum = 0;
        Kokkos::parallel_reduce(
            Kokkos::TeamThreadRange(team, E), [&](const int64_t e, double& b) { b += fraction(e) * mean_prob(e); }, balance);
        Kokkos::parallel_reduce(
            Kokkos::TeamThreadRange(team, N), [&](const int64_t t, double& z) { z += log_z(t) * log_z(t); }, z_sum);
        Kokkos::single(Kokkos::PerTeam(team), [&]() { parts(0) = double(E) * balance, parts(1) = z_sum / double(N); });
      });
  const double aux_coefficient = grad_scale * aux_weight * double(E) / double(N);  // d aux / d P_e(t) = E f_e / N
  const double z_coefficient   = grad_scale * z_weight * 2.0 / double(N);         // d z / d logZ_t = 2 logZ_t / N
  Kokkos::parallel_for(
      "openmoe::kernels::RouterLossBackward", FlatRange(space, N), KOKKOS_LAMBDA(const int64_t t) {
        // Softmax backward: dlogit_e = p_e (dp_e - sum_j p_j dp_j), plus the z-loss term.
        double dot = 0;
        for (int64_t e = 0; e < E; ++e) {
          const double p = Kokkos::Experimental::exp(double(logits(t, e)) - log_z(t));
          dot += p * (double(dprobs(t, e)) + aux_coefficient * fraction(e));
        }
        for (int64_t e = 0; e < E; ++e) {
          const double p = Kokkos::Experimental::exp(double(logits(t, e)) - log_z(t));
          const double dp = double(dprobs(t, e)) + aux_coefficient * fraction(e);
          d_logits(t, e) = float(p * (dp - dot) + z_coefficient * log_z(t) * p);
        }
      });
  return absl::OkStatus();
}

#define OPENMOE_INSTANTIATE_BACKWARD(Space)                                                                        \
  template absl::Status RmsNormBackward<Space>(const Space&, ConstMatrix<float, Space>, ConstVector<float, Space>,  \
                                               ConstMatrix<float, Space>, float, Matrix<float, Space>,             \
                                               Vector<float, Space>);                                              \
  template absl::Status SwigluBackward<Space>(const Space&, ConstMatrix<float, Space>, ConstMatrix<float, Space>,   \
                                              ConstMatrix<float, Space>, Matrix<float, Space>, Matrix<float, Space>); \
  template absl::Status SwigluBackwardFused<Space>(const Space&, ConstMatrix<float, Space>, ConstMatrix<float, Space>, \
                                                   Matrix<float, Space>);                                           \
  template absl::Status CausalAttentionBackward<Space>(                                                            \
      const ExecutionContext<Space>&, Tensor3<const float, Space>, Tensor3<const float, Space>, Tensor3<const float, Space>,         \
      Kokkos::View<const int64_t**, Kokkos::LayoutRight, typename Space::memory_space>, Tensor3<const float, Space>, \
      int64_t, int64_t, int64_t, Tensor3<float, Space>, Tensor3<float, Space>, Tensor3<float, Space>);             \
  template absl::Status EmbeddingBackward<Space>(const Space&, ConstVector<int64_t, Space>, ConstMatrix<float, Space>, \
                                                 int64_t, Matrix<float, Space>);                                    \
  template absl::Status LmLossBackward<Space>(const Space&, Matrix<float, Space>, ConstVector<int64_t, Space>,      \
                                              double, double, Vector<double, Space>, double);                              \
  template absl::Status CombineBackward<Space>(const Space&, ConstMatrix<float, Space>, ConstMatrix<float, Space>,  \
                                               ConstMatrix<float, Space>, ConstMatrix<int32_t, Space>,             \
                                               ConstMatrix<int32_t, Space>, int64_t, Matrix<float, Space>,          \
                                               Matrix<float, Space>);                                               \
  template absl::Status DispatchBackward<Space>(const Space&, ConstMatrix<float, Space>, ConstMatrix<int32_t, Space>, \
                                                ConstMatrix<int32_t, Space>, int64_t, Matrix<float, Space>);          \
  template absl::Status RouterLossBackward<Space>(const Space&, ConstMatrix<float, Space>, ConstMatrix<int32_t, Space>, \
                                                  ConstMatrix<float, Space>, double, double, double,                  \
                                                  Matrix<float, Space>, Kokkos::View<double*, typename Space::memory_space>);
OPENMOE_FOR_EACH_EXECUTION_SPACE(OPENMOE_INSTANTIATE_BACKWARD)

}  // namespace openmoe::kernels

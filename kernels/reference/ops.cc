#include "kernels/reference/ops.h"

#include <algorithm>
#include <cmath>

namespace openmoe::kernels::reference {

std::vector<double> MatMul(const std::vector<float>& x, const std::vector<float>& w, int64_t M,
                           int64_t K, int64_t N, bool w_is_out_in) {
  std::vector<double> y(M * N, 0.0);
  for (int64_t m = 0; m < M; ++m)
    for (int64_t n = 0; n < N; ++n) {
      double acc = 0;
      for (int64_t k = 0; k < K; ++k) acc += double(x[m * K + k]) * double(w_is_out_in ? w[n * K + k] : w[k * N + n]);
      y[m * N + n] = acc;
    }
  return y;
}

std::vector<double> Rope(const std::vector<double>& x, int64_t B, int64_t S, int64_t width,
                         int64_t head_dim, int64_t offset) {
  std::vector<double> y = x;
  const int64_t half = head_dim / 2;
  for (int64_t b = 0; b < B; ++b)
    for (int64_t s = 0; s < S; ++s)
      for (int64_t head = 0; head < width / head_dim; ++head)
        for (int64_t d = 0; d < head_dim; ++d) {
          const double angle = double(offset + s) * std::pow(10000.0, -2.0 * double(d % half) / double(head_dim));
          const int64_t base = (b * S + s) * width + head * head_dim;
          const double rotated = d < half ? -x[base + d + half] : x[base + d - half];
          y[base + d] = x[base + d] * std::cos(angle) + rotated * std::sin(angle);
        }
  return y;
}

std::vector<double> Attention(const std::vector<double>& q, const std::vector<double>& k,
                              const std::vector<double>& v, const std::vector<int64_t>& key_mask,
                              int64_t B, int64_t Sq, int64_t Sk, int64_t Nh, int64_t Nkv,
                              int64_t Dh, int64_t q_offset) {
  std::vector<double> out(B * Sq * Nh * Dh, 0.0);
  for (int64_t b = 0; b < B; ++b)
    for (int64_t s = 0; s < Sq; ++s)
      for (int64_t h = 0; h < Nh; ++h) {
        const int64_t kvh = h / (Nh / Nkv);
        std::vector<double> scores(Sk, -INFINITY);
        double max_score = -INFINITY;
        for (int64_t j = 0; j < Sk; ++j) {
          const bool visible = j <= q_offset + s && (j == 0 || key_mask[b * Sk + j] != 0);
          if (!visible) continue;
          double dot = 0;
          for (int64_t d = 0; d < Dh; ++d)
            dot += q[((b * Sq + s) * Nh + h) * Dh + d] * k[((b * Sk + j) * Nkv + kvh) * Dh + d];
          scores[j] = dot;
          max_score = std::max(max_score, dot);
        }
        double sum = 0;
        for (double& sc : scores) sum += (sc = std::isinf(sc) ? 0.0 : std::exp(sc - max_score));
        for (int64_t d = 0; d < Dh; ++d) {
          double acc = 0;
          for (int64_t j = 0; j < Sk; ++j) acc += scores[j] * v[((b * Sk + j) * Nkv + kvh) * Dh + d];
          out[((b * Sq + s) * Nh + h) * Dh + d] = acc / sum;
        }
      }
  return out;
}

Top2Routing RouteTop2(const std::vector<float>& logits, int64_t T, int64_t E) {
  Top2Routing r;
  r.probs.resize(T * E);
  r.expert.resize(T * 2);
  r.rank.resize(T * 2);
  for (int64_t t = 0; t < T; ++t) {
    double max_logit = -INFINITY, sum = 0;
    for (int64_t e = 0; e < E; ++e) max_logit = std::max(max_logit, double(logits[t * E + e]));
    for (int64_t e = 0; e < E; ++e) sum += (r.probs[t * E + e] = std::exp(double(logits[t * E + e]) - max_logit));
    for (int64_t e = 0; e < E; ++e) r.probs[t * E + e] /= sum;
    int32_t best = 0;
    for (int64_t e = 1; e < E; ++e) if (r.probs[t * E + e] > r.probs[t * E + best]) best = int32_t(e);
    int32_t second = -1;
    for (int64_t e = 0; e < E; ++e)
      if (e != best && (second < 0 || r.probs[t * E + e] > r.probs[t * E + second])) second = int32_t(e);
    r.expert[t * 2] = best, r.expert[t * 2 + 1] = second;
  }
  std::vector<int32_t> top1_count(E, 0), top2_count(E, 0);
  for (int64_t t = 0; t < T; ++t) r.rank[t * 2] = top1_count[r.expert[t * 2]]++;
  for (int64_t t = 0; t < T; ++t) {
    const int32_t e = r.expert[t * 2 + 1];
    r.rank[t * 2 + 1] = top1_count[e] + top2_count[e]++;
  }
  return r;
}

LmLossRow LmLoss(const float* logits, int64_t V, int64_t label, double ls, double z) {
  LmLossRow row;
  row.grad.resize(V);
  row.softmax.resize(V);
  double max_logit = -INFINITY;
  for (int64_t v = 0; v < V; ++v) max_logit = std::max(max_logit, double(logits[v]));
  double sum = 0;
  for (int64_t v = 0; v < V; ++v) sum += std::exp(double(logits[v]) - max_logit);
  const double log_z = max_logit + std::log(sum);
  const double off = ls / double(V - 1);
  double cross = 0;  // sum_v target_v log_softmax_v
  for (int64_t v = 0; v < V; ++v) {
    const double log_softmax = double(logits[v]) - log_z, target = v == label ? 1 - ls : off;
    cross += target * log_softmax;
    row.softmax[v] = std::exp(log_softmax);
    row.grad[v] = row.softmax[v] * (1 + 2 * z * log_z) - target;
  }
  const double constant = -((1 - ls) * std::log(1 - ls) + ls * std::log(off + 1e-20));
  row.loss = -cross + z * log_z * log_z - constant;
  return row;
}

}  // namespace openmoe::kernels::reference

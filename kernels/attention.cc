#include "kernels/attention.h"

#include <algorithm>
#include <cfloat>

#include "absl/strings/str_cat.h"
#include "kernels/attention_gemm.h"
#include "kernels/instantiate.h"
#include "kernels/launch.h"
#include "kernels/layer_math.h"
#include "kernels/scratch.h"

namespace openmoe::kernels {

namespace {


// Decode attention with few queries (B * Sq * Nh teams cannot fill a GPU): the keys are split
// in chunks of kSplitKeys, one team per (query, head, chunk) computes its chunk's max score, sum
// of exponentials and exp-weighted sum of values; the chunks are then merged
// (flash-decoding); the last team of a query to finish does the merge. Same maths as the
// one-pass kernel, regrouped sums. Rows of q, k and v are
// read as 16-byte packs: kLanes lanes per key for the dot products, (pack, key slice) units for
// the P.V sum, so that every thread issues only a few independent vector loads.
constexpr int64_t kSplitKeys = 32;    // keys per team (64 and 128 measured the same on the H200)
constexpr int64_t kTeamThreads = 32;  // team threads (x kLanes lanes)
constexpr int kLanes = 8;           // vector lanes per team thread

// Whether SplitKeyAttention can read these rows as packs (16-byte aligned rows of head_dim).
template <class T>
bool SplitKeyShapesFit(const T* q, const T* k, const T* v, int64_t head_dim) {
  const int64_t packs = head_dim / Pack<T>::kSize;
  return head_dim % Pack<T>::kSize == 0 && packs <= kTeamThreads * kLanes && (kTeamThreads * kLanes) % packs == 0 &&
         IsPackAligned(q, head_dim) && IsPackAligned(k, head_dim) && IsPackAligned(v, head_dim);
}

uint64_t scratch_generation = 0;  // see AttentionScratchGeneration

struct SplitTag;     // partial results [queries, chunks, Dh + 2]
struct FinishedTag;  // per-query count of finished chunk teams; zero between calls (the merging
                     // team resets its entry)

template <class T, class ExecSpace>
void SplitKeyAttention(const ExecSpace& space, Tensor3<const T, ExecSpace> q, Tensor3<const T, ExecSpace> k,
                       Tensor3<const T, ExecSpace> v,
                       Kokkos::View<const int64_t**, Kokkos::LayoutRight, typename ExecSpace::memory_space> key_mask,
                       int64_t num_heads, int64_t group, int64_t head_dim, int64_t num_keys, int64_t q_offset,
                       Tensor3<T, ExecSpace> out, const int64_t* device_offset) {
  using Policy  = Kokkos::TeamPolicy<ExecSpace>;
  using Member  = typename Policy::member_type;
  using Scratch = Kokkos::View<float*, typename ExecSpace::scratch_memory_space, Kokkos::MemoryTraits<Kokkos::Unmanaged>>;
  using P       = Pack<T>;
  constexpr float kMasked = -FLT_MAX;
  const int64_t Sq = q.extent(1), queries = q.extent(0) * Sq * num_heads;
  const int64_t chunks = (num_keys + kSplitKeys - 1) / kSplitKeys, width = head_dim + 2;
  const int64_t packs  = head_dim / P::kSize;             // 16-byte packs per head row
  const int64_t slices = kTeamThreads * kLanes / packs;   // key slices of the P.V sum
  using MemSpace = typename ExecSpace::memory_space;
  bool grew_partial = false, grew_finished = false;
  auto partial  = GrowingScratch<SplitTag, float, MemSpace>("attention.split", size_t(queries * chunks * width), false, &grew_partial);
  auto finished = GrowingScratch<FinishedTag, int, MemSpace>("attention.finished", size_t(queries), true, &grew_finished);
  if (grew_partial || grew_finished) ++scratch_generation;
  const int64_t scratch_floats = std::max(kSplitKeys + slices * head_dim, 2 * chunks);
  Policy split(space, queries * chunks, kTeamThreads, kLanes);
  split.set_scratch_size(0, Kokkos::PerTeam(Scratch::shmem_size(scratch_floats)));
  Kokkos::parallel_for(
      "openmoe::kernels::SplitKeyAttention", split, KOKKOS_LAMBDA(const Member& team) {
        const int64_t chunk = team.league_rank() % chunks, idx = team.league_rank() / chunks;
        const int64_t head = idx % num_heads, s = (idx / num_heads) % Sq, b = idx / (num_heads * Sq);
        const int64_t q_col = head * head_dim, kv_col = (head / group) * head_dim;
        const int64_t keys     = device_offset != nullptr ? *device_offset + Sq : num_keys;
        const int64_t position = (device_offset != nullptr ? *device_offset : q_offset) + s;
        const int64_t j0 = chunk * kSplitKeys;
        int64_t j1 = j0 + kSplitKeys;
        if (j1 > keys) j1 = keys;
        if (j1 > position + 1) j1 = position + 1;  // causal
        float* result = partial.data() + (idx * chunks + chunk) * width;  // [max, sum, acc(Dh)]
        Scratch scratch(team.team_scratch(0), scratch_floats);
        float* scores = scratch.data();               // [kSplitKeys], then probabilities
        float* sums   = scratch.data() + kSplitKeys;  // [slices, Dh]
        const P* q_row = reinterpret_cast<const P*>(&q(b, s, q_col));
        Kokkos::parallel_for(Kokkos::TeamThreadRange(team, kSplitKeys), [&](const int64_t i) {
          const int64_t j = j0 + i;
          float dot = kMasked;
          if (j < j1) {  // the mask is applied after the dot product, so both loads overlap
            const bool visible = j == 0 || key_mask(b, j) != 0;
            const P* k_row = reinterpret_cast<const P*>(&k(b, j, kv_col));
            Kokkos::parallel_reduce(
                Kokkos::ThreadVectorRange(team, packs),
                [&](const int64_t p, float& partial_dot) {
                  const P kp = k_row[p], qp = q_row[p];
                  for (int e = 0; e < P::kSize; ++e) partial_dot += ToFloat(qp.v[e]) * ToFloat(kp.v[e]);
                },
                dot);  // no 1/sqrt(Dh): OpenMoE folds the scale into Wq
            if (!visible) dot = kMasked;
          }
          Kokkos::single(Kokkos::PerThread(team), [&]() { scores[i] = dot; });
        });
        team.team_barrier();
        float m = kMasked;
        for (int64_t i = 0; i < kSplitKeys; ++i) m = scores[i] > m ? scores[i] : m;
        team.team_barrier();  // every thread has its max before the scores become probabilities
        Kokkos::parallel_for(Kokkos::TeamThreadRange(team, kSplitKeys), [&](const int64_t i) {
          Kokkos::single(Kokkos::PerThread(team), [&]() {
            scores[i] = scores[i] == kMasked ? 0.0f : Kokkos::Experimental::exp(scores[i] - m);
          });
        });
        team.team_barrier();
        float l = 0.0f;
        for (int64_t i = 0; i < kSplitKeys; ++i) l += scores[i];
        // P.V: unit (slice, pack) sums keys slice, slice + slices, ... of one 16-byte column pack.
        Kokkos::parallel_for(Kokkos::TeamThreadRange(team, kTeamThreads), [&](const int64_t g) {
          Kokkos::parallel_for(Kokkos::ThreadVectorRange(team, kLanes), [&](const int64_t lane) {
            const int64_t unit = g * kLanes + lane, p = unit % packs, slice = unit / packs;
            float acc[P::kSize];
            for (int e = 0; e < P::kSize; ++e) acc[e] = 0.0f;
            for (int64_t i = slice; i < kSplitKeys && j0 + i < j1; i += slices) {
              const P vp = reinterpret_cast<const P*>(&v(b, j0 + i, kv_col))[p];
              for (int e = 0; e < P::kSize; ++e) acc[e] += scores[i] * ToFloat(vp.v[e]);
            }
            for (int e = 0; e < P::kSize; ++e) sums[slice * head_dim + p * P::kSize + e] = acc[e];
          });
        });
        team.team_barrier();
        Kokkos::parallel_for(Kokkos::TeamVectorRange(team, head_dim), [&](const int64_t d) {
          float acc = 0.0f;
          for (int64_t slice = 0; slice < slices; ++slice) acc += sums[slice * head_dim + d];
          result[2 + d] = acc;
        });
        Kokkos::single(Kokkos::PerTeam(team), [&]() { result[0] = m, result[1] = l; });

        // The last team of this query to finish merges all its chunks (no second kernel): every
        // thread publishes its writes, one thread counts the team in, the count is broadcast.
        Kokkos::memory_fence();
        team.team_barrier();
        int last = 0;
        Kokkos::single(
            Kokkos::PerTeam(team),
            [&](int& is_last) { is_last = Kokkos::atomic_fetch_add(&finished(idx), 1) == int(chunks) - 1; }, last);
        if (!last) return;
        Kokkos::memory_fence();
        // Chunk weights exp(m_c - M) (0 for chunks without a visible key), then the weighted sums.
        // The chunks' (max, sum) pairs are first loaded in parallel into shared memory: the
        // serial loops below then read no global memory.
        const float* base = partial.data() + idx * chunks * width;  // other teams' writes, fenced
        float* chunk_max = scratch.data();               // [chunks] (the scores area is free again)
        float* weight    = scratch.data() + chunks;      // [chunks]
        Kokkos::parallel_for(Kokkos::TeamVectorRange(team, chunks), [&](const int64_t c) {
          const float chunk_l = base[c * width + 1];
          chunk_max[c] = chunk_l > 0.0f ? base[c * width] : kMasked;
          weight[c]    = chunk_l;
        });
        team.team_barrier();
        float max_all = kMasked;
        for (int64_t c = 0; c < chunks; ++c) max_all = chunk_max[c] > max_all ? chunk_max[c] : max_all;
        float l_all = 0.0f;
        for (int64_t c = 0; c < chunks; ++c)
          if (weight[c] > 0.0f) l_all += weight[c] * Kokkos::Experimental::exp(chunk_max[c] - max_all);
        team.team_barrier();  // every thread has read weight[] as sums before it becomes factors
        Kokkos::parallel_for(Kokkos::TeamVectorRange(team, chunks), [&](const int64_t c) {
          weight[c] = weight[c] > 0.0f ? Kokkos::Experimental::exp(chunk_max[c] - max_all) / l_all : 0.0f;
        });
        team.team_barrier();
        Kokkos::parallel_for(Kokkos::TeamVectorRange(team, head_dim), [&](const int64_t d) {
          float acc = 0.0f;
          for (int64_t c = 0; c < chunks; ++c) acc += weight[c] * base[c * width + 2 + d];
          out(b, s, head * head_dim + d) = FromFloat<T>(acc);
        });
        Kokkos::single(Kokkos::PerTeam(team), [&]() { finished(idx) = 0; });  // ready for the next call
      });
}

}  // namespace


template <class T, class ExecSpace>
absl::Status ApplyRope(const ExecSpace& space, Tensor3<T, ExecSpace> x, int64_t head_dim,
                       int64_t position_offset, bool inverse) {
  const int64_t B = x.extent(0), S = x.extent(1), width = x.extent(2);
  if (head_dim <= 0 || head_dim % 2 != 0 || width % head_dim != 0) {
    return absl::InvalidArgumentError(absl::StrCat("ApplyRope: '", x.label(), "' width ", width,
                                                   " is not a multiple of an even head_dim ", head_dim));
  }
  const int64_t half = head_dim / 2, pairs = width / 2;  // (head, j) pairs per row
  Kokkos::parallel_for(
      "openmoe::kernels::ApplyRope",
      FlatRange(space, B * S * pairs), KOKKOS_LAMBDA(const int64_t idx) {
        const int64_t pair = idx % pairs, s = (idx / pairs) % S, b = idx / (pairs * S);
        const int64_t head = pair / half, j = pair % half;
        const int64_t lo = head * head_dim + j, hi = lo + half;
        float c, sn;
        RopeCosSin(position_offset + s, j, head_dim, c, sn);
        if (inverse) sn = -sn;
        const float x_lo = ToFloat(x(b, s, lo)), x_hi = ToFloat(x(b, s, hi));
        x(b, s, lo) = FromFloat<T>(x_lo * c - x_hi * sn);
        x(b, s, hi) = FromFloat<T>(x_hi * c + x_lo * sn);
      });
  return absl::OkStatus();
}

template <class T, class ExecSpace>
absl::Status RopeAndAppend(const ExecSpace& space, Tensor3<const T, ExecSpace> qkv, int64_t head_dim,
                           int64_t kv_width, int64_t offset, Tensor3<T, ExecSpace> q_out,
                           Tensor3<T, ExecSpace> k_cache, Tensor3<T, ExecSpace> v_cache,
                           const int64_t* device_offset) {
  const int64_t B = qkv.extent(0), S = qkv.extent(1), q_width = q_out.extent(2);
  if (head_dim <= 0 || head_dim % 2 != 0 || q_width % head_dim != 0 || kv_width % head_dim != 0 ||
      qkv.extent(2) != size_t(q_width + 2 * kv_width)) {
    return absl::InvalidArgumentError(absl::StrCat("RopeAndAppend: qkv width ", qkv.extent(2), " is not ",
                                                   q_width, " + 2 x ", kv_width, " in multiples of an even head_dim ",
                                                   head_dim));
  }
  if (q_out.extent(0) != size_t(B) || q_out.extent(1) != size_t(S) || k_cache.extent(0) != size_t(B) ||
      v_cache.extent(0) != size_t(B) || k_cache.extent(2) != size_t(kv_width) ||
      v_cache.extent(2) != size_t(kv_width) || k_cache.extent(1) < size_t(offset + S) ||
      v_cache.extent(1) < size_t(offset + S)) {
    return absl::InvalidArgumentError(absl::StrCat("RopeAndAppend: q_out or the caches do not fit [", B, ", ", S,
                                                   "] new columns from column ", offset));
  }
  const int64_t half = head_dim / 2, q_pairs = q_width / 2, kv_pairs = kv_width / 2;
  const int64_t pairs = q_pairs > kv_pairs ? q_pairs : kv_pairs;
  Kokkos::parallel_for(
      "openmoe::kernels::RopeAndAppend",
      FlatRange(space, B * S * pairs), KOKKOS_LAMBDA(const int64_t idx) {
        const int64_t pair = idx % pairs, s = (idx / pairs) % S, b = idx / (pairs * S);
        const int64_t head = pair / half, j = pair % half;
        const int64_t lo = head * head_dim + j, hi = lo + half;
        const int64_t column = offset + (device_offset != nullptr ? *device_offset : 0) + s;
        float c, sn;
        RopeCosSin(column, j, head_dim, c, sn);
        if (pair < q_pairs) {
          const float x_lo = ToFloat(qkv(b, s, lo)), x_hi = ToFloat(qkv(b, s, hi));
          q_out(b, s, lo) = FromFloat<T>(x_lo * c - x_hi * sn);
          q_out(b, s, hi) = FromFloat<T>(x_hi * c + x_lo * sn);
        }
        if (pair < kv_pairs) {
          const int64_t k0 = q_width, v0 = q_width + kv_width;
          const float x_lo = ToFloat(qkv(b, s, k0 + lo)), x_hi = ToFloat(qkv(b, s, k0 + hi));
          k_cache(b, column, lo) = FromFloat<T>(x_lo * c - x_hi * sn);
          k_cache(b, column, hi) = FromFloat<T>(x_hi * c + x_lo * sn);
          v_cache(b, column, lo) = qkv(b, s, v0 + lo);
          v_cache(b, column, hi) = qkv(b, s, v0 + hi);
        }
      });
  return absl::OkStatus();
}

template <class T, class ExecSpace>
absl::Status CausalAttention(const ExecSpace& space, Tensor3<const T, ExecSpace> q,
                             Tensor3<const T, ExecSpace> k, Tensor3<const T, ExecSpace> v,
                             Kokkos::View<const int64_t**, Kokkos::LayoutRight,
                                          typename ExecSpace::memory_space> key_mask,
                             int64_t num_heads, int64_t num_kv_heads, int64_t head_dim,
                             int64_t num_keys, int64_t q_offset, Tensor3<T, ExecSpace> out,
                             const int64_t* device_offset) {
  const int64_t B = q.extent(0), Sq = q.extent(1);
  if (q.extent(2) != size_t(num_heads * head_dim) || out.extent(2) != q.extent(2) ||
      out.extent(0) != size_t(B) || out.extent(1) != size_t(Sq)) {
    return absl::InvalidArgumentError(absl::StrCat("CausalAttention: q '", q.label(), "' / out '",
                                                   out.label(), "' must be [B, Sq, ", num_heads * head_dim, "]"));
  }
  if (k.extent(2) != size_t(num_kv_heads * head_dim) || v.extent(2) != k.extent(2) ||
      k.extent(0) != size_t(B) || v.extent(0) != size_t(B) || k.extent(1) < size_t(num_keys) ||
      v.extent(1) < size_t(num_keys) || key_mask.extent(0) != size_t(B) ||
      key_mask.extent(1) < size_t(num_keys)) {
    return absl::InvalidArgumentError(absl::StrCat("CausalAttention: k '", k.label(), "', v '", v.label(),
                                                   "' or key_mask do not fit [B, >=", num_keys, ", ",
                                                   num_kv_heads * head_dim, "]"));
  }
  if (num_kv_heads <= 0 || num_heads % num_kv_heads != 0) {
    return absl::InvalidArgumentError("CausalAttention: num_kv_heads must divide num_heads");
  }
  if (B == 0 || Sq == 0 || num_keys == 0) return absl::OkStatus();
  if (device_offset == nullptr && UseGemmAttention<ExecSpace>(Sq)) {  // prefill, training (attention_gemm.h)
    return GemmAttention<T, ExecSpace>(space, q, k, v, key_mask, num_heads, num_kv_heads, head_dim, num_keys,
                                       q_offset, out);
  }
  const int64_t group = num_heads / num_kv_heads;
  constexpr float kMasked = -FLT_MAX;
  constexpr bool kOnHostSpace =
      Kokkos::SpaceAccessibility<Kokkos::HostSpace, typename ExecSpace::memory_space>::accessible;
  if (!kOnHostSpace && B * Sq * num_heads < 1024 && num_keys > 2 * kSplitKeys &&
      SplitKeyShapesFit(q.data(), k.data(), v.data(), head_dim)) {
    SplitKeyAttention<T, ExecSpace>(space, q, k, v, key_mask, num_heads, group, head_dim, num_keys, q_offset, out,
                                    device_offset);
    return absl::OkStatus();
  }

  using Policy  = Kokkos::TeamPolicy<ExecSpace>;
  using Member  = typename Policy::member_type;
  using Scratch = Kokkos::View<float*, typename ExecSpace::scratch_memory_space,
                               Kokkos::MemoryTraits<Kokkos::Unmanaged>>;
  // Team threads on GPUs (x 32 lanes): wide teams when there are few (decode: B * Nh teams, so
  // latency hiding needs width), narrow ones when there are many (prefill). Each thread sums P.V
  // over every gpu_threads-th key.
  constexpr int kMaxGpuThreads = 32;
  const int64_t league         = B * Sq * num_heads;
  const int gpu_threads        = league < 2048 ? 32 : 8;
  const size_t scratch_bytes = Scratch::shmem_size(num_keys + kMaxGpuThreads * head_dim);
  // One team per (row, query, head). Vector lanes split head_dim, so that a key's dot product and
  // the P.V sum read contiguous memory (coalesced on GPUs); team threads split the keys.
  // Host backends: Kokkos' choice of team size with one lane.
  constexpr bool kOnHost =
      Kokkos::SpaceAccessibility<Kokkos::HostSpace, typename ExecSpace::memory_space>::accessible;
  Policy policy = kOnHost ? Policy(space, league, Kokkos::AUTO, 1) : Policy(space, league, gpu_threads, 32);
  policy.set_scratch_size(0, Kokkos::PerTeam(scratch_bytes));
  Kokkos::parallel_for(
      "openmoe::kernels::CausalAttention", policy, KOKKOS_LAMBDA(const Member& team) {
        const int64_t idx = team.league_rank();
        const int64_t head = idx % num_heads, s = (idx / num_heads) % Sq, b = idx / (num_heads * Sq);
        const int64_t kv_head = head / group;
        const int64_t q_col = head * head_dim, kv_col = kv_head * head_dim;
        const int64_t keys     = device_offset != nullptr ? *device_offset + Sq : num_keys;
        const int64_t position = (device_offset != nullptr ? *device_offset : q_offset) + s;
        const int64_t last = position < keys - 1 ? position : keys - 1;  // causal
        Scratch scratch(team.team_scratch(0), num_keys + kMaxGpuThreads * head_dim);
        float* scores_data  = scratch.data();             // [keys]
        float* partial_data = scratch.data() + num_keys;  // [threads, Dh] (GPU path)
        Scratch scores(scores_data, num_keys);

        Kokkos::parallel_for(Kokkos::TeamThreadRange(team, last + 1), [&](const int64_t j) {
          float dot = kMasked;
          if (j == 0 || key_mask(b, j) != 0) {
            Kokkos::parallel_reduce(
                Kokkos::ThreadVectorRange(team, head_dim),
                [&](const int64_t d, float& partial) {
                  partial += ToFloat(q(b, s, q_col + d)) * ToFloat(k(b, j, kv_col + d));
                },
                dot);  // no 1/sqrt(Dh): OpenMoE folds the scale into Wq
          }
          Kokkos::single(Kokkos::PerThread(team), [&]() { scores(j) = dot; });
        });
        team.team_barrier();
        float max_score = kMasked;
        Kokkos::parallel_reduce(
            Kokkos::TeamThreadRange(team, last + 1),
            [&](const int64_t j, float& m) { m = scores(j) > m ? scores(j) : m; },
            Kokkos::Max<float>(max_score));
        team.team_barrier();
        float sum = 0.0f;
        Kokkos::parallel_reduce(
            Kokkos::TeamThreadRange(team, last + 1),
            [&](const int64_t j, float& partial) {
              const float p = scores(j) == kMasked ? 0.0f : Kokkos::Experimental::exp(scores(j) - max_score);
              partial += p;
            },
            sum);
        team.team_barrier();
        Kokkos::parallel_for(Kokkos::TeamThreadRange(team, last + 1), [&](const int64_t j) {
          Kokkos::single(Kokkos::PerThread(team), [&]() {
            scores(j) = scores(j) == kMasked ? 0.0f : Kokkos::Experimental::exp(scores(j) - max_score);
          });
        });
        team.team_barrier();
        const float inv_sum = 1.0f / sum;
        if (kOnHost) {  // compile-time constant; nvcc forbids captures under if constexpr
          Kokkos::parallel_for(Kokkos::TeamVectorRange(team, head_dim), [&](const int64_t d) {
            float acc = 0.0f;
            for (int64_t j = 0; j <= last; ++j) acc += scores(j) * ToFloat(v(b, j, kv_col + d));
            out(b, s, q_col + d) = FromFloat<T>(acc * inv_sum);
          });
        } else {
          // Threads split the keys, lanes split head_dim (coalesced rows of v); then a sum over
          // the threads' partial results.
          Kokkos::parallel_for(Kokkos::TeamThreadRange(team, gpu_threads), [&](const int t) {
            Kokkos::parallel_for(Kokkos::ThreadVectorRange(team, head_dim), [&](const int64_t d) {
              float acc = 0.0f;
              for (int64_t j = t; j <= last; j += gpu_threads) acc += scores(j) * ToFloat(v(b, j, kv_col + d));
              partial_data[t * head_dim + d] = acc;
            });
          });
          team.team_barrier();
          Kokkos::parallel_for(Kokkos::TeamVectorRange(team, head_dim), [&](const int64_t d) {
            float acc = 0.0f;
            for (int t = 0; t < gpu_threads; ++t) acc += partial_data[t * head_dim + d];
            out(b, s, q_col + d) = FromFloat<T>(acc * inv_sum);
          });
        }
      });
  return absl::OkStatus();
}

uint64_t AttentionScratchGeneration() { return scratch_generation; }

#define OPENMOE_INSTANTIATE_ATTENTION(Space, T)                                                 \
  template absl::Status ApplyRope<T, Space>(const Space&, Tensor3<T, Space>, int64_t, int64_t, bool); \
  template absl::Status RopeAndAppend<T, Space>(const Space&, Tensor3<const T, Space>, int64_t, int64_t, \
                                                int64_t, Tensor3<T, Space>, Tensor3<T, Space>,          \
                                                Tensor3<T, Space>, const int64_t*);                     \
  template absl::Status CausalAttention<T, Space>(                                              \
      const Space&, Tensor3<const T, Space>, Tensor3<const T, Space>, Tensor3<const T, Space>,  \
      Kokkos::View<const int64_t**, Kokkos::LayoutRight, typename Space::memory_space>,         \
      int64_t, int64_t, int64_t, int64_t, int64_t, Tensor3<T, Space>, const int64_t*);
OPENMOE_FOR_EACH_SPACE_AND_KERNEL_DTYPE(OPENMOE_INSTANTIATE_ATTENTION)

}  // namespace openmoe::kernels

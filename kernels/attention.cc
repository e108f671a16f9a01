#include "kernels/attention.h"

#include <algorithm>
#include <cfloat>
#include <map>
#include <string>

#include "absl/strings/str_cat.h"
#include "kernels/attention_gemm.h"
#include "kernels/block_split_attention.h"
#include "kernels/instantiate.h"
#include "kernels/launch.h"
#include "kernels/layer_math.h"

namespace openmoe::kernels {

namespace {


// Decode attention with few queries (B * Sq * Nh teams cannot fill a GPU), CUDA only: the keys
// are split in chunks of kKeys (16 or 32), one warp per (query, head, chunk) computes its chunk's max
// score, sum of exponentials and exp-weighted sum of values; the last warp of a query to finish
// merges the chunks (flash-decoding, one kernel). Same maths as the one-pass kernel, regrouped
// sums. Every lane issues all of its loads (k, v and mask) before it uses any of them, so a
// warp waits for memory once; lanes exchange partial results by shuffles, not shared memory.
// Lane -> column pack lane % kPacks of keys slice, slice + kSlices, ... (slice = lane / kPacks)
// of the chunk, in the dot products and the P.V sums alike.
constexpr int kWarpKeys = 16;                // keys per warp, by default
constexpr int kWideWarpKeys = 32;            // keys per warp when few chunks would not fill the GPU (UseWideSplitKeyChunks)
constexpr int64_t kPartialHeader = 4;        // [max, sum, -, -] before the Dh sums (16-byte aligned)

// Whether SplitKeyAttention can read these rows as packs: 16-byte aligned rows whose head_dim
// is 2..32 packs, a power of two (so that lanes split it evenly).
template <class T>
bool SplitKeyShapesFit(const T* q, const T* k, const T* v, int64_t head_dim) {
  const int64_t packs = head_dim / Pack<T>::kSize;
  return head_dim % Pack<T>::kSize == 0 && (packs == 2 || packs == 4 || packs == 8 || packs == 16 || packs == 32) &&
         IsPackAligned(q, head_dim) && IsPackAligned(k, head_dim) && IsPackAligned(v, head_dim);
}


// Whether the decode kernel gives each warp kWideWarpKeys keys instead of kWarpKeys: when 16-key
// chunks would not fill one wave of warps (batch 1), so the GPU has room for the longer warps and
// each warp's fixed costs (index math, q rotation, fence, count) are shared by twice the keys.
// With more chunks (batch 16) the 32-key kernel is slower: it needs 255 registers and spills,
// so fewer warps fit per SM (H200, 8B shapes, 512 context: 12.3 vs 13.3 us per layer at batch 1,
// 57.1 vs 55.2 us at batch 16; benchmarks/RESULTS.md). kResidentWarpsPerSm: what the 16-key
// kernel's ~170 registers per thread allow on an H100/H200 SM.
template <class ExecSpace>
bool UseWideSplitKeyChunks(const ExecutionContext<ExecSpace>& ctx, int64_t queries, int64_t num_keys) {
  const auto& space = ctx.space();
  const int warp_keys = ctx.tuning().split_key_warp_keys;
  if (warp_keys == kWarpKeys || warp_keys == kWideWarpKeys) return warp_keys == kWideWarpKeys;
  constexpr int64_t kResidentWarpsPerSm = 11, kThreadsPerSm = 2048;
  const int64_t sms = std::max<int64_t>(1, space.concurrency() / kThreadsPerSm);
  return queries * ((num_keys + kWarpKeys - 1) / kWarpKeys) < sms * kResidentWarpsPerSm;
}


using internal::SplitKeySource;

template <int kPacks, int kKeys, bool kFused, class T, class ExecSpace>
void SplitKeyAttention(const ExecutionContext<ExecSpace>& ctx, SplitKeySource<T> source, int64_t batch, int64_t Sq,
                       Tensor3<const T, ExecSpace> k, Tensor3<const T, ExecSpace> v,
                       Kokkos::View<const int64_t**, Kokkos::LayoutRight, typename ExecSpace::memory_space> key_mask,
                       int64_t num_heads, int64_t group, int64_t head_dim, int64_t num_keys, int64_t q_offset,
                       Tensor3<T, ExecSpace> out, const int64_t* device_offset) {
  const auto& space = ctx.space();
  using Policy  = Kokkos::TeamPolicy<ExecSpace>;
  using Member  = typename Policy::member_type;
  using P       = Pack<T>;
  using Scratch = Kokkos::View<P*, typename ExecSpace::scratch_memory_space, Kokkos::MemoryTraits<Kokkos::Unmanaged>>;
  constexpr float kMasked    = -FLT_MAX;
  constexpr int kSlices      = 32 / kPacks;            // key slices of the P.V sums
  constexpr int kSliceKeys   = kKeys / kSlices;        // k and v rows per lane
  const int64_t queries = batch * Sq * num_heads;
  const int64_t chunks = (num_keys + kKeys - 1) / kKeys, width = kPartialHeader + head_dim;
  const int64_t q_width = num_heads * head_dim, kv_width = k.extent(2);
  // (A growth of either buffer bumps ctx.scratch_generation(): captured graphs point at them.)
  auto partial  = ctx.template Scratch<float>("attention.split", size_t(queries * chunks * width));
  auto finished = ctx.template Scratch<int>("attention.finished", size_t(queries), /*zeroed=*/true);
  // Teams of `warps` independent warps, one chunk each (tuning().split_key_team_warps).
  const int warps = std::clamp(ctx.tuning().split_key_team_warps, 1, 16);
  const int64_t units = queries * chunks, scratch_packs = kFused ? 2 * kPacks : 1;
  Policy policy(space, (units + warps - 1) / warps, warps, 32);
  // Fused mode: [q | new key] rotated per warp, as 16-byte aligned packs (+16 bytes for the alignment).
  policy.set_scratch_size(0, Kokkos::PerTeam(Scratch::shmem_size(warps * scratch_packs) + 16));
  DependentParallelFor(
      "openmoe::kernels::SplitKeyAttention", policy, KOKKOS_LAMBDA(const Member& team) {
        Scratch team_packs(team.team_scratch(0), warps * scratch_packs);
        Kokkos::parallel_for(Kokkos::TeamThreadRange(team, warps), [&](const int warp) {
          const int64_t unit = team.league_rank() * warps + warp;
          if (unit >= units) return;
          // 32-bit index arithmetic (a 64-bit division is ~4x the instructions, and this kernel is
          // bound by the instruction latency of its few warps; units < 2^31 by the caller's check).
          const int unit32 = int(unit), chunks32 = int(chunks), heads32 = int(num_heads), Sq32 = int(Sq);
          const int64_t chunk = unit32 % chunks32, idx = unit32 / chunks32;
          const int idx32 = int(idx), head32 = idx32 % heads32;
          const int64_t head = head32, s = (idx32 / heads32) % Sq32, b = idx32 / (heads32 * Sq32);
          const int64_t q_col = head * head_dim, kv_col = int64_t(head32 / int(group)) * head_dim;
          // Key positions in 32 bits too (num_keys < 2^30 by the caller's check); row addresses from
          // per-row base pointers, so that each load costs one 32 x 32 -> 64-bit multiply-add
          // rather than a View's 64-bit index arithmetic.
          const int keys     = int(device_offset != nullptr ? *device_offset + Sq : num_keys);
          const int position = int((device_offset != nullptr ? *device_offset : q_offset) + s);
          const int end      = keys < position + 1 ? keys : position + 1;  // causal: keys [0, end)
          const int active   = (end + kKeys - 1) / kKeys;                  // chunks with keys
          if (chunk >= active) return;
          const int j0 = int(chunk) * kKeys;
          const T* row = source.q + (b * Sq + s) * source.row_stride;  // q (fused: [q | k | v] raw)
          const int j_new = kFused ? position : -1;                    // the key this step appends
          float* result = partial.data() + (idx * chunks + chunk) * width;  // [max, sum, -, -, acc(Dh)]
          const int kv_stride = int(k.stride(1));  // elements from one key's row to the next (k and v alike)
          const T* k_rows = &k(b, 0, kv_col);      // key j's head slice at k_rows + j * kv_stride
          const T* v_rows = &v(b, 0, kv_col);
          const int64_t* mask_row = &key_mask(b, 0);
          // Fused mode: this warp's [q | new k] rotated.
          auto rotated_packs = Kokkos::subview(team_packs, std::make_pair(warp * scratch_packs, (warp + 1) * scratch_packs));
          T* rotated = reinterpret_cast<T*>(rotated_packs.data());
          Kokkos::parallel_for(Kokkos::ThreadVectorRange(team, 32), [&](const int lane) {
            // All global loads first. Lane (slice, pack) reads column pack `pack` of keys slice,
            // slice + kSlices, ... of the chunk, for the scores (k) and the P.V sums (v) alike: each
            // load instruction of the warp covers whole rows (coalesced).
            const int pack = lane % kPacks, slice = lane / kPacks;
            P kp[kSliceKeys], vp[kSliceKeys];
            int64_t mask_value[kSliceKeys];  // of row jr: loaded for every key, used below for those in the step
            for (int i = 0; i < kSliceKeys; ++i) {
              const int j  = j0 + slice + i * kSlices;
              const int jr = j < end ? j : j0;  // beyond the step: a valid row, masked below
              kp[i] = reinterpret_cast<const P*>(k_rows + int64_t(jr) * kv_stride)[pack];
              const T* v_src = jr == j_new ? row + q_width + kv_width + kv_col : v_rows + int64_t(jr) * kv_stride;
              vp[i] = reinterpret_cast<const P*>(v_src)[pack];
              mask_value[i] = mask_row[jr];
            }
            P qp;
            if (!kFused) qp = reinterpret_cast<const P*>(row + q_col)[pack];
            if (kFused) {
              // Lanes rotate (q, and the new key where this chunk holds it) pair by pair, exactly as
              // RopeAndAppend does, into shared memory; the new key and value also go to the caches.
              // Every load comes first, then the rotations and stores (stores between loads keep
              // the compiler from issuing later loads early: one L2 round trip per load).
              constexpr int kHeadDim = kPacks * P::kSize, kHalf = kHeadDim / 2;
              constexpr int kPairsPerLane = (kHalf + 31) / 32;  // pair d = lane + 32 r
              const float* cos_sin = source.rope_table + position * head_dim;  // [Dh/2, 2]
              const bool holds_new = j_new >= j0 && j_new < j0 + kKeys;
              const T* k_new = row + q_width + kv_col;
              const T* v_new = k_new + kv_width;
              const int64_t cache_offset = &k(b, holds_new ? j_new : 0, kv_col) - k.data();
              float c[kPairsPerLane], sn[kPairsPerLane], q_lo[kPairsPerLane], q_hi[kPairsPerLane];
              float k_lo[kPairsPerLane] = {}, k_hi[kPairsPerLane] = {};
              T v_lo[kPairsPerLane] = {}, v_hi[kPairsPerLane] = {};
              for (int r = 0; r < kPairsPerLane; ++r) {
                const int d = lane + 32 * r < kHalf ? lane + 32 * r : 0;  // lanes beyond Dh/2: unused
                c[r] = cos_sin[2 * d], sn[r] = cos_sin[2 * d + 1];
                q_lo[r] = ToFloat(row[q_col + d]), q_hi[r] = ToFloat(row[q_col + d + kHalf]);
              }
              if (holds_new)
                for (int r = 0; r < kPairsPerLane; ++r) {
                  const int d = lane + 32 * r < kHalf ? lane + 32 * r : 0;
                  k_lo[r] = ToFloat(k_new[d]), k_hi[r] = ToFloat(k_new[d + kHalf]);
                  v_lo[r] = v_new[d], v_hi[r] = v_new[d + kHalf];
                }
              for (int r = 0; r < kPairsPerLane; ++r) {
                const int d = lane + 32 * r;
                if (d >= kHalf) break;
                RotatePair(q_lo[r], q_hi[r], c[r], sn[r], rotated[d], rotated[d + kHalf]);
                if (holds_new) {
                  T lo, hi;
                  RotatePair(k_lo[r], k_hi[r], c[r], sn[r], lo, hi);
                  rotated[kHeadDim + d] = lo, rotated[kHeadDim + d + kHalf] = hi;
                  source.k_cache[cache_offset + d] = lo, source.k_cache[cache_offset + d + kHalf] = hi;
                  source.v_cache[cache_offset + d] = v_lo[r], source.v_cache[cache_offset + d + kHalf] = v_hi[r];
                }
              }
              WarpSync();
              qp = rotated_packs(pack);
              for (int i = 0; i < kSliceKeys; ++i)
                if (j0 + slice + i * kSlices == j_new) kp[i] = rotated_packs(kPacks + pack);
            }
            // Bitwise, not short-circuit: a branch around each mask load made the compiler issue
            // them one after another, each waiting for the last (8 L2 round trips per warp).
            bool visible[kSliceKeys];
            for (int i = 0; i < kSliceKeys; ++i) {
              const int j = j0 + slice + i * kSlices;
              visible[i] = (j < end) & ((j == 0) | (mask_value[i] != 0));
            }
            // Scores (no 1/sqrt(Dh): OpenMoE folds the scale into Wq): the lanes of a slice add
            // their packs' products; then the chunk's max and sum of exponentials.
            float dot[kSliceKeys];
            float m = kMasked;
            for (int i = 0; i < kSliceKeys; ++i) {
              float partial_dot = 0.0f;
              for (int e = 0; e < P::kSize; ++e) partial_dot += ToFloat(qp.v[e]) * ToFloat(kp[i].v[e]);
              for (int mask = 1; mask < kPacks; mask *= 2) partial_dot += LaneXor(partial_dot, mask);
              dot[i] = visible[i] ? partial_dot : kMasked;
              m = dot[i] > m ? dot[i] : m;
            }
            for (int mask = kPacks; mask < 32; mask *= 2) {
              const float other = LaneXor(m, mask);
              m = other > m ? other : m;
            }
            float l = 0.0f;
            float acc[P::kSize];
            for (int e = 0; e < P::kSize; ++e) acc[e] = 0.0f;
            for (int i = 0; i < kSliceKeys; ++i) {
              const float p = dot[i] == kMasked ? 0.0f : Kokkos::Experimental::exp(dot[i] - m);
              l += p;
              for (int e = 0; e < P::kSize; ++e) acc[e] += p * ToFloat(vp[i].v[e]);
            }
            // Then over the slices.
            for (int mask = kPacks; mask < 32; mask *= 2) {
              l += LaneXor(l, mask);
              for (int e = 0; e < P::kSize; ++e) acc[e] += LaneXor(acc[e], mask);
            }
            // Partial results as 16-byte packs of floats (P::kSize is 4 or 8).
            using F = Pack<float>;
            if (slice == 0) {
              F* dst = reinterpret_cast<F*>(result + kPartialHeader + pack * P::kSize);
              for (int f = 0; f < P::kSize / F::kSize; ++f) {
                F values;
                for (int e = 0; e < F::kSize; ++e) values.v[e] = acc[f * F::kSize + e];
                dst[f] = values;
              }
            }
            if (lane == 0) result[0] = m, result[1] = l;

            // The last warp of this query to finish merges its chunks: every lane publishes its
            // writes, lane 0 counts the warp in, the count is broadcast.
            Kokkos::memory_fence();
            WarpSync();
            int last = 0;
            if (lane == 0) last = Kokkos::atomic_fetch_add(&finished(idx), 1) == int(active) - 1;
            last = LaneValue(last, 0);
            if (!last) return;
            Kokkos::memory_fence();
            const float* base = partial.data() + idx * chunks * width;  // other warps' writes, fenced
            // One pass: lane (pack, slice) folds chunks slice, slice + kSlices, ... into a running
            // (max, sum, acc) with rescaling (loads in rounds of kMergeInFlight chunks), then the
            // slices fold together by shuffles. Chunks without a visible key (sum 0) count nothing.
            float run_m = kMasked, run_l = 0.0f;
            for (int e = 0; e < P::kSize; ++e) acc[e] = 0.0f;
            auto fold = [&](const float other_m, const float other_l, const float* other_acc) {
              const float new_m = other_m > run_m ? other_m : run_m;
              const float keep  = run_l > 0.0f ? Kokkos::Experimental::exp(run_m - new_m) : 0.0f;
              const float take  = other_l > 0.0f ? Kokkos::Experimental::exp(other_m - new_m) : 0.0f;
              run_l = run_l * keep + other_l * take;
              for (int e = 0; e < P::kSize; ++e) acc[e] = acc[e] * keep + other_acc[e] * take;
              run_m = new_m;
            };
            constexpr int kMergeInFlight = 8;
            for (int64_t c0 = slice; c0 < active; c0 += kMergeInFlight * kSlices) {
              float chunk_m[kMergeInFlight], chunk_l[kMergeInFlight], chunk_acc[kMergeInFlight][P::kSize];
              for (int i = 0; i < kMergeInFlight; ++i) {
                const int64_t c = c0 + i * kSlices;
                const float* row = base + (c < active ? c : c0) * width;
                const F header = reinterpret_cast<const F*>(row)[0];  // [max, sum, -, -]
                chunk_m[i] = header.v[0];
                chunk_l[i] = c < active ? header.v[1] : 0.0f;
                const F* src = reinterpret_cast<const F*>(row + kPartialHeader + pack * P::kSize);
                for (int f = 0; f < P::kSize / F::kSize; ++f) {
                  const F values = src[f];
                  for (int e = 0; e < F::kSize; ++e) chunk_acc[i][f * F::kSize + e] = values.v[e];
                }
              }
              for (int i = 0; i < kMergeInFlight; ++i) fold(chunk_m[i], chunk_l[i], chunk_acc[i]);
            }
            for (int mask = kPacks; mask < 32; mask *= 2) {
              float other_acc[P::kSize];
              for (int e = 0; e < P::kSize; ++e) other_acc[e] = LaneXor(acc[e], mask);
              const float other_m = LaneXor(run_m, mask), other_l = LaneXor(run_l, mask);
              fold(other_m, other_l, other_acc);
            }
            const float inv_l = run_l > 0.0f ? 1.0f / run_l : 0.0f;  // no visible key: zeros
            if (slice == 0)
              for (int e = 0; e < P::kSize; ++e) out(b, s, q_col + pack * P::kSize + e) = FromFloat<T>(acc[e] * inv_l);
            if (lane == 0) finished(idx) = 0;  // ready for the next call
          });
        });
      });
}

// The block-split kernel's shape (block_split_attention.h): keys per lane (4 or 8) and warps per
// block (1..kMaxBlockWarps); 8 and kMaxBlockWarps unless the tuning sets them (generate_benchmark
// rejects other values).
inline int BlockSplitLaneKeys(const Tuning& tuning) { return tuning.block_split_lane_keys == 4 ? 4 : 8; }
inline int BlockSplitWarps(const Tuning& tuning) {
  return tuning.block_split_warps > 0 ? std::min(tuning.block_split_warps, internal::kMaxBlockWarps)
                                      : internal::kMaxBlockWarps;
}
// Keys one block of the block-split kernel covers, for head rows of head_dim elements of T.
template <class T>
int64_t BlockSplitKeys(const Tuning& tuning, int64_t head_dim) {
  const int64_t packs = std::max<int64_t>(1, head_dim / Pack<T>::kSize);
  return BlockSplitWarps(tuning) * std::max<int64_t>(1, 32 / packs) * BlockSplitLaneKeys(tuning);
}

// Whether decode attention of `queries` (b, s, head) rows over a cache of num_keys columns (its
// capacity in a decode step, so that a captured graph keeps its kernel) runs the block-split kernel
// rather than the warp-split one: as the tuning says, or automatically when its warps fit one wave
// of kMaxBlockWarps warps per SM, i.e. one default block per SM, since its threads need more than
// 128 registers (batch 1 at the 8B shapes: 24 queries x 5 blocks of 128 keys for a 576-column
// cache, 120 blocks on 132 SMs). There it was faster inside the decode graph (H100, session 17,
// call 3: 315.5 vs 310.9 tokens/s); at batch 16 (1,920 blocks) every block shape measured was
// slower (1,768 tokens/s with 4-warp blocks vs 1,927) (benchmarks/RESULTS.md).
template <class T, class ExecSpace>
bool UseBlockSplit(const ExecutionContext<ExecSpace>& ctx, int64_t queries, int64_t num_keys, int64_t head_dim) {
  const Tuning& tuning = ctx.tuning();
  if (tuning.decode_attention_kernel != DecodeAttentionKernel::kAuto)
    return tuning.decode_attention_kernel == DecodeAttentionKernel::kBlockSplit;
  constexpr int64_t kThreadsPerSm = 2048;
  const int64_t sms = std::max<int64_t>(1, ctx.space().concurrency() / kThreadsPerSm);
  const int64_t block_keys = BlockSplitKeys<T>(tuning, head_dim);
  const int64_t blocks = queries * ((num_keys + block_keys - 1) / block_keys);
  return blocks * BlockSplitWarps(tuning) <= internal::kMaxBlockWarps * sms;
}

// Whether a decode kernel's 32-bit indices hold: its work units (warps or blocks), key positions
// (< 2^30, so that position arithmetic cannot overflow) and the caches' row stride in elements.
inline bool FitsDecodeKernelIndices(int64_t units, int64_t num_keys, int64_t row_stride) {
  return units < (int64_t(1) << 31) && num_keys < (int64_t(1) << 30) && row_stride < (int64_t(1) << 31);
}

// SplitKeyAttention for the shape's packs per head row (SplitKeyShapesFit holds).
template <bool kFused, class T, class ExecSpace>
absl::Status LaunchSplitKey(const ExecutionContext<ExecSpace>& ctx, SplitKeySource<T> source, int64_t batch, int64_t Sq,
                            Tensor3<const T, ExecSpace> k, Tensor3<const T, ExecSpace> v,
                            Kokkos::View<const int64_t**, Kokkos::LayoutRight, typename ExecSpace::memory_space> key_mask,
                            int64_t num_heads, int64_t group, int64_t head_dim, int64_t num_keys, int64_t q_offset,
                            Tensor3<T, ExecSpace> out, const int64_t* device_offset) {
  const auto& space = ctx.space();
  const int64_t units = batch * Sq * num_heads * ((num_keys + kWarpKeys - 1) / kWarpKeys);  // at most
  if (!FitsDecodeKernelIndices(units, num_keys, k.stride(1))) {
    return absl::InvalidArgumentError(absl::StrCat("SplitKeyAttention: ", units, " key chunks or ", num_keys,
                                                   " keys exceed the kernel's 32-bit indices"));
  }
  // 32 keys per warp only where a lane then holds at most 16 k and 16 v packs (head rows of <= 16
  // packs): more would not fit in registers at all.
  const bool wide = UseWideSplitKeyChunks(ctx, batch * Sq * num_heads, num_keys);
  switch (head_dim / Pack<T>::kSize) {
#define OPENMOE_SPLIT_KEY_CALL(packs, keys)                                                                         \
  SplitKeyAttention<packs, keys, kFused, T, ExecSpace>(ctx, source, batch, Sq, k, v, key_mask, num_heads, group,  \
                                                       head_dim, num_keys, q_offset, out, device_offset);           \
  return absl::OkStatus();
#define OPENMOE_SPLIT_KEY_CASE(packs)           \
  case packs:                                   \
    if (wide) {                                 \
      OPENMOE_SPLIT_KEY_CALL(packs, kWideWarpKeys) \
    }                                           \
    OPENMOE_SPLIT_KEY_CALL(packs, kWarpKeys)
    OPENMOE_SPLIT_KEY_CASE(2)
    OPENMOE_SPLIT_KEY_CASE(4)
    OPENMOE_SPLIT_KEY_CASE(8)
    OPENMOE_SPLIT_KEY_CASE(16)
    case 32:
      OPENMOE_SPLIT_KEY_CALL(32, kWarpKeys)
#undef OPENMOE_SPLIT_KEY_CASE
#undef OPENMOE_SPLIT_KEY_CALL
  }
  return absl::InternalError(absl::StrCat("SplitKeyAttention: head_dim ", head_dim, " does not fit"));
}

// BlockSplitAttention (block_split_attention.h) for the shape's packs per head row
// (SplitKeyShapesFit holds), with the tuning's keys per lane and warps per block (BlockSplitLaneKeys,
// BlockSplitWarps).
template <bool kFused, class T, class ExecSpace>
absl::Status LaunchBlockSplit(const ExecutionContext<ExecSpace>& ctx, SplitKeySource<T> source, int64_t batch, int64_t Sq,
                              Tensor3<const T, ExecSpace> k, Tensor3<const T, ExecSpace> v,
                              Kokkos::View<const int64_t**, Kokkos::LayoutRight, typename ExecSpace::memory_space> key_mask,
                              int64_t num_heads, int64_t group, int64_t head_dim, int64_t num_keys, int64_t q_offset,
                              Tensor3<T, ExecSpace> out, const int64_t* device_offset) {
  const int64_t block_keys = BlockSplitKeys<T>(ctx.tuning(), head_dim);
  const int64_t blocks = batch * Sq * num_heads * ((num_keys + block_keys - 1) / block_keys);
  if (!FitsDecodeKernelIndices(blocks, num_keys, k.stride(1))) {
    return absl::InvalidArgumentError(absl::StrCat("BlockSplitAttention: ", batch * Sq * num_heads, " queries of ",
                                                   num_keys, " keys exceed the kernel's 32-bit indices"));
  }
  const bool eight = BlockSplitLaneKeys(ctx.tuning()) == 8;
  const int warps = BlockSplitWarps(ctx.tuning());
  switch (head_dim / Pack<T>::kSize) {
#define OPENMOE_BLOCK_SPLIT_CALL(packs, lane_keys)                                                                 \
  internal::BlockSplitAttention<packs, lane_keys, kFused, T, ExecSpace>(ctx, warps, source, batch, Sq, k, v, key_mask, \
                                                                        num_heads, group, num_keys, q_offset, out, \
                                                                        device_offset);                           \
  return absl::OkStatus();
#define OPENMOE_BLOCK_SPLIT_CASE(packs)  \
  case packs:                            \
    if (eight) {                         \
      OPENMOE_BLOCK_SPLIT_CALL(packs, 8) \
    }                                    \
    OPENMOE_BLOCK_SPLIT_CALL(packs, 4)
    OPENMOE_BLOCK_SPLIT_CASE(2)
    OPENMOE_BLOCK_SPLIT_CASE(4)
    OPENMOE_BLOCK_SPLIT_CASE(8)
    OPENMOE_BLOCK_SPLIT_CASE(16)
    OPENMOE_BLOCK_SPLIT_CASE(32)
#undef OPENMOE_BLOCK_SPLIT_CASE
#undef OPENMOE_BLOCK_SPLIT_CALL
  }
  return absl::InternalError(absl::StrCat("BlockSplitAttention: head_dim ", head_dim, " does not fit"));
}

// The CUDA decode attention kernel the tuning asks for (tuning().decode_attention_kernel); automatic:
// UseBlockSplit.
template <bool kFused, class T, class ExecSpace>
absl::Status LaunchDecodeAttention(const ExecutionContext<ExecSpace>& ctx, SplitKeySource<T> source, int64_t batch,
                                   int64_t Sq, Tensor3<const T, ExecSpace> k, Tensor3<const T, ExecSpace> v,
                                   Kokkos::View<const int64_t**, Kokkos::LayoutRight, typename ExecSpace::memory_space> key_mask,
                                   int64_t num_heads, int64_t group, int64_t head_dim, int64_t num_keys,
                                   int64_t q_offset, Tensor3<T, ExecSpace> out, const int64_t* device_offset) {
  if (!UseBlockSplit<T>(ctx, batch * Sq * num_heads, num_keys, head_dim))
    return LaunchSplitKey<kFused, T, ExecSpace>(ctx, source, batch, Sq, k, v, key_mask, num_heads, group, head_dim,
                                                num_keys, q_offset, out, device_offset);
  return LaunchBlockSplit<kFused, T, ExecSpace>(ctx, source, batch, Sq, k, v, key_mask, num_heads, group, head_dim,
                                                num_keys, q_offset, out, device_offset);
}

// cos/sin of RoPE for positions [0, positions) and pair index j < head_dim / 2, as RopeCosSin
// computes them: [positions, head_dim / 2, 2] floats, one table per head_dim, kept between calls
// (grown with the longest cache seen; a growth bumps the scratch generation).
template <class ExecSpace>
const float* RopeTable(const ExecutionContext<ExecSpace>& ctx, int64_t positions, int64_t head_dim) {
  const auto& space = ctx.space();
  bool grew = false;  // a growth bumps ctx.scratch_generation()
  auto table = ctx.template Scratch<float>(absl::StrCat("attention.rope_table.", head_dim), size_t(positions * head_dim),
                                           /*zeroed=*/false, &grew);
  if (grew) {  // filled for every position it holds; a smaller later call reuses it as is
    const int64_t half = head_dim / 2;
    float* data = table.data();
    DependentParallelFor("openmoe::kernels::RopeTable", FlatRange(space, positions * half), KOKKOS_LAMBDA(const int64_t i) {
      float c, sn;
      RopeCosSin(i / half, i % half, head_dim, c, sn);
      data[2 * i] = c, data[2 * i + 1] = sn;
    });
  }
  return table.data();
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
  DependentParallelFor(
      "openmoe::kernels::ApplyRope",
      FlatRange(space, B * S * pairs), KOKKOS_LAMBDA(const int64_t idx) {
        const int64_t pair = idx % pairs, s = (idx / pairs) % S, b = idx / (pairs * S);
        const int64_t head = pair / half, j = pair % half;
        const int64_t lo = head * head_dim + j, hi = lo + half;
        float c, sn;
        RopeCosSin(position_offset + s, j, head_dim, c, sn);
        if (inverse) sn = -sn;
        RotatePair(ToFloat(x(b, s, lo)), ToFloat(x(b, s, hi)), c, sn, x(b, s, lo), x(b, s, hi));
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
  // One thread per (b, s, j, group of heads) rotates pair (j, j + half) of each head of its group
  // in q and k and copies the same two elements of v. cos/sin depend only on (column, j): computed
  // once per thread (RopeCosSin's double pow/cos/sin cost more than the bytes moved when done per
  // head). Heads form one group when B * S * half threads fill the GPU (prefill), else up to one
  // head per group (a decode step). Consecutive threads take consecutive j: coalesced accesses.
  constexpr int64_t kMinThreads = int64_t(1) << 17;  // about an H100's resident threads
  constexpr int kHeadsInFlight  = 4;                 // heads whose loads are all issued before any store
  const int64_t half = head_dim / 2, q_heads = q_width / head_dim, kv_heads = kv_width / head_dim;
  const int64_t heads = q_heads > kv_heads ? q_heads : kv_heads;
  const int64_t row_threads = B * S * half;
  const int64_t wanted_groups = row_threads > 0 ? (kMinThreads + row_threads - 1) / row_threads : 1;
  const int64_t group_heads   = heads > wanted_groups ? (heads + wanted_groups - 1) / wanted_groups : 1;
  const int64_t head_groups   = heads > 0 ? (heads + group_heads - 1) / group_heads : 1;
  const int64_t k0 = q_width, v0 = q_width + kv_width;  // where k and v start in a qkv row
  DependentParallelFor(
      "openmoe::kernels::RopeAndAppend",
      FlatRange(space, row_threads * head_groups), KOKKOS_LAMBDA(const int64_t idx) {
        // idx = ((b * S + s) * head_groups + group) * half + j
        const int64_t j = idx % half, group = (idx / half) % head_groups, row = idx / (half * head_groups);
        const int64_t s = row % S, b = row / S;
        const int64_t column = offset + (device_offset != nullptr ? *device_offset : 0) + s;
        float c, sn;
        RopeCosSin(column, j, head_dim, c, sn);
        const int64_t first = group * group_heads, last = first + group_heads < heads ? first + group_heads : heads;
        for (int64_t h0 = first; h0 < last; h0 += kHeadsInFlight) {
          // Loads of kHeadsInFlight heads first (the stores could alias them as far as the compiler
          // knows, so it would not move later loads above them), then the rotations and stores.
          float q_lo[kHeadsInFlight], q_hi[kHeadsInFlight], k_lo[kHeadsInFlight], k_hi[kHeadsInFlight];
          T v_lo[kHeadsInFlight], v_hi[kHeadsInFlight];
          for (int u = 0; u < kHeadsInFlight; ++u) {
            const int64_t head = h0 + u, lo = head * head_dim + j, hi = lo + half;
            if (head >= last) break;
            if (head < q_heads) q_lo[u] = ToFloat(qkv(b, s, lo)), q_hi[u] = ToFloat(qkv(b, s, hi));
            if (head < kv_heads) {
              k_lo[u] = ToFloat(qkv(b, s, k0 + lo)), k_hi[u] = ToFloat(qkv(b, s, k0 + hi));
              v_lo[u] = qkv(b, s, v0 + lo), v_hi[u] = qkv(b, s, v0 + hi);
            }
          }
          for (int u = 0; u < kHeadsInFlight; ++u) {
            const int64_t head = h0 + u, lo = head * head_dim + j, hi = lo + half;
            if (head >= last) break;
            if (head < q_heads) RotatePair(q_lo[u], q_hi[u], c, sn, q_out(b, s, lo), q_out(b, s, hi));
            if (head < kv_heads) {
              RotatePair(k_lo[u], k_hi[u], c, sn, k_cache(b, column, lo), k_cache(b, column, hi));
              v_cache(b, column, lo) = v_lo[u], v_cache(b, column, hi) = v_hi[u];
            }
          }
        }
      });
  return absl::OkStatus();
}

template <class T, class ExecSpace>
absl::Status CausalAttention(const ExecutionContext<ExecSpace>& ctx, Tensor3<const T, ExecSpace> q,
                             Tensor3<const T, ExecSpace> k, Tensor3<const T, ExecSpace> v,
                             Kokkos::View<const int64_t**, Kokkos::LayoutRight,
                                          typename ExecSpace::memory_space> key_mask,
                             int64_t num_heads, int64_t num_kv_heads, int64_t head_dim,
                             int64_t num_keys, int64_t q_offset, Tensor3<T, ExecSpace> out,
                             const int64_t* device_offset) {
  const auto& space = ctx.space();
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
  if (device_offset == nullptr && UseGemmAttention<ExecSpace>(ctx.tuning(), Sq)) {  // prefill, training (attention_gemm.h)
    return GemmAttention<T, ExecSpace>(ctx, q, k, v, key_mask, num_heads, num_kv_heads, head_dim, num_keys,
                                       q_offset, out);
  }
  const int64_t group = num_heads / num_kv_heads;
  constexpr float kMasked = -FLT_MAX;
  constexpr bool kOnHostSpace =
      Kokkos::SpaceAccessibility<Kokkos::HostSpace, typename ExecSpace::memory_space>::accessible;
  if (!kOnHostSpace && B * Sq * num_heads < 1024 && num_keys > 4 * kWarpKeys &&
      SplitKeyShapesFit(q.data(), k.data(), v.data(), head_dim)) {
    SplitKeySource<T> source;
    source.q = q.data(), source.row_stride = num_heads * head_dim;
    return LaunchDecodeAttention<false, T, ExecSpace>(ctx, source, B, Sq, k, v, key_mask, num_heads, group,
                                                      head_dim, num_keys, q_offset, out, device_offset);
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
  DependentParallelFor(
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

template <class T, class ExecSpace>
absl::Status RopeAppendAttention(const ExecutionContext<ExecSpace>& ctx, Tensor3<const T, ExecSpace> qkv, Tensor3<T, ExecSpace> q,
                                 Tensor3<T, ExecSpace> k_cache, Tensor3<T, ExecSpace> v_cache,
                                 Kokkos::View<const int64_t**, Kokkos::LayoutRight, typename ExecSpace::memory_space> key_mask,
                                 int64_t num_heads, int64_t num_kv_heads, int64_t head_dim, Tensor3<T, ExecSpace> out,
                                 const int64_t* device_offset) {
  const auto& space = ctx.space();
  const int64_t B = qkv.extent(0), Sq = qkv.extent(1), capacity = k_cache.extent(1);
  const int64_t q_width = num_heads * head_dim, kv_width = num_kv_heads * head_dim;
  const bool fused = FusedDecodeStepSupported<ExecSpace>() && Sq == 1 && device_offset != nullptr &&
                     B * num_heads < 1024 && num_kv_heads > 0 && num_heads % num_kv_heads == 0 &&
                     qkv.extent(2) == size_t(q_width + 2 * kv_width) && head_dim % 2 == 0 &&
                     k_cache.extent(2) == size_t(kv_width) && v_cache.extent(2) == size_t(kv_width) &&
                     k_cache.extent(0) == size_t(B) && v_cache.extent(0) == size_t(B) &&
                     v_cache.extent(1) == size_t(capacity) && key_mask.extent(0) == size_t(B) &&
                     key_mask.extent(1) >= size_t(capacity) && out.extent(0) == size_t(B) &&
                     out.extent(1) == 1 && out.extent(2) == size_t(q_width) &&
                     IsPackAligned(qkv.data(), qkv.extent(2)) &&
                     SplitKeyShapesFit(qkv.data(), k_cache.data(), v_cache.data(), head_dim);  // q is not read
  if (!fused) {
    const absl::Status appended =
        RopeAndAppend<T, ExecSpace>(space, qkv, head_dim, kv_width, 0, q, k_cache, v_cache, device_offset);
    if (!appended.ok()) return appended;
    return CausalAttention<T, ExecSpace>(ctx, q, k_cache, v_cache, key_mask, num_heads, num_kv_heads, head_dim,
                                         capacity, 0, out, device_offset);
  }
  SplitKeySource<T> source;
  source.q = qkv.data(), source.row_stride = qkv.extent(2);
  source.rope_table = RopeTable(ctx, capacity, head_dim);
  source.k_cache = k_cache.data(), source.v_cache = v_cache.data();
  return LaunchDecodeAttention<true, T, ExecSpace>(ctx, source, B, 1, k_cache, v_cache, key_mask, num_heads,
                                                   num_heads / num_kv_heads, head_dim, capacity, 0, out, device_offset);
}

#define OPENMOE_INSTANTIATE_ATTENTION(Space, T)                                                 \
  template absl::Status ApplyRope<T, Space>(const Space&, Tensor3<T, Space>, int64_t, int64_t, bool); \
  template absl::Status RopeAndAppend<T, Space>(const Space&, Tensor3<const T, Space>, int64_t, int64_t, \
                                                int64_t, Tensor3<T, Space>, Tensor3<T, Space>,          \
                                                Tensor3<T, Space>, const int64_t*);                     \
  template absl::Status CausalAttention<T, Space>(                                              \
      const ExecutionContext<Space>&, Tensor3<const T, Space>, Tensor3<const T, Space>, Tensor3<const T, Space>,  \
      Kokkos::View<const int64_t**, Kokkos::LayoutRight, typename Space::memory_space>,         \
      int64_t, int64_t, int64_t, int64_t, int64_t, Tensor3<T, Space>, const int64_t*);               \
  template absl::Status RopeAppendAttention<T, Space>(                                          \
      const ExecutionContext<Space>&, Tensor3<const T, Space>, Tensor3<T, Space>, Tensor3<T, Space>, Tensor3<T, Space>, \
      Kokkos::View<const int64_t**, Kokkos::LayoutRight, typename Space::memory_space>,         \
      int64_t, int64_t, int64_t, Tensor3<T, Space>, const int64_t*);
OPENMOE_FOR_EACH_SPACE_AND_KERNEL_DTYPE(OPENMOE_INSTANTIATE_ATTENTION)

}  // namespace openmoe::kernels

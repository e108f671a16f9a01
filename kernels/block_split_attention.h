// File: kernels/block_split_attention.h (private to attention.cc)
// The block-split decode attention kernel, CUDA only (teams of warps of 32 lanes; host builds
// compile it but never launch it), and where decode kernels read their queries.
//
// Why a second decode kernel: the warp-split kernel (attention.cc) gives one warp a chunk of keys
// and lets the last warp of a query fold every chunk, so each warp runs a long serial chain (its
// dot products, P.V sums, a fence, a count, then up to ~18 chunk folds) with few warps per SM:
// on an H100 it took 13 us per 8B layer at batch 1 (ncu: 4.7% occupancy, 14.8% of DRAM).
//
// Here a block of `block_warps` warps takes block_warps x kWarpKeys consecutive keys of one query
// (b, s, head). Each lane holds kLaneKeys keys' packs of k and v, so each warp's chain is short;
// the warps' (max, sum, acc) meet in shared memory after one barrier and the block folds them
// with one thread per head dimension; blocks of one query then meet in global memory, counted by
// an atomic, and the last block folds them the same way (one thread per dimension, not one warp
// per chunk). A query whose keys fit one block writes its output directly. Lanes rotate q (and
// the new key) in registers, each its own pack from the pack and its partner half.
#ifndef KERNELS_BLOCK_SPLIT_ATTENTION_H_
#define KERNELS_BLOCK_SPLIT_ATTENTION_H_

#include <cfloat>
#include <cstdint>

#include "kernels/attention.h"
#include "kernels/execution_context.h"
#include "kernels/launch.h"
#include "kernels/layer_math.h"
#include "openmoe/core/bf16.h"

namespace openmoe::kernels::internal {

// Where the decode kernels read their queries, and (fused mode) the raw new key and value.
template <class T>
struct SplitKeySource {
  const T* q          = nullptr;  // q of row (b, s) at q + (b * Sq + s) * row_stride + head * Dh
  int64_t row_stride  = 0;
  // Fused mode (Sq = 1): q is a fused projection row [q (Nh*Dh) | k (Nkv*Dh) | v (Nkv*Dh)] not yet
  // rotated; the kernel rotates q and the new key (cos/sin from rope_table [positions, Dh/2, 2]),
  // writes the new key and value into the caches at column *device_offset and attends to them.
  const float* rope_table = nullptr;
  T* k_cache = nullptr;  // the caches' data (same layout as k and v), written in fused mode
  T* v_cache = nullptr;
};

// Warps per block of BlockSplitAttention: 1..8. With 8 keys per lane the kernel needs more than 128
// registers a thread: capping it there for blocks of 16 warps (LaunchBounds<512, 1>) made it spill
// (26.3 instead of 10.5 us per 8B layer at batch 1 on an H100; benchmarks/RESULTS.md, session 17).
// Blocks of 8 warps launch with up to 255 registers a thread (8 x 32 x 255 < 64 K).
constexpr int kMaxBlockWarps = 8;

// The rotated pack `pack` of a head row [Dh] (RoPE's rotate-half pairs (d, d + Dh/2) at the
// position whose [Dh/2, 2] cos/sin row is cos_sin), as floats rounded to T, the same rounding as
// RotatePair gives every other RoPE kernel. own and partner: the row's packs `pack` and
// `pack ^ kPacks / 2` (the other half of each pair).
template <int kPacks, class T>
KOKKOS_INLINE_FUNCTION void RotateOwnPack(const Pack<T>& own, const Pack<T>& partner, const float* cos_sin, int pack,
                                          T (&rotated)[Pack<T>::kSize]) {
  constexpr int kSize = Pack<T>::kSize, kHalfPacks = kPacks / 2;
  const bool low = pack < kHalfPacks;  // this pack holds the pairs' first elements
  using F = Pack<float>;
  const F* cs = reinterpret_cast<const F*>(cos_sin + 2 * (pack % kHalfPacks) * kSize);  // pairs of this pack
  F cs_packs[2 * kSize / F::kSize];
  for (int f = 0; f < 2 * kSize / F::kSize; ++f) cs_packs[f] = cs[f];
  for (int e = 0; e < kSize; ++e) {
    const float c = cs_packs[(2 * e) / F::kSize].v[(2 * e) % F::kSize];
    const float sn = cs_packs[(2 * e + 1) / F::kSize].v[(2 * e + 1) % F::kSize];
    const float lo = ToFloat(low ? own.v[e] : partner.v[e]), hi = ToFloat(low ? partner.v[e] : own.v[e]);
    T out_lo, out_hi;
    RotatePair(lo, hi, c, sn, out_lo, out_hi);
    rotated[e] = low ? out_lo : out_hi;
  }
}

// q [B, Sq, Nh*Dh] (or fused rows, SplitKeySource), k, v [B, >= num_keys, Nkv*Dh], out [B, Sq, Nh*Dh]:
// CausalAttention's maths (attention.h), scores and sums in float32. Dh = kPacks packs of T; the
// caller checks the shapes (SplitKeyShapesFit) and the 32-bit index ranges. block_warps: 1..kMaxBlockWarps.
template <int kPacks, int kLaneKeys, bool kFused, class T, class ExecSpace>
void BlockSplitAttention(const ExecutionContext<ExecSpace>& ctx, int block_warps, SplitKeySource<T> source,
                         int64_t batch, int64_t Sq,
                         Tensor3<const T, ExecSpace> k, Tensor3<const T, ExecSpace> v,
                         Kokkos::View<const int64_t**, Kokkos::LayoutRight, typename ExecSpace::memory_space> key_mask,
                         int64_t num_heads, int64_t group, int64_t num_keys, int64_t q_offset,
                         Tensor3<T, ExecSpace> out, const int64_t* device_offset) {
  using Policy  = Kokkos::TeamPolicy<ExecSpace>;
  using Member  = typename Policy::member_type;
  using P       = Pack<T>;
  using Scratch = Kokkos::View<float*, typename ExecSpace::scratch_memory_space, Kokkos::MemoryTraits<Kokkos::Unmanaged>>;
  constexpr float kMasked   = -FLT_MAX;
  constexpr int kSize       = P::kSize;
  constexpr int kSlices     = 32 / kPacks;                       // keys a warp's lanes read at once
  constexpr int kWarpKeys   = kSlices * kLaneKeys;               // key j0 + slice + i * kSlices: lane i-th key
  constexpr int kHeadDim    = kPacks * kSize;
  constexpr int kHalfPacks  = kPacks / 2;
  constexpr int kWidth      = 4 + kHeadDim;                      // a partial result: [max, sum, -, -, acc (Dh)]
  const int64_t queries = batch * Sq * num_heads;
  const int block_keys = block_warps * kWarpKeys;
  const int64_t splits  = (num_keys + block_keys - 1) / block_keys;
  const int64_t q_width = num_heads * kHeadDim, kv_width = k.extent(2);
  // (A growth of either buffer bumps ctx.scratch_generation(): captured graphs point at them.)
  auto partial  = ctx.template Scratch<float>("attention.block_split", size_t(queries * splits * kWidth));
  auto finished = ctx.template Scratch<int>("attention.block_finished", size_t(queries), /*zeroed=*/true);
  Policy policy(ctx.space(), queries * splits, block_warps, 32);
  policy.set_scratch_size(0, Kokkos::PerTeam(Scratch::shmem_size(block_warps * kWidth)));
  DependentParallelFor(
      "openmoe::kernels::BlockSplitAttention", policy, KOKKOS_LAMBDA(const Member& team) {
        // 32-bit index arithmetic (the caller checks the ranges): a 64-bit division is ~4x the instructions.
        const int splits32 = int(splits), heads32 = int(num_heads), Sq32 = int(Sq);
        const int split = int(team.league_rank()) % splits32, idx = int(team.league_rank()) / splits32;
        const int head = idx % heads32, s = (idx / heads32) % Sq32, b = idx / (heads32 * Sq32);
        const int keys     = int(device_offset != nullptr ? *device_offset + Sq : num_keys);
        const int position = int((device_offset != nullptr ? *device_offset : q_offset) + s);
        const int end      = keys < position + 1 ? keys : position + 1;  // causal: keys [0, end)
        const int active   = (end + block_keys - 1) / block_keys;         // blocks with keys
        if (split >= active) return;                                      // the whole block
        const int64_t q_col = int64_t(head) * kHeadDim, kv_col = int64_t(head / int(group)) * kHeadDim;
        const T* row = source.q + (int64_t(b) * Sq + s) * source.row_stride;  // q (fused: [q | k | v] raw)
        const int kv_stride = int(k.stride(1));  // elements from one key's row to the next (k and v alike)
        const T* k_rows = &k(b, 0, kv_col);      // key j's head slice at k_rows + j * kv_stride
        const T* v_rows = &v(b, 0, kv_col);
        const int64_t* mask_row = &key_mask(b, 0);
        Scratch warp_partials(team.team_scratch(0), block_warps * kWidth);  // [warp][max, sum, -, -, acc]

        Kokkos::parallel_for(Kokkos::TeamThreadRange(team, block_warps), [&](const int warp) {
          Kokkos::parallel_for(Kokkos::ThreadVectorRange(team, 32), [&](const int lane) {
            // Lane (slice, pack) reads column pack `pack` of keys j0 + slice + i * kSlices: each load
            // instruction of the warp covers whole rows (coalesced). All global loads first.
            const int pack = lane % kPacks, slice = lane / kPacks;
            const int j0 = split * block_keys + warp * kWarpKeys;
            P kp[kLaneKeys], vp[kLaneKeys];
            int64_t mask_value[kLaneKeys];
            for (int i = 0; i < kLaneKeys; ++i) {
              const int j  = j0 + slice + i * kSlices;
              const int jr = j < end ? j : 0;  // beyond the step: a valid row, masked below
              kp[i] = reinterpret_cast<const P*>(k_rows + int64_t(jr) * kv_stride)[pack];
              vp[i] = reinterpret_cast<const P*>(v_rows + int64_t(jr) * kv_stride)[pack];
              mask_value[i] = mask_row[jr];
            }
            float qf[kSize];
            if (!kFused) {
              const P qp = reinterpret_cast<const P*>(row + q_col)[pack];
              for (int e = 0; e < kSize; ++e) qf[e] = ToFloat(qp.v[e]);
            } else {
              // q rotated in registers; the warp holding the new key (column `position`, not yet in
              // the caches) rotates it too, attends to it from registers and stores it with the value.
              const float* cos_sin = source.rope_table + int64_t(position) * kHeadDim;  // [Dh/2, 2]
              const P* q_packs = reinterpret_cast<const P*>(row + q_col);
              T rotated[kSize];
              RotateOwnPack<kPacks>(q_packs[pack], q_packs[pack ^ kHalfPacks], cos_sin, pack, rotated);
              for (int e = 0; e < kSize; ++e) qf[e] = ToFloat(rotated[e]);
              if (position >= j0 && position < j0 + kWarpKeys) {  // the same for the whole warp
                const P* k_new = reinterpret_cast<const P*>(row + q_width + kv_col);
                const P* v_new = reinterpret_cast<const P*>(row + q_width + kv_width + kv_col);
                P key, value = v_new[pack];
                RotateOwnPack<kPacks>(k_new[pack], k_new[pack ^ kHalfPacks], cos_sin, pack, key.v);
                for (int i = 0; i < kLaneKeys; ++i)  // (no register array indexed at run time)
                  if (j0 + slice + i * kSlices == position) kp[i] = key, vp[i] = value;
                if ((position - j0) % kSlices == slice) {
                  // The first head of each key/value group stores the group's new column.
                  if (head % int(group) == 0) {
                    const int64_t at = int64_t(position) * kv_stride + (&k(b, 0, kv_col) - k.data());
                    reinterpret_cast<P*>(source.k_cache + at)[pack] = key;
                    reinterpret_cast<P*>(source.v_cache + at)[pack] = value;
                  }
                }
              }
            }
            // Scores (no 1/sqrt(Dh): OpenMoE folds the scale into Wq): the lanes of a slice add their
            // packs' products; then the warp's max, sum of exponentials and P.V sums.
            float dot[kLaneKeys];
            float m = kMasked;
            for (int i = 0; i < kLaneKeys; ++i) {
              const int j = j0 + slice + i * kSlices;
              // Bitwise, not short-circuit: no branch around the mask (see the warp-split kernel).
              const bool visible = (j < end) & ((j == 0) | (mask_value[i] != 0));
              float partial_dot = 0.0f;
              for (int e = 0; e < kSize; ++e) partial_dot += qf[e] * ToFloat(kp[i].v[e]);
              for (int mask = 1; mask < kPacks; mask *= 2) partial_dot += LaneXor(partial_dot, mask);
              dot[i] = visible ? partial_dot : kMasked;
              m = dot[i] > m ? dot[i] : m;
            }
            for (int mask = kPacks; mask < 32; mask *= 2) {
              const float other = LaneXor(m, mask);
              m = other > m ? other : m;
            }
            float l = 0.0f, acc[kSize];
            for (int e = 0; e < kSize; ++e) acc[e] = 0.0f;
            for (int i = 0; i < kLaneKeys; ++i) {
              const float p = dot[i] == kMasked ? 0.0f : Kokkos::Experimental::exp(dot[i] - m);
              l += p;
              for (int e = 0; e < kSize; ++e) acc[e] += p * ToFloat(vp[i].v[e]);
            }
            for (int mask = kPacks; mask < 32; mask *= 2) {  // over the slices (one max: plain sums)
              l += LaneXor(l, mask);
              for (int e = 0; e < kSize; ++e) acc[e] += LaneXor(acc[e], mask);
            }
            float* mine = &warp_partials(warp * kWidth);
            if (slice == 0)
              for (int e = 0; e < kSize; ++e) mine[4 + pack * kSize + e] = acc[e];
            if (lane == 0) mine[0] = m, mine[1] = l;
          });
        });
        team.team_barrier();

        // Folds `count` partial results [max, sum, -, -, acc] at `first`, `stride` floats apart, into
        // dimension d's (sum, acc), rescaled to their common max. Parts with no visible key (sum 0)
        // count nothing.
        auto fold = [&](const float* first, int count, int stride, int d, float& sum, float& acc) {
          float top = kMasked;
          for (int c = 0; c < count; ++c)
            if (first[c * stride + 1] > 0.0f && first[c * stride] > top) top = first[c * stride];
          sum = 0.0f, acc = 0.0f;
          for (int c = 0; c < count; ++c) {
            const float* part = first + c * stride;
            const float scale = part[1] > 0.0f ? Kokkos::Experimental::exp(part[0] - top) : 0.0f;
            sum += part[1] * scale;
            acc += part[4 + d] * scale;
          }
          return top;
        };
        const bool single_block = active == 1;
        float* block_result = partial.data() + (int64_t(idx) * splits + split) * kWidth;
        Kokkos::parallel_for(Kokkos::TeamVectorRange(team, kHeadDim), [&](const int d) {
          float sum, acc;
          const float top = fold(warp_partials.data(), block_warps, kWidth, d, sum, acc);
          if (single_block) {
            out(b, s, q_col + d) = FromFloat<T>(acc * (sum > 0.0f ? 1.0f / sum : 0.0f));
          } else {
            block_result[4 + d] = acc;
            if (d == 0) block_result[0] = top, block_result[1] = sum;
          }
        });
        if (single_block) return;
        // The last block of this query to finish folds the blocks: every thread publishes its
        // writes, one counts the block in, the count is broadcast.
        Kokkos::memory_fence();
        team.team_barrier();
        int last = 0;
        Kokkos::single(
            Kokkos::PerTeam(team),
            [&](int& is_last) { is_last = Kokkos::atomic_fetch_add(&finished(idx), 1) == active - 1; }, last);
        if (!last) return;
        Kokkos::memory_fence();
        const float* blocks = partial.data() + int64_t(idx) * splits * kWidth;  // other blocks' writes, fenced
        Kokkos::parallel_for(Kokkos::TeamVectorRange(team, kHeadDim), [&](const int d) {
          float sum, acc;
          fold(blocks, active, kWidth, d, sum, acc);
          out(b, s, q_col + d) = FromFloat<T>(acc * (sum > 0.0f ? 1.0f / sum : 0.0f));
        });
        Kokkos::single(Kokkos::PerTeam(team), [&]() { finished(idx) = 0; });  // ready for the next call
      });
}

}  // namespace openmoe::kernels::internal

#endif  // KERNELS_BLOCK_SPLIT_ATTENTION_H_

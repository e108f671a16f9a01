// File: kernels/execution_context.h
// What an op runs with besides its operands: the execution-space instance its work is ordered on
// (the CUDA stream), a scratch arena of buffers kept between calls, a pool of buffers handed out
// and taken back by reference count (buffer_pool.h), tuning values, and on CUDA a
// cuBLAS handle bound to that stream. Ops that need any of these take the context; ops that need
// only the stream take the space (ctx.space()). Nothing of it is process-wide: two models, two
// threads or two ranks in one process each run with their own.
//
//   ExecutionContext<Space> ctx(space);                        // one per model (per stream)
//   OPENMOE_RETURN_IF_ERROR(Linear<T>(ctx, x, w, y));
//   auto partial = ctx.Scratch<float>("attention.split", n);   // kept between calls, grown on need
//
// Copies are handles to the same context (like Kokkos execution-space instances). OnStream gives
// a context for another stream of the same device (the expert branches of a decode graph) that
// shares the arena, the tuning and the cuBLAS handle, with a cuBLAS workspace of its own. The
// arena's buffers are freed with the last copy; keep contexts inside Kokkos' lifetime.
//
// One piece of process state remains outside it: the recorder of dependent launches
// (dependent_launch.cc), which the launch helpers reach with only a Kokkos policy. It records only
// between StartRecordingDependentLaunches and TakeDependentLaunchNodes of one decode-graph capture
// (under a mutex); everywhere else it is off.
#ifndef KERNELS_EXECUTION_CONTEXT_H_
#define KERNELS_EXECUTION_CONTEXT_H_

#include <cstdint>
#include <map>
#include <memory>
#include <string>

#include <Kokkos_Core.hpp>

#include "kernels/buffer_pool.h"
#include "kernels/cublas_handle.h"

namespace openmoe::kernels {

// Which kernel a 16-bit product of few rows runs on CUDA (linear.h): automatic (the default), or
// one forced, for benchmarks and tests that compare them in one run.
enum class DecodeLinearKernel { kAuto, kCublas, kWarpPerColumn, kSplitK };
// Which path causal attention takes (attention_gemm.h): automatic (GEMMs on CUDA for >= 16 query
// rows), or one forced, for tests that compare them.
enum class AttentionPath { kAuto, kGemm, kFused };
// Which kernel decode attention (few queries, many keys) runs on CUDA (attention.cc): automatic,
// one warp per chunk of keys merged by the last warp (kWarpSplit), or blocks of warps merged in
// shared memory, then by the last block (kBlockSplit).
enum class DecodeAttentionKernel { kAuto, kWarpSplit, kBlockSplit };

struct Tuning {
  // Warps per team of the CUDA decode attention kernel, each warp one chunk of keys (1..16; 4 and
  // 8 measured the same at batch 1 and 2-10% slower at batch 16 on the H200).
  int split_key_team_warps = 1;
  // Keys per warp of the CUDA decode attention kernel: 16 or 32; 0 = automatic (attention.cc).
  int split_key_warp_keys = 0;
  DecodeAttentionKernel decode_attention_kernel = DecodeAttentionKernel::kAuto;
  // Keys per lane of the block-split decode attention kernel: 4 or 8; 0 = automatic (8).
  int block_split_lane_keys = 0;
  // Warps per block of the block-split decode attention kernel: 1..8; 0 = automatic (8).
  int block_split_warps = 0;
  DecodeLinearKernel decode_linear_kernel = DecodeLinearKernel::kAuto;
  AttentionPath attention_path = AttentionPath::kAuto;
  // Cap of the GEMM attention's scores chunk [Nh, rows, keys] in elements (64 Mi: 256 MiB of
  // float32); tests lower it to exercise chunking.
  int64_t max_score_elements = int64_t(64) << 20;
  // 16-bit GEMM attention (attention_gemm.h): true keeps P as two 16-bit halves, hi + lo, whose
  // P.V sum has float32 accuracy (bf16 training: its router gradients are sensitive to rounding P);
  // false rounds P once to 16 bits, as flash attention does, and saves the second P.V product,
  // the float32 output pass and half the softmax writes (inference: OpenMoeModel sets it).
  bool split_16bit_probs = true;
  // Benchmarks only (generate_benchmark --leave_out): the kinds of work, bits of LeaveOut, that a
  // step of one new token per row (a decode step; also a one-token prompt) skips, so that the
  // step's time without them shows what they cost inside the replayed graph, where kernels
  // overlap and a profiler's serialised kernel times do not apply. The outputs are then wrong.
  uint32_t decode_leave_out = 0;
};

enum LeaveOut : uint32_t {
  kLeaveOutNorms              = 1u << 0,  // the layers' residual-add + RMSNorm kernels (not the final norm)
  kLeaveOutAttentionCore      = 1u << 1,  // RoPE + cache append + attention (one kernel per layer)
  kLeaveOutAttentionProducts  = 1u << 2,  // q/k/v and o_proj
  kLeaveOutDenseMlp           = 1u << 3,  // gate/up, SwiGLU, down of the dense MLPs
  kLeaveOutMoe                = 1u << 4,  // router, top-2, experts, combine of the MoE layers
};

template <class ExecSpace>
class ExecutionContext {
 public:
  using execution_space = ExecSpace;
  using memory_space    = typename ExecSpace::memory_space;
  template <class T>
  using ScratchView = Kokkos::View<T*, memory_space, Kokkos::MemoryTraits<Kokkos::Unmanaged>>;

  explicit ExecutionContext(const ExecSpace& space = ExecSpace())
      : space_(space), shared_(std::make_shared<Shared>()) {}

  const ExecSpace& space() const { return space_; }
  Tuning& tuning() const { return shared_->tuning; }

  // At least `count` elements of the buffer `name` (one per name), allocated on first use, grown
  // when a call needs more (zero-filled when allocated if `zeroed`). Sets *grew when this call
  // (re)allocated it, so that callers can tell work that points at the old one.
  template <class T>
  ScratchView<T> Scratch(const std::string& name, size_t count, bool zeroed = false, bool* grew = nullptr) const {
    Kokkos::View<char*, memory_space>& buffer = shared_->scratch[name];
    const size_t bytes = count * sizeof(T);
    const bool grow = buffer.extent(0) < bytes;
    if (grow) {
      ++shared_->scratch_generation;
      buffer = zeroed ? Kokkos::View<char*, memory_space>(name, bytes)
                      : Kokkos::View<char*, memory_space>(Kokkos::view_alloc(Kokkos::WithoutInitializing, name), bytes);
    }
    if (grew != nullptr) *grew = grow;
    return ScratchView<T>(reinterpret_cast<T*>(buffer.data()), count);
  }
  // Bumped whenever a scratch buffer is (re)allocated: work captured in a CUDA graph points at
  // the old buffers and must not be replayed across a change.
  uint64_t scratch_generation() const { return shared_->scratch_generation; }

  // Buffers that a repeated computation (a training step) takes and gives back by reference count
  // (buffer_pool.h); shared by the copies of this context. Reuse is ordered by space()'s stream
  // only: take from it only on that stream (not from an OnStream copy), and join other streams
  // that used a buffer before dropping it.
  BufferPool<memory_space>& Pool() const { return shared_->pool; }

  // This context's arena, tuning and cuBLAS handle on `space`; cuBLAS calls use `bytes` of
  // workspace at `cublas_workspace` (nullptr: the handle's own).
  ExecutionContext OnStream(const ExecSpace& space, void* cublas_workspace = nullptr, size_t bytes = 0) const {
    ExecutionContext other(*this);
    other.space_ = space, other.cublas_workspace_ = cublas_workspace, other.cublas_workspace_bytes_ = bytes;
    return other;
  }

#if defined(KOKKOS_ENABLE_CUDA)
  // The context's cuBLAS handle bound to space()'s stream and this context's workspace; nullptr
  // when cuBLAS could not be set up (see CublasHandle::Bind).
  cublasHandle_t Cublas() const {
    static_assert(std::is_same_v<ExecSpace, Kokkos::Cuda>, "cuBLAS is for CUDA contexts");
    return shared_->cublas.Bind(space_.cuda_stream(), cublas_workspace_, cublas_workspace_bytes_);
  }
#endif

 private:
  struct Shared {
    std::map<std::string, Kokkos::View<char*, memory_space>> scratch;
    uint64_t scratch_generation = 0;
    BufferPool<memory_space> pool;
    Tuning tuning;
#if defined(KOKKOS_ENABLE_CUDA)
    CublasHandle cublas;
#endif
  };
  ExecSpace space_;
  std::shared_ptr<Shared> shared_;
  void* cublas_workspace_ = nullptr;
  size_t cublas_workspace_bytes_ = 0;
};

}  // namespace openmoe::kernels

#endif  // KERNELS_EXECUTION_CONTEXT_H_

// File: parallel/expert_parallel_dispatcher.h
// Expert parallelism behind openmoe's TokenDispatcher seam (the `ep` plugin): the E experts are
// split over the P ranks of a communicator, rank r owning experts [r * E/P, (r + 1) * E/P).
// Each rank routes its own tokens (its own routing group: capacity C from its own token count,
// which must be the same C on every rank: equal counts), then
//
//   Dispatch:  x [N, H] --kernels::Dispatch--> send [E * C, H] = [P, E/P, C, H] (rows grouped by
//              owner, since owner p's experts are contiguous) --AllToAll--> recv [P, E/P, C, H]
//              (recv[p] = rank p's rows for my experts) --block transpose--> dispatched
//              [E/P, P, C, H]: each local expert's P * C rows, rank-major, slot order inside
//              (rows_per_expert(C) = P * C);
//   experts:   the model's loop over its local experts on those rows;
//   Combine:   expert_out [E/P, P, C, H] --transpose--> [P, E/P, C, H] --AllToAll--> [E * C, H]
//              (the outputs of every expert for my tokens, global expert order) --kernels::Combine.
//
// The backward runs the mirror exchanges: CombineBackward brings the expert outputs for my tokens
// back again (one extra AllToAll: the dispatcher keeps no state between calls, so activation
// recomputation and any layer order just work), computes d_out for my tokens and dprobs with
// kernels::CombineBackward, and sends d_out to the experts' owners like Dispatch; DispatchBackward
// returns the owners' d_dispatched like Combine, then kernels::DispatchBackward. Each owned expert's
// weight gradient therefore sums the contributions of every rank's tokens (see the trainer's
// gradient hook for the 1/P).
//
// Every exchange has equal counts (E/P * C * H elements per peer, whatever the routing): an expert
// that receives no tokens from some rank receives that rank's zero-filled slots, so no rank ever
// waits for a message that is not sent (the upstream hang of variable-count exchanges cannot
// happen). The price is sending empty slots.
//
// Overlap (--comm_overlap; Create's overlap_chunks K > 1): RunExpertBlock and RunExpertBlockBackward
// split the local experts into K' = min(K, E/P) consecutive chunks (chunk j: local experts
// [j E/P / K', (j + 1) E/P / K')) and exchange each chunk's rows with an all-to-all of its own:
//
//   forward:  x --kernels::Dispatch--> mine [P, E/P, C, H]; then on the communication stream, for each
//             chunk j: its blocks mine[:, chunk j] --AllToAll--> its experts' rows of dispatched;
//             on the compute stream, for each chunk j (after its rows arrived): the model's experts of
//             chunk j; then on the communication stream its rows of expert_out --AllToAll--> the
//             chunk's blocks of mine_out [P, E/P, C, H]; after the last: kernels::Combine(mine_out).
//   backward: the expert outputs back and kernels::CombineBackward as above (whole), then the same
//             pipeline with d_out of my tokens -> d_expert_out, the model's expert backward per chunk,
//             d_dispatched -> my tokens' rows, kernels::DispatchBackward.
//
// So chunk j + 1's rows travel while chunk j's experts compute, and chunk j's outputs travel while
// chunk j + 1's compute. On CUDA the exchanges run on a stream of their own, ordered against the
// model's stream by events (comm_stream.h); on host ranks the same order runs synchronously. Why
// chunks of experts and not of the capacity dimension: each expert still runs its products once on
// all of its P * C rows, the same calls as without overlap (and its weight gradient one sum over
// the same rows in the same order), so the results are the same bits by construction, whatever the
// GEMM library does with other row counts; splitting C would run every expert K times on C / K rows
// (smaller GEMMs, results exact only for a row-independent GEMM, and the weight gradients could not
// be chunked without changing their summation order). The price: at most E/P chunks (none with one
// local expert), and each chunk's all-to-all is E/P / K' of the whole (the same bytes in all).
// Every chunk's exchange has equal counts, so an expert that gets no tokens still exchanges its
// zero-filled slots: no rank waits for a message that is not sent.
//
// Collectives: every Dispatch, Combine, CombineBackward and DispatchBackward is collective over
// the communicator (every rank calls them in the same order: the same layers, forward then backward).
// Dispatch also checks, with one small all-reduce, that every rank has the same capacity.
#ifndef OPENMOE_PARALLEL_EXPERT_PARALLEL_DISPATCHER_H_
#define OPENMOE_PARALLEL_EXPERT_PARALLEL_DISPATCHER_H_

#include <algorithm>
#include <cstdint>
#include <memory>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "openmoe/comm/communicator.h"
#include "openmoe/core/bf16.h"
#include "openmoe/core/tensor_types.h"
#include "openmoe/token_dispatcher.h"
#include "parallel/comm_stream.h"

namespace openmoe::parallel {

template <class ExecSpace>
class ExpertParallelDispatcher final : public TokenDispatcher<ExecSpace> {
 public:
  // InvalidArgument unless num_experts > 0 is divisible by comm->size() and overlap_chunks >= 1.
  // overlap_chunks: 1, one exchange each way; K > 1, the expert block pipelined over min(K, E/P)
  // chunks of local experts (see above). Every rank of the communicator passes the same value.
  static absl::StatusOr<std::shared_ptr<ExpertParallelDispatcher>> Create(
      std::shared_ptr<comm::Communicator<ExecSpace>> comm, int64_t num_experts, int64_t overlap_chunks = 1);

  int ep_size() const { return comm_->size(); }
  // The chunks the expert block runs in: min(overlap_chunks, E/P); 1 = no overlap.
  int64_t overlap_chunks() const { return chunks_; }
  int64_t first_local_expert() const override { return int64_t(comm_->rank()) * local_; }
  // num_experts / P (the model passes its config's E: the one given to Create).
  int64_t local_experts(int64_t num_experts) const override { return num_experts / comm_->size(); }
  int64_t rows_per_expert(int64_t capacity) const override { return int64_t(comm_->size()) * capacity; }

#define OPENMOE_EP_DISPATCH_METHODS_(T)                                                                            \
  absl::Status Dispatch(const ExecSpace& space, ConstMatrix<T, ExecSpace> x, ConstMatrix<int32_t, ExecSpace> experts, \
                        ConstMatrix<int32_t, ExecSpace> rank, int64_t capacity,                                     \
                        Matrix<T, ExecSpace> dispatched) override;                                                  \
  absl::Status Combine(const ExecSpace& space, ConstMatrix<T, ExecSpace> expert_out,                               \
                       ConstMatrix<float, ExecSpace> probs, ConstMatrix<int32_t, ExecSpace> experts,               \
                       ConstMatrix<int32_t, ExecSpace> rank, int64_t capacity, Matrix<T, ExecSpace> y) override;
  using typename TokenDispatcher<ExecSpace>::ExpertRange;
#define OPENMOE_EP_EXPERT_BLOCK_METHOD_(T)                                                                          \
  absl::Status RunExpertBlock(const ExecSpace& space, ConstMatrix<T, ExecSpace> x, ConstMatrix<float, ExecSpace> probs, \
                              ConstMatrix<int32_t, ExecSpace> experts, ConstMatrix<int32_t, ExecSpace> rank,        \
                              int64_t capacity, Matrix<T, ExecSpace> dispatched, Matrix<T, ExecSpace> expert_out,    \
                              const ExpertRange& run_experts, Matrix<T, ExecSpace> y) override;
  OPENMOE_EP_DISPATCH_METHODS_(float)
  OPENMOE_EP_DISPATCH_METHODS_(bf16)
  OPENMOE_EP_DISPATCH_METHODS_(f16)
  OPENMOE_EP_EXPERT_BLOCK_METHOD_(float)
  OPENMOE_EP_EXPERT_BLOCK_METHOD_(bf16)
  OPENMOE_EP_EXPERT_BLOCK_METHOD_(f16)
#undef OPENMOE_EP_DISPATCH_METHODS_
#undef OPENMOE_EP_EXPERT_BLOCK_METHOD_

  absl::Status CombineBackward(const ExecSpace& space, ConstMatrix<float, ExecSpace> dy,
                               ConstMatrix<float, ExecSpace> expert_out, ConstMatrix<float, ExecSpace> probs,
                               ConstMatrix<int32_t, ExecSpace> experts, ConstMatrix<int32_t, ExecSpace> rank,
                               int64_t capacity, Matrix<float, ExecSpace> d_expert_out,
                               Matrix<float, ExecSpace> dprobs) override;
  absl::Status DispatchBackward(const ExecSpace& space, ConstMatrix<float, ExecSpace> d_dispatched,
                                ConstMatrix<int32_t, ExecSpace> experts, ConstMatrix<int32_t, ExecSpace> rank,
                                int64_t capacity, Matrix<float, ExecSpace> dx) override;
  absl::Status RunExpertBlockBackward(const ExecSpace& space, ConstMatrix<float, ExecSpace> dy,
                                      ConstMatrix<float, ExecSpace> expert_out, ConstMatrix<float, ExecSpace> probs,
                                      ConstMatrix<int32_t, ExecSpace> experts, ConstMatrix<int32_t, ExecSpace> rank,
                                      int64_t capacity, Matrix<float, ExecSpace> d_expert_out,
                                      Matrix<float, ExecSpace> dprobs, Matrix<float, ExecSpace> d_dispatched,
                                      const ExpertRange& run_experts_backward, Matrix<float, ExecSpace> dx) override;

 private:
  ExpertParallelDispatcher(std::shared_ptr<comm::Communicator<ExecSpace>> comm, int64_t num_experts, int64_t chunks)
      : comm_(std::move(comm)), experts_(num_experts), local_(num_experts / comm_->size()),
        chunks_(std::min(chunks, local_)) {}

  template <class T>
  absl::Status DispatchT(const ExecSpace& space, ConstMatrix<T, ExecSpace> x, ConstMatrix<int32_t, ExecSpace> experts,
                         ConstMatrix<int32_t, ExecSpace> rank, int64_t capacity, Matrix<T, ExecSpace> dispatched);
  template <class T>
  absl::Status CombineT(const ExecSpace& space, ConstMatrix<T, ExecSpace> expert_out, ConstMatrix<float, ExecSpace> probs,
                        ConstMatrix<int32_t, ExecSpace> experts, ConstMatrix<int32_t, ExecSpace> rank, int64_t capacity,
                        Matrix<T, ExecSpace> y);
  // mine [E * C, H] (this rank's rows for every expert, grouped by owner) -> owned [E/P * P * C, H]
  // (every rank's rows for my experts, expert-major): one AllToAll and a block transpose.
  template <class T>
  absl::Status ToOwners(const ExecSpace& space, ConstMatrix<T, ExecSpace> mine, int64_t capacity,
                        Matrix<T, ExecSpace> owned);
  // The reverse: owned [E/P * P * C, H] -> mine [E * C, H].
  template <class T>
  absl::Status FromOwners(const ExecSpace& space, ConstMatrix<T, ExecSpace> owned, int64_t capacity,
                          Matrix<T, ExecSpace> mine);
  // InvalidArgument unless `rows` == E/P * P * C rows of width `h` and x's token count matches.
  absl::Status CheckOwnedRows(const char* op, int64_t rows, int64_t capacity) const;
  // InvalidArgument unless every rank passes the same capacity (one small all-reduce; fences).
  absl::Status CheckSameCapacity(const ExecSpace& space, int64_t capacity);

  template <class T>
  absl::Status RunExpertBlockT(const ExecSpace& space, ConstMatrix<T, ExecSpace> x, ConstMatrix<float, ExecSpace> probs,
                               ConstMatrix<int32_t, ExecSpace> experts, ConstMatrix<int32_t, ExecSpace> rank,
                               int64_t capacity, Matrix<T, ExecSpace> dispatched, Matrix<T, ExecSpace> expert_out,
                               const ExpertRange& run_experts, Matrix<T, ExecSpace> y);
  // The overlap pipeline, after `mine` [P, E/P, C, H] (this rank's rows for every expert, grouped by
  // owner) is enqueued on `space`: per chunk of local experts, its blocks of mine -> its experts' rows
  // of `owned_in` [E/P * P * C, H] (AllToAll on the communication stream), run(chunk) on `space`, its
  // experts' rows of `owned_out` -> its blocks of `mine_out` [P, E/P, C, H] (AllToAll). When it
  // returns, work enqueued on `space` sees mine_out.
  template <class T>
  absl::Status ExchangeAroundExperts(const ExecSpace& space, ConstMatrix<T, ExecSpace> mine, int64_t capacity,
                                     Matrix<T, ExecSpace> owned_in, const ExpertRange& run,
                                     ConstMatrix<T, ExecSpace> owned_out, Matrix<T, ExecSpace> mine_out);

  std::shared_ptr<comm::Communicator<ExecSpace>> comm_;
  int64_t experts_, local_, chunks_;
  CommStream<ExecSpace> comm_stream_;  // the exchanges of the overlap pipeline (CUDA: its own stream)
};

}  // namespace openmoe::parallel

#endif  // OPENMOE_PARALLEL_EXPERT_PARALLEL_DISPATCHER_H_

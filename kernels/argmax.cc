#include "kernels/argmax.h"

#include "absl/strings/str_cat.h"
#include "kernels/instantiate.h"
#include "kernels/launch.h"

namespace openmoe::kernels {
namespace {

// A key whose unsigned order is (value ascending, then index descending): the maximum key is
// the first index of the largest value. Floats map to order-preserving unsigned integers (sign
// bit flipped for positives, all bits for negatives); NaN maps above every number.
KOKKOS_INLINE_FUNCTION uint64_t ArgmaxKey(float value, int64_t index) {
  union {
    float f;
    uint32_t u;
  } bits;
  bits.f = value;
  uint32_t ordered = (bits.u & 0x80000000u) ? ~bits.u : (bits.u | 0x80000000u);
  if (value != value) ordered = 0xFFFFFFFFu;  // NaN
  return (uint64_t(ordered) << 32) | uint64_t(0xFFFFFFFFu - uint32_t(index));
}

constexpr int64_t kChunk = 4096;  // logits per team in the first pass


}  // namespace

template <class T, class ExecSpace>
absl::Status RowArgmax(const ExecutionContext<ExecSpace>& ctx, ConstMatrix<T, ExecSpace> logits, int64_t allowed,
                       Vector<int64_t, ExecSpace> ids) {
  const auto& space = ctx.space();
  const int64_t B = logits.extent(0);
  if (allowed <= 0 || allowed > int64_t(logits.extent(1)) || allowed > int64_t(0xFFFFFFFFu) ||
      ids.extent(0) != size_t(B)) {
    return absl::InvalidArgumentError(absl::StrCat("RowArgmax: allowed ", allowed, " must be in [1, ",
                                                   logits.extent(1), "] and ids '", ids.label(), "' [", B, "]"));
  }
  // Two passes: teams over (row, chunk of kChunk logits), then one team per row over its chunks.
  using Member = typename Kokkos::TeamPolicy<ExecSpace>::member_type;
  const int64_t chunks = (allowed + kChunk - 1) / kChunk;
  auto keys = ctx.template Scratch<uint64_t>("argmax.chunks", size_t(B * chunks));
  DependentParallelFor(
      "openmoe::kernels::RowArgmaxChunks", RowTeams(space, B * chunks, 256), KOKKOS_LAMBDA(const Member& team) {
        const int64_t b = team.league_rank() / chunks, chunk = team.league_rank() % chunks;
        const int64_t j0 = chunk * kChunk, j1 = j0 + kChunk < allowed ? j0 + kChunk : allowed;
        uint64_t best = 0;
        Kokkos::parallel_reduce(
            Kokkos::TeamThreadRange(team, j0, j1),
            [&](const int64_t j, uint64_t& m) {
              const uint64_t key = ArgmaxKey(ToFloat(logits(b, j)), j);
              m = key > m ? key : m;
            },
            Kokkos::Max<uint64_t>(best));
        Kokkos::single(Kokkos::PerTeam(team), [&]() { keys(team.league_rank()) = best; });
      });
  DependentParallelFor(
      "openmoe::kernels::RowArgmaxRows", RowTeams(space, B, 64), KOKKOS_LAMBDA(const Member& team) {
        const int64_t b = team.league_rank();
        uint64_t best   = 0;
        Kokkos::parallel_reduce(
            Kokkos::TeamThreadRange(team, chunks),
            [&](const int64_t c, uint64_t& m) { m = keys(b * chunks + c) > m ? keys(b * chunks + c) : m; },
            Kokkos::Max<uint64_t>(best));
        Kokkos::single(Kokkos::PerTeam(team), [&]() { ids(b) = int64_t(0xFFFFFFFFu - uint32_t(best & 0xFFFFFFFFu)); });
      });
  return absl::OkStatus();
}

#define OPENMOE_INSTANTIATE_ARGMAX(Space, T)                                                    \
  template absl::Status RowArgmax<T, Space>(const ExecutionContext<Space>&, ConstMatrix<T, Space>, int64_t,       \
                                            Vector<int64_t, Space>);
OPENMOE_FOR_EACH_SPACE_AND_DTYPE(OPENMOE_INSTANTIATE_ARGMAX)

}  // namespace openmoe::kernels

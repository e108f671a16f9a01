// File: kernels/buffer_pool.h
// Buffers of a repeated computation (a training step) kept from one repetition to the next, so
// that a step allocates nothing once it has run once. On CUDA each Kokkos View allocation is a
// cudaMalloc and each release a cudaFree, which waits for the whole device: a training step of
// ~300 activation buffers spent most of its time in those waits and in the zero-fill kernel of
// every new View (profile of issue 19, benchmarks/RESULTS.md).
//
//   BufferPool<MemSpace> pool;
//   Matrix<float, Space> dx = pool.Take<float>(space, "dx", N, H, /*zeroed=*/true);
//   ...                    // dx and its copies hold the buffer; when the last one is dropped,
//   pool.Trim();           // the buffer is free for the next Take of the same type and shape.
//
// Lifetime is Kokkos' own reference count: the pool keeps one reference to each buffer, and a
// buffer is free again when nothing else holds one (use_count() == 1). The same type and shape is
// handed out again (steps repeat their shapes); Trim() frees the buffers that no Take asked for
// since the previous Trim, so the pool holds what one repetition uses and no more. That memory stays
// taken between repetitions; Clear() gives back what nothing holds (TrainableModel::
// ReleaseStepBuffers, before a checkpoint's gathers).
//
// Reuse is ordered by the stream, not by the host: a buffer released while kernels that read it
// are still queued may be handed out at once, to work queued after them on the same execution
// space instance. Work on other streams must be joined to that one before its buffers are
// dropped (as the expert-parallel dispatcher's overlap streams are). Not thread-safe: one pool
// per execution context, used by one thread.
#ifndef KERNELS_BUFFER_POOL_H_
#define KERNELS_BUFFER_POOL_H_

#include <cstdint>
#include <cstring>
#include <map>
#include <memory>
#include <string>
#include <tuple>
#include <type_traits>
#include <typeindex>
#include <vector>

#include <Kokkos_Core.hpp>

namespace openmoe::kernels {

// Sets every element of a contiguous View to zero bits (0 for every arithmetic type and for
// bf16 / f16), ordered on `space`: one cudaMemsetAsync on CUDA (Kokkos 3.4's deep_copy(view, 0)
// runs one element per thread in blocks of 64, a fraction of the bandwidth), a parallel fill on
// host backends.
template <class ExecSpace, class View>
void ZeroFill(const ExecSpace& space, const View& view) {
  using Value = typename View::non_const_value_type;
  if (view.span() == 0) return;
#if defined(KOKKOS_ENABLE_CUDA)
  if constexpr (std::is_same_v<ExecSpace, Kokkos::Cuda>) {
    if (view.span_is_contiguous()) {
      if (cudaMemsetAsync(view.data(), 0, view.span() * sizeof(Value), space.cuda_stream()) != cudaSuccess) {
        Kokkos::abort("ZeroFill: cudaMemsetAsync failed");
      }
      return;
    }
  }
#endif
  Value zero;
  std::memset(static_cast<void*>(&zero), 0, sizeof(Value));
  Kokkos::deep_copy(space, view, zero);
}

template <class MemSpace>
class BufferPool {
 public:
  template <class T>
  using Matrix = Kokkos::View<T**, Kokkos::LayoutRight, MemSpace>;
  template <class T>
  using Vector = Kokkos::View<T*, Kokkos::LayoutRight, MemSpace>;

  // A [rows, cols] matrix of T: a pooled one of that shape that nothing else holds, else a new
  // one (labelled `label`; a reused buffer keeps the label it was made with). Zero-filled on
  // `space` when `zeroed`; otherwise its elements are whatever they were (uninitialised when new).
  template <class T, class ExecSpace>
  Matrix<T> Take(const ExecSpace& space, const char* label, int64_t rows, int64_t cols, bool zeroed) {
    return TakeView<Matrix<T>>(space, label, {rows, cols}, zeroed);
  }
  // The same for a vector of n elements.
  template <class T, class ExecSpace>
  Vector<T> TakeVector(const ExecSpace& space, const char* label, int64_t n, bool zeroed) {
    return TakeView<Vector<T>>(space, label, {n, -1}, zeroed);
  }

  // Frees the free buffers that no Take has asked for since the previous Trim (call once per
  // repetition, before it).
  void Trim() {
    FreeUnheld([this](const Entry& entry) { return entry.generation != generation_; });
    ++generation_;
  }
  // Frees every buffer that nothing else holds.
  void Clear() {
    FreeUnheld([](const Entry&) { return true; });
  }
  int64_t buffers() const {
    int64_t n = 0;
    for (const auto& [key, entries] : shelves_) n += int64_t(entries.size());
    return n;
  }
  int64_t bytes() const {
    int64_t n = 0;
    for (const auto& [key, entries] : shelves_)
      for (const auto& entry : entries) n += entry->bytes;
    return n;
  }

 private:
  struct Entry {
    virtual ~Entry() = default;
    virtual bool in_use() const = 0;  // held outside the pool
    int64_t bytes = 0;
    uint64_t generation = 0;  // of the last Take that handed it out
  };
  template <class View>
  struct Held final : Entry {
    explicit Held(View v) : view(std::move(v)) {}
    bool in_use() const override { return view.use_count() > 1; }
    View view;
  };
  // (element type and rank, extent 0, extent 1 or -1)
  using Key = std::tuple<std::type_index, int64_t, int64_t>;

  // Frees the buffers that nothing outside the pool holds and `unwanted` selects.
  template <class Unwanted>
  void FreeUnheld(const Unwanted& unwanted) {
    for (auto& [key, entries] : shelves_) {
      std::vector<std::unique_ptr<Entry>> kept;
      for (auto& entry : entries) {
        if (entry->in_use() || !unwanted(*entry)) kept.push_back(std::move(entry));
      }
      entries = std::move(kept);
    }
  }

  template <class View, class ExecSpace>
  View TakeView(const ExecSpace& space, const char* label, std::pair<int64_t, int64_t> extents, bool zeroed) {
    std::vector<std::unique_ptr<Entry>>& entries = shelves_[Key(std::type_index(typeid(View)), extents.first, extents.second)];
    View view;
    for (auto& entry : entries) {
      if (!entry->in_use()) {
        entry->generation = generation_;
        view = static_cast<Held<View>*>(entry.get())->view;  // the key holds the type
        break;
      }
    }
    if (view.data() == nullptr) {
      if constexpr (View::rank == 2) {
        view = View(Kokkos::view_alloc(Kokkos::WithoutInitializing, std::string(label)), extents.first, extents.second);
      } else {
        view = View(Kokkos::view_alloc(Kokkos::WithoutInitializing, std::string(label)), extents.first);
      }
      if (view.span() == 0) return view;  // nothing to pool
      auto entry = std::make_unique<Held<View>>(view);
      entry->bytes = int64_t(view.span() * sizeof(typename View::value_type));
      entry->generation = generation_;
      entries.push_back(std::move(entry));
    }
    if (zeroed) ZeroFill(space, view);
    return view;
  }

  std::map<Key, std::vector<std::unique_ptr<Entry>>> shelves_;
  uint64_t generation_ = 0;
};

}  // namespace openmoe::kernels

#endif  // KERNELS_BUFFER_POOL_H_

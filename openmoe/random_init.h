// File: openmoe/random_init.h
// Upstream's initialiser for a fresh model (spec 2.6), the one both models use: every Linear and
// the embedding ~ N(0, InitStd) (0.02; experts' wi_gate / wi_up and the router sqrt(0.1 / H),
// experts' wo sqrt(0.1 / I)), the embedding's padding row 0, RMSNorm weights 1.
//
// Draw i of a tensor is a counter-based hash of (seed, tensor name, i) through Box-Muller, so the
// weights do not depend on the backend, the thread count or the order of the tensors, and are
// drawn where they live (on the GPU for CUDA models).
//
//   FillInitialValues<T>(space, config, spec, seed, weights);   // weights [spec.numel()]
//   FillInitialValues<T>(space, config, spec, seed, part, first);  // part: elements [first, first + n)
#ifndef OPENMOE_RANDOM_INIT_H_
#define OPENMOE_RANDOM_INIT_H_

#include <cstdint>

#include "openmoe/checkpoint_table.h"
#include "openmoe/config.h"
#include "openmoe/core/tensor_types.h"

namespace openmoe {

template <class T, class ExecSpace>
void FillInitialValues(const ExecSpace& space, const OpenMoeConfig& config, const TensorSpec& spec, uint64_t seed,
                       Vector<T, ExecSpace> weights, int64_t first = 0);

}  // namespace openmoe

#endif  // OPENMOE_RANDOM_INIT_H_

// CPU kernel of commlib::ef_topk_ (contract in ../topk.h), in two passes
// over the vector plus the selection's own sample:
//   1. e += g, in parallel over fixed chunks (float adds, the bits of
//      torch's e.add_(g));
//   2. topk_threshold on e: one streaming pass that collects the candidates
//      above a sampled threshold, then an exact select among them;
//   3. e[i] = 0 at the k selected indices (k writes).
// The selection is topk_threshold_cpu itself, so the set, tie rule and
// values are those of topk_threshold / topk_magnitude.
#include "../topk.h"

#include <algorithm>

#include <ATen/Parallel.h>
#include <torch/library.h>

namespace commlib {

namespace {
constexpr int64_t kAddGrain = 1 << 16;
}  // namespace

std::tuple<at::Tensor, at::Tensor> ef_topk_cpu(const at::Tensor& e, const at::Tensor& g, int64_t k, int64_t seed) {
  check_ef_topk_args(e, g, k);
  float* residual = e.data_ptr<float>();
  const float* grad = g.data_ptr<float>();
  at::parallel_for(0, e.numel(), kAddGrain, [&](int64_t begin, int64_t end) {
    for (int64_t i = begin; i < end; ++i) {
      residual[i] = residual[i] + grad[i];
    }
  });
  std::tuple<at::Tensor, at::Tensor> picked = topk_threshold_cpu(e, k, seed);
  const int32_t* idx = std::get<1>(picked).data_ptr<int32_t>();
  at::parallel_for(0, k, kAddGrain, [&](int64_t begin, int64_t end) {
    for (int64_t t = begin; t < end; ++t) {
      residual[idx[t]] = 0.0f;
    }
  });
  return picked;
}

TORCH_LIBRARY_IMPL(commlib, CPU, m) { m.impl("ef_topk_", &ef_topk_cpu); }

}  // namespace commlib

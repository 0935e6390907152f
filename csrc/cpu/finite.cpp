// CPU kernel of commlib::all_finite: whether a float32 tensor holds no NaN
// and no ±Inf, the check every exchange runs on its gradients each step.
//
// A float32 is NaN or ±Inf exactly when its exponent bits are all ones, so
// the kernel max-reduces (bits & 0x7F800000) over the tensor: the maximum
// equals 0x7F800000 exactly when some element is not finite. The reduction
// is an integer max (one vector op per 16 elements with AVX-512), read-only,
// allocation-free. In parallel over chunks; a chunk that finds a non-finite
// element tells the others to stop early. The answer does not depend on the
// thread count or on where the chunks are cut.
#include <algorithm>
#include <atomic>
#include <cstdint>
#include <cstring>

#include <ATen/Parallel.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/scalar_tensor.h>
#include <c10/util/Exception.h>
#include <torch/library.h>

namespace commlib {
namespace {

constexpr uint32_t kExponentBits = 0x7F800000u;
constexpr int64_t kChunk = int64_t{1} << 14;         // elements between early-exit checks
constexpr int64_t kParallelGrain = int64_t{1} << 18;  // below this many elements, one thread

// max over t < len of (bits[t] & kExponentBits); vectorizes as an unsigned max reduction.
uint32_t max_exponent(const uint32_t* __restrict__ bits, int64_t len) {
  uint32_t acc = 0;
  for (int64_t t = 0; t < len; ++t) {
    acc = std::max(acc, bits[t] & kExponentBits);
  }
  return acc;
}

at::Tensor all_finite_cpu(const at::Tensor& x) {
  TORCH_CHECK_VALUE(x.scalar_type() == at::kFloat, "all_finite: x must be float32, got ", x.scalar_type());
  TORCH_CHECK_VALUE(x.is_contiguous(), "all_finite: x must be contiguous");
  static_assert(sizeof(float) == sizeof(uint32_t), "float32 is 32 bits");
  const auto* bits = reinterpret_cast<const uint32_t*>(x.data_ptr<float>());
  std::atomic<bool> bad{false};
  at::parallel_for(0, x.numel(), kParallelGrain, [&](int64_t first, int64_t last) {
    for (int64_t begin = first; begin < last; begin += kChunk) {
      if (bad.load(std::memory_order_relaxed)) {
        return;
      }
      if (max_exponent(bits + begin, std::min(kChunk, last - begin)) == kExponentBits) {
        bad.store(true, std::memory_order_relaxed);
        return;
      }
    }
  });
  return at::scalar_tensor(!bad.load(), x.options().dtype(at::kBool));
}

}  // namespace

TORCH_LIBRARY_IMPL(commlib, CPU, m) { m.impl("all_finite", &all_finite_cpu); }

}  // namespace commlib

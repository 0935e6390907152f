// Launch geometry shared by the CUDA kernels: 256 threads per block and a
// grid size check (one launch covers at most 2^31 - 1 blocks).
#pragma once

#include <cstdint>

#include <c10/util/Exception.h>

namespace commlib {

constexpr int kThreadsPerBlock = 256;

inline unsigned int blocks_for(int64_t threads, const char* op) {
  const int64_t blocks = (threads + kThreadsPerBlock - 1) / kThreadsPerBlock;
  TORCH_CHECK(blocks <= 0x7fffffff, op, ": input too large for one launch (", threads, " threads)");
  return static_cast<unsigned int>(blocks < 1 ? 1 : blocks);
}

}  // namespace commlib

// Host-side argument checks and readers shared by the CPU and CUDA wrappers of every op.
#pragma once
#include <ATen/ATen.h>

#include "common/philox.h"
#include "common/row_layout.h"

namespace gencore {

// Wraps `dim` into [0, ndim) with a clear error, then views the tensor as (outer, n, inner).
inline RowLayout checked_row_layout(const at::Tensor& t, int64_t dim, const char* op) {
  const int64_t nd = t.dim();
  TORCH_CHECK(nd > 0, op, ": expected a tensor with at least one dimension");
  TORCH_CHECK(dim >= -nd && dim < nd, op, ": dim ", dim, " is out of range for a ", nd,
              "-d tensor (expected ", -nd, " <= dim < ", nd, ")");
  return row_layout(t.sizes().data(), nd, dim < 0 ? dim + nd : dim);
}

// The (seed, offset) pair that the Python side draws from a torch generator.
inline PhiloxKey read_philox_key(const at::Tensor& seed_offset) {
  TORCH_CHECK(seed_offset.device().is_cpu() && seed_offset.scalar_type() == at::kLong &&
                  seed_offset.numel() == 2,
              "seed_offset must be a CPU int64 tensor of two elements (seed, offset), got ",
              seed_offset.scalar_type(), " on ", seed_offset.device(), " with ",
              seed_offset.numel(), " elements");
  const at::Tensor s = seed_offset.contiguous();
  const int64_t* p = s.const_data_ptr<int64_t>();
  return PhiloxKey{static_cast<uint64_t>(p[0]), static_cast<uint64_t>(p[1])};
}

inline void check_floating(const at::Tensor& t, const char* op, const char* name) {
  const auto st = t.scalar_type();
  TORCH_CHECK(st == at::kFloat || st == at::kDouble || st == at::kBFloat16 || st == at::kHalf, op,
              ": ", name, " must be float32, float64, bfloat16 or float16, got ", st);
}

}  // namespace gencore

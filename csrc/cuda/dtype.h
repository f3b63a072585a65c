// Maps a tensor's dtype to the torch-free FloatType the kernel launchers take.
#pragma once
#include <ATen/ATen.h>

#include "../common/float_type.h"

namespace gencore {

inline FloatType float_type_of(const at::Tensor& t) {
  switch (t.scalar_type()) {
    case at::kFloat: return FloatType::kFloat32;
    case at::kDouble: return FloatType::kFloat64;
    case at::kBFloat16: return FloatType::kBFloat16;
    case at::kHalf: return FloatType::kFloat16;
    default: TORCH_CHECK(false, "expected float32, float64, bfloat16 or float16, got ", t.scalar_type());
  }
}

}  // namespace gencore

// The floating-point element types the CUDA launchers take: the torch-free twin of at::ScalarType.
#pragma once

namespace gencore {

enum class FloatType { kFloat32, kFloat64, kBFloat16, kFloat16 };

}  // namespace gencore

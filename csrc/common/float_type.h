// The floating-point element types the CUDA launchers take: the torch-free twin of at::ScalarType.
#pragma once
#include "isa_namespace.h"

GENCORE_NAMESPACE_BEGIN

enum class FloatType { kFloat32, kFloat64, kBFloat16, kFloat16 };

GENCORE_NAMESPACE_END

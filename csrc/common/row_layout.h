// Views a tensor as (outer, n, inner) around one dimension: the layout of every row-wise op.
// Element j of row (o, i) sits at the row-major index (o * n + j) * inner + i. No torch.
#pragma once
#include <cstdint>
#include "isa_namespace.h"

GENCORE_NAMESPACE_BEGIN

struct RowLayout {
  int64_t outer, n, inner;
};

// `dim` must already be in [0, ndim).
inline RowLayout row_layout(const int64_t* sizes, int64_t ndim, int64_t dim) {
  RowLayout L{1, sizes[dim], 1};
  for (int64_t d = 0; d < dim; ++d) L.outer *= sizes[d];
  for (int64_t d = dim + 1; d < ndim; ++d) L.inner *= sizes[d];
  return L;
}

GENCORE_NAMESPACE_END

// The CUDA execution model's entry points that every kernel file uses: the block's dynamic shared
// memory and the kernel launch. Torch-free. Kernel files launch through launch_kernel (never
// `<<<...>>>` directly) and take dynamic shared memory from dynamic_smem(), so that
// tests/cuda_emulator/emu_sm80.h, which defines this header's include guard first, can run them on
// the CPU unchanged.
#ifndef GENCORE_CUDA_LAUNCH_CUH
#define GENCORE_CUDA_LAUNCH_CUH

#include <cuda_runtime.h>

#include <cstddef>

namespace gencore {

// The block's dynamic shared memory (sized at launch), 128-byte aligned.
__device__ __forceinline__ unsigned char* dynamic_smem() {
  extern __shared__ __align__(128) unsigned char gencore_dynamic_smem[];
  return gencore_dynamic_smem;
}

// kernel<<<grid, block, smem, stream>>>(args...), each argument converted to the kernel's
// parameter type; returns the launch error, if any.
template <typename... Params, typename... Args>
inline cudaError_t launch_kernel(void (*kernel)(Params...), dim3 grid, dim3 block, size_t smem,
                                 cudaStream_t stream, const Args&... args) {
  static_assert(sizeof...(Params) == sizeof...(Args), "launch_kernel: argument count");
  kernel<<<grid, block, smem, stream>>>(static_cast<Params>(args)...);
  return cudaGetLastError();
}

}  // namespace gencore

#endif  // GENCORE_CUDA_LAUNCH_CUH

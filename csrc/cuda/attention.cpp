// Flash-style attention, CUDA wrapper: checks, device guard, current stream, workspaces, launch.
// One kernel family, torch-free: attention_mma_kernels.cu (tensor cores, bfloat16/float16, head dims
// 64, 96, 128, sm_80+), with every keyword feature (window, softcap, document_ids, attn_mask,
// dropout) as the CPU kernel has them. Every other case is a clear error here; impl="auto" (gencore/ops/auto.py)
// sends those to PyTorch's SDPA with gencore's semantics.
#include <ATen/ATen.h>
#include <c10/cuda/CUDAStream.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <torch/library.h>

#include <limits>

#include "../checks.h"
#include "attention_mma_kernels.h"

namespace gencore {
namespace {

// The kernels copy rows 16 bytes at a time (cp.async): the head dim contiguous, every row 16-byte
// aligned. A view that breaks that (an odd storage offset, a row stride that is not a multiple of 8
// elements) is copied to fresh memory; views of a fused QKV projection, say, are not.
at::Tensor mma_rows(const at::Tensor& t) {
  bool ok = t.stride(3) == 1 && reinterpret_cast<uintptr_t>(t.const_data_ptr()) % 16 == 0;
  for (int d = 0; d < 3; ++d) ok = ok && (t.size(d) == 1 || t.stride(d) % 8 == 0);
  return ok ? t : t.clone(at::MemoryFormat::Contiguous);
}

// The device's compute capability major, read once per device.
int capability_major(int device) {
  static int cache[64] = {};
  TORCH_CHECK(device >= 0 && device < 64, "attention: CUDA device index ", device, " out of range");
  if (cache[device] == 0)
    C10_CUDA_CHECK(cudaDeviceGetAttribute(&cache[device], cudaDevAttrComputeCapabilityMajor, device));
  return cache[device];
}

void set_strides(int64_t* dst, const at::Tensor& t) {
  dst[0] = t.stride(0);
  dst[1] = t.stride(1);
  dst[2] = t.stride(2);
}

void check_cuda(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v,
                const c10::optional<at::Tensor>& mask, const AttentionGeometry& g, const char* op) {
  TORCH_CHECK(q.is_cuda() && k.device() == q.device() && v.device() == q.device(), op,
              ": q, k, v must be on one CUDA device, got ", q.device(), ", ", k.device(), ", ",
              v.device());
  TORCH_CHECK(cuda::attention_mma_covers(float_type_of(q), static_cast<int>(g.D)), op,
              ": the CUDA kernel runs bfloat16 and float16 with head dim 64, 96 or 128 (tensor cores), got ",
              q.scalar_type(), " with head dim ", g.D, "; impl=\"auto\" or impl=\"sdpa\" runs this case on "
              "PyTorch's scaled_dot_product_attention with gencore's semantics");
  const int major = capability_major(q.get_device());
  TORCH_CHECK(major >= 8, op, ": the CUDA kernel needs compute capability 8.0 or newer (mma.sync on tensor cores), "
              "this GPU is ", major, ".x: use impl=\"auto\" or impl=\"sdpa\"");
  TORCH_CHECK(g.Sq + 2 * g.Sk + 256 < std::numeric_limits<int>::max(), op,
              ": sequence too long");  // the kernels' key positions, window ends included, are ints
  (void)mask;
}

// The keyword features (window, softcap, document_ids, attn_mask, dropout), checked as on the CPU,
// into the kernels' parameters; `keep` holds the tensors the kernels read (document ids as int64,
// attn_mask with a contiguous key dim) and the tile-info workspace.
struct FeatureTensors {
  at::Tensor docs, mask, tile_info;
};

void set_features(cuda::AttentionParams& p, const at::Tensor& q, const AttentionGeometry& g,
                  int64_t window_left, int64_t window_right, double softcap,
                  const c10::optional<at::Tensor>& document_ids,
                  const c10::optional<at::Tensor>& attn_mask, double dropout_p,
                  const c10::optional<at::Tensor>& seed_offset, FeatureTensors& keep, const char* op) {
  const AttentionFeatures f = check_attention_features(q, g, window_left, window_right, softcap,
                                                       document_ids, attn_mask, dropout_p,
                                                       seed_offset, op);
  // A window side that reaches past every key is no bound (and keeps the kernels' int math exact).
  const int64_t reach = g.Sq + g.Sk;
  p.window_left = f.left >= reach ? -1 : static_cast<int>(f.left);
  p.window_right = f.right >= reach ? -1 : static_cast<int>(f.right);
  p.softcap = static_cast<float>(f.softcap);
  if (document_ids.has_value()) {
    keep.docs = document_ids->to(at::kLong).contiguous();
    p.document_ids = keep.docs.const_data_ptr<int64_t>();
  }
  if (attn_mask.has_value()) {
    keep.mask = attn_mask->stride(3) == 1 ? *attn_mask : attn_mask->contiguous();
    p.attn_mask = keep.mask.const_data_ptr<bool>();
    p.am_B = static_cast<int>(keep.mask.size(0));
    p.am_H = static_cast<int>(keep.mask.size(1));
    p.am_stride[0] = p.am_B == 1 ? 0 : keep.mask.stride(0);
    p.am_stride[1] = p.am_H == 1 ? 0 : keep.mask.stride(1);
    p.am_stride[2] = keep.mask.stride(2);
  }
  if (f.dropout_p > 0) {  // the CPU kernel's keep_row: uniform >= p in float32, kept x 1 / (1 - p)
    p.dropout_p = static_cast<float>(f.dropout_p);
    p.dropout_scale = static_cast<float>(1.0 / (1.0 - f.dropout_p));
    p.seed = f.key.seed;
    p.rng_offset = f.key.offset;
    p.seed_offset_dev = f.key_dev;  // null unless drawn on the device (CUDA-graph capture)
  }
  const size_t info = cuda::attention_tile_info_bytes(p);
  if (info > 0) {
    keep.tile_info = at::empty({static_cast<int64_t>(info)}, q.options().dtype(at::kByte));
    p.tile_info = keep.tile_info.mutable_data_ptr();
  }
}

cuda::AttentionParams make_params(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v,
                                  const c10::optional<at::Tensor>& mask, bool causal, double scale,
                                  const AttentionGeometry& g) {
  cuda::AttentionParams p{};
  p.q = q.const_data_ptr();
  p.k = k.const_data_ptr();
  p.v = v.const_data_ptr();
  set_strides(p.q_stride, q);
  set_strides(p.k_stride, k);
  set_strides(p.v_stride, v);
  p.key_padding_mask = mask.has_value() ? mask->const_data_ptr<bool>() : nullptr;
  p.B = static_cast<int>(g.B);
  p.H = static_cast<int>(g.H);
  p.Hkv = static_cast<int>(g.Hkv);
  p.Sq = static_cast<int>(g.Sq);
  p.Sk = static_cast<int>(g.Sk);
  p.D = static_cast<int>(g.D);
  p.causal = causal;
  p.scale = scale;
  return p;
}

std::tuple<at::Tensor, at::Tensor> attention_cuda(const at::Tensor& q_in, const at::Tensor& k_in,
                                                  const at::Tensor& v_in,
                                                  const c10::optional<at::Tensor>& key_padding_mask,
                                                  bool causal, double scale, int64_t window_left,
                                                  int64_t window_right, double softcap,
                                                  const c10::optional<at::Tensor>& document_ids,
                                                  const c10::optional<at::Tensor>& attn_mask,
                                                  double dropout_p,
                                                  const c10::optional<at::Tensor>& seed_offset,
                                                  const c10::optional<at::Tensor>& sinks_in) {
  const AttentionGeometry g = check_attention_inputs(q_in, k_in, v_in, key_padding_mask, scale, "attention");
  const at::Tensor sinks = check_attention_sinks(sinks_in, q_in, g.H, at::kFloat, "attention");
  check_attention_features(q_in, g, window_left, window_right, softcap, document_ids, attn_mask, dropout_p,
                           seed_offset, "attention");
  check_cuda(q_in, k_in, v_in, key_padding_mask, g, "attention");
  c10::cuda::OptionalCUDAGuard guard(q_in.device());
  const at::Tensor q = mma_rows(q_in), k = mma_rows(k_in), v = mma_rows(v_in);
  c10::optional<at::Tensor> mask;
  if (key_padding_mask.has_value()) mask = key_padding_mask->contiguous();
  at::Tensor out = at::empty({g.B, g.H, g.Sq, g.D}, q.options());
  at::Tensor lse = at::empty({g.B, g.H, g.Sq}, q.options().dtype(at::kFloat));
  if (out.numel() == 0) return {out, lse};
  if (g.Sk == 0) {
    out.zero_();
    if (sinks.defined()) lse.copy_(sinks.view({1, g.H, 1}).expand({g.B, g.H, g.Sq}));
    else lse.fill_(-std::numeric_limits<double>::infinity());
    return {out, lse};
  }
  cuda::AttentionParams p = make_params(q, k, v, mask, causal, scale, g);
  if (sinks.defined()) p.sinks = sinks.const_data_ptr<float>();
  FeatureTensors keep;
  set_features(p, q, g, window_left, window_right, softcap, document_ids, attn_mask, dropout_p,
               seed_offset, keep, "attention");
  p.out = out.mutable_data_ptr();
  p.lse = lse.mutable_data_ptr();
  const FloatType dtype = float_type_of(q);
  TORCH_INTERNAL_ASSERT(cuda::attention_mma_supported(p, dtype));
  const cudaError_t err = cuda::launch_attention_forward_mma(p, dtype, c10::cuda::getCurrentCUDAStream());
  TORCH_CHECK(err == cudaSuccess, "attention: CUDA launch failed: ", cudaGetErrorString(err));
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  return {out, lse};
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> attention_backward_cuda(
    const at::Tensor& grad_out, const at::Tensor& q_in, const at::Tensor& k_in,
    const at::Tensor& v_in, const at::Tensor& out_in, const at::Tensor& lse_in,
    const c10::optional<at::Tensor>& key_padding_mask, bool causal, double scale,
    int64_t window_left, int64_t window_right, double softcap,
    const c10::optional<at::Tensor>& document_ids, const c10::optional<at::Tensor>& attn_mask,
    double dropout_p, const c10::optional<at::Tensor>& seed_offset,
    const c10::optional<at::Tensor>& grad_lse) {
  const AttentionGeometry g =
      check_attention_inputs(q_in, k_in, v_in, key_padding_mask, scale, "attention_backward");
  check_attention_features(q_in, g, window_left, window_right, softcap, document_ids, attn_mask, dropout_p,
                           seed_offset, "attention_backward");
  TORCH_CHECK(grad_out.sizes() == q_in.sizes() && out_in.sizes() == q_in.sizes(),
              "attention_backward: grad_out ", grad_out.sizes(), " and out ", out_in.sizes(),
              " must have the shape of q ", q_in.sizes());
  const auto acc = at::kFloat;
  TORCH_CHECK(lse_in.scalar_type() == acc && lse_in.dim() == 3 && lse_in.size(0) == g.B &&
                  lse_in.size(1) == g.H && lse_in.size(2) == g.Sq,
              "attention_backward: lse must be ", acc, " of shape (", g.B, ", ", g.H, ", ", g.Sq,
              "), got ", lse_in.scalar_type(), " ", lse_in.sizes());
  check_cuda(q_in, k_in, v_in, key_padding_mask, g, "attention_backward");
  if (grad_lse.has_value())
    TORCH_CHECK(grad_lse->sizes() == lse_in.sizes() && grad_lse->device() == lse_in.device(),
                "attention_backward: grad_lse must have lse's shape ", lse_in.sizes(), " on ",
                lse_in.device(), ", got ", grad_lse->sizes(), " on ", grad_lse->device());
  c10::cuda::OptionalCUDAGuard guard(q_in.device());
  const at::Tensor q = mma_rows(q_in), k = mma_rows(k_in), v = mma_rows(v_in);
  const at::Tensor go = mma_rows(grad_out.to(q.scalar_type()));
  const at::Tensor out = out_in.contiguous(), lse = lse_in.contiguous();
  c10::optional<at::Tensor> mask;
  if (key_padding_mask.has_value()) mask = key_padding_mask->contiguous();
  at::Tensor dq = at::empty(q.sizes(), q.options());
  at::Tensor dk = at::empty(k.sizes(), k.options());  // the kernels write every element
  at::Tensor dv = at::empty(v.sizes(), v.options());
  if (q.numel() == 0 || k.numel() == 0) {
    dq.zero_();
    dk.zero_();
    dv.zero_();
    return {dq, dk, dv};
  }
  at::Tensor delta = at::empty({g.B, g.H, g.Sq}, q.options().dtype(acc));
  cuda::AttentionBackwardParams p{};
  static_cast<cuda::AttentionParams&>(p) = make_params(q, k, v, mask, causal, scale, g);
  FeatureTensors keep;
  set_features(p, q, g, window_left, window_right, softcap, document_ids, attn_mask, dropout_p,
               seed_offset, keep, "attention_backward");
  p.out = const_cast<void*>(out.const_data_ptr());
  p.lse = const_cast<void*>(lse.const_data_ptr());
  p.dout = go.const_data_ptr();
  set_strides(p.dout_stride, go);
  p.dq = dq.mutable_data_ptr();
  p.dk = dk.mutable_data_ptr();
  p.dv = dv.mutable_data_ptr();
  p.delta = delta.mutable_data_ptr();
  at::Tensor gl;
  if (grad_lse.has_value()) {
    gl = grad_lse->to(acc).contiguous();
    p.grad_lse = gl.const_data_ptr<float>();
  }
  const FloatType dtype = float_type_of(q);
  TORCH_INTERNAL_ASSERT(cuda::attention_backward_mma_supported(p, dtype));
  const cudaStream_t stream = c10::cuda::getCurrentCUDAStream();
  cudaError_t err = cuda::launch_attention_delta(p, dtype, stream);
  if (err == cudaSuccess) err = cuda::launch_attention_backward_mma(p, dtype, stream);
  TORCH_CHECK(err == cudaSuccess, "attention_backward: CUDA launch failed: ", cudaGetErrorString(err));
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  return {dq, dk, dv};
}

}  // namespace
}  // namespace gencore

TORCH_LIBRARY_IMPL(gencore, CUDA, m) {
  m.impl("attention", &gencore::attention_cuda);
  m.impl("attention_backward", &gencore::attention_backward_cuda);
}

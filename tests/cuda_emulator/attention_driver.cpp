// Runs csrc/cuda/attention_mma_kernels.cu on the CPU emulator (emu_sm80.h): forward, then the
// backward (delta, dQ, dK/dV kernels) from the forward's own output and lse, on inputs that
// tests/test_attention_emulated.py writes as raw files.
//
//   attention_driver DIR
// DIR/params.txt: B H Hkv Sq Sk D dtype(bf16|fp16) causal has_mask scale, then the (batch, head,
// seq) strides in elements of q, k, v, dout, then the element counts of q.bin, k.bin, v.bin,
// dout.bin (each a buffer the strided tensor lives in), then the keyword features: window_left
// window_right (-1 unbounded) softcap (0 none) has_docs has_attn_mask am_B am_H dropout_p seed
// offset, and optionally has_grad_lse (grad_lse.bin: B*H*Sq float32, the lse's gradient, which the
// delta kernel takes), has_sinks (sinks.bin: H float32, attention sinks) and seed_on_device (the
// dropout key read through AttentionParams::seed_offset_dev, as under CUDA-graph capture). mask.bin: B*Sk bytes when has_mask; docs.bin: B*Sk int64 when has_docs; am.bin:
// am_B*am_H*Sq*Sk bytes (contiguous; am_B, am_H 1 where broadcast) when has_attn_mask.
// Writes out.bin, lse.bin (float32), dq.bin, dk.bin, dv.bin (contiguous) and prints one JSON line
// of emulator statistics. Outputs start as NaN with NaN guard zones around them: an unwritten
// element or a write out of bounds shows. What the kernels read (inputs, the forward's out and lse
// for the backward, delta) lives in buffers of exactly its size, so that AddressSanitizer sees
// every read out of bounds.
#include "emu_sm80.h"

#include "../../csrc/cuda/attention_mma_kernels.cu"

#include <string>

#include "driver_io.h"

using gencore::FloatType;
using gencore_emu::Guarded;
using gencore_emu::read_file;
using gencore_emu::write_file;

int main(int argc, char** argv) {
  if (argc != 2) gencore_emu::fail("usage: attention_driver DIR");
  const std::string dir = argv[1];
  std::ifstream pf(dir + "/params.txt");
  int B, H, Hkv, Sq, Sk, D, causal, has_mask;
  std::string dtype_name;
  double scale;
  int64_t strides[4][3], counts[4];
  pf >> B >> H >> Hkv >> Sq >> Sk >> D >> dtype_name >> causal >> has_mask >> scale;
  for (auto& s : strides) pf >> s[0] >> s[1] >> s[2];
  for (auto& c : counts) pf >> c;
  int window_left, window_right, has_docs, has_am, am_B, am_H;
  double softcap, dropout_p;
  unsigned long long seed, offset;
  pf >> window_left >> window_right >> softcap >> has_docs >> has_am >> am_B >> am_H >> dropout_p >> seed >> offset;
  if (!pf) gencore_emu::fail("bad params.txt");
  int has_glse = 0, has_sinks = 0;  // optional trailing fields: grad_lse.bin, sinks.bin
  if (!(pf >> has_glse)) has_glse = 0;
  if (!(pf >> has_sinks)) has_sinks = 0;
  int seed_on_device = 0;  // optional: the kernels read [seed, offset] through a pointer (CUDA graphs)
  if (!(pf >> seed_on_device)) seed_on_device = 0;
  const bool bf16 = dtype_name == "bf16";
  const FloatType dtype = bf16 ? FloatType::kBFloat16 : FloatType::kFloat16;

  auto q = read_file(dir + "/q.bin", 2 * counts[0]);
  auto k = read_file(dir + "/k.bin", 2 * counts[1]);
  auto v = read_file(dir + "/v.bin", 2 * counts[2]);
  auto dout = read_file(dir + "/dout.bin", 2 * counts[3]);
  std::vector<unsigned char> mask;
  if (has_mask) mask = read_file(dir + "/mask.bin", (size_t)B * Sk);
  std::vector<unsigned char> docs, am;
  if (has_docs) docs = read_file(dir + "/docs.bin", (size_t)B * Sk * 8);
  if (has_am) am = read_file(dir + "/am.bin", (size_t)am_B * am_H * Sq * Sk);
  for (auto* buf : {&q, &k, &v, &dout}) gencore_emu::register_buffer(buf->data(), buf->size());

  gencore::cuda::AttentionBackwardParams p{};
  p.q = q.data();
  p.k = k.data();
  p.v = v.data();
  std::memcpy(p.q_stride, strides[0], sizeof p.q_stride);
  std::memcpy(p.k_stride, strides[1], sizeof p.k_stride);
  std::memcpy(p.v_stride, strides[2], sizeof p.v_stride);
  std::memcpy(p.dout_stride, strides[3], sizeof p.dout_stride);
  p.key_padding_mask = has_mask ? reinterpret_cast<const bool*>(mask.data()) : nullptr;
  p.B = B, p.H = H, p.Hkv = Hkv, p.Sq = Sq, p.Sk = Sk, p.D = D;
  p.causal = causal != 0;
  p.scale = scale;
  p.dout = dout.data();
  p.window_left = window_left, p.window_right = window_right;
  p.softcap = (float)softcap;
  p.document_ids = has_docs ? reinterpret_cast<const int64_t*>(docs.data()) : nullptr;
  p.attn_mask = has_am ? reinterpret_cast<const bool*>(am.data()) : nullptr;
  p.am_stride[0] = am_B == 1 ? 0 : (int64_t)am_H * Sq * Sk;
  p.am_stride[1] = am_H == 1 ? 0 : (int64_t)Sq * Sk;
  p.am_stride[2] = Sk;
  p.dropout_p = (float)dropout_p;
  p.dropout_scale = (float)(1.0 / (1.0 - dropout_p));
  p.seed = seed, p.rng_offset = offset;
  std::vector<int64_t> seed_offset_dev = {(int64_t)seed, (int64_t)offset};
  if (seed_on_device) {
    p.seed = p.rng_offset = 0;
    p.seed_offset_dev = seed_offset_dev.data();
  }
  p.am_B = am_B, p.am_H = am_H;
  std::vector<unsigned char> sinks;
  if (has_sinks) {
    sinks = read_file(dir + "/sinks.bin", 4 * (size_t)H);
    p.sinks = reinterpret_cast<const float*>(sinks.data());
  }
  std::vector<unsigned char> tile_info(gencore::cuda::attention_tile_info_bytes(p));  // exactly sized
  p.tile_info = tile_info.empty() ? nullptr : tile_info.data();

  const size_t n_q = (size_t)B * H * Sq * D, n_k = (size_t)B * Hkv * Sk * D, rows = (size_t)B * H * Sq;
  Guarded out(2 * n_q), lse(4 * rows), dq(2 * n_q), dk(2 * n_k), dv(2 * n_k);
  p.out = out.data();
  p.lse = lse.data();
  if (!gencore::cuda::attention_backward_mma_supported(p, dtype)) gencore_emu::fail("shape not supported");
  if (gencore::cuda::launch_attention_forward_mma(p, dtype, nullptr) != cudaSuccess) gencore_emu::fail("forward");

  out.check("out");
  lse.check("lse");
  // The backward reads the forward's out and lse from exactly sized copies (see the top).
  std::vector<unsigned char> out_in(out.n), lse_in(lse.n);
  std::memcpy(out_in.data(), out.data(), out.n);
  std::memcpy(lse_in.data(), lse.data(), lse.n);
  std::vector<float> delta(rows);
  std::vector<unsigned char> glse;
  if (has_glse) {
    glse = read_file(dir + "/grad_lse.bin", 4 * rows);
    p.grad_lse = reinterpret_cast<const float*>(glse.data());
  }
  p.out = out_in.data();
  p.lse = lse_in.data();
  p.delta = delta.data();
  p.dq = dq.data();
  p.dk = dk.data();
  p.dv = dv.data();
  if (gencore::cuda::launch_attention_delta(p, dtype, nullptr) != cudaSuccess) gencore_emu::fail("delta");
  if (gencore::cuda::launch_attention_backward_mma(p, dtype, nullptr) != cudaSuccess) gencore_emu::fail("backward");

  dq.check("dq");
  dk.check("dk");
  dv.check("dv");
  write_file(dir + "/out.bin", out.data(), out.n);
  write_file(dir + "/lse.bin", lse.data(), lse.n);
  write_file(dir + "/dq.bin", dq.data(), dq.n);
  write_file(dir + "/dk.bin", dk.data(), dk.n);
  write_file(dir + "/dv.bin", dv.data(), dv.n);
  const auto& st = gencore_emu::machine().stats;
  std::printf("{\"max_ldmatrix_ways\": %d, \"collectives\": %ld, \"blocks\": %ld}\n", st.max_ldmatrix_ways,
              st.collectives, st.blocks);
  return 0;
}

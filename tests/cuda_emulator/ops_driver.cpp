// Runs the Gumbel-softmax and GAN-loss CUDA kernels (csrc/cuda/gumbel_softmax_kernels.cu,
// gan_loss_kernels.cu) on the CPU emulator (emu_sm80.h), through their launchers, on inputs that
// tests/test_ops_emulated.py writes as raw files.
//
//   ops_driver DIR
// DIR/params.txt, one of
//   gumbel DTYPE OUTER N INNER SEED OFFSET TAU HARD MISALIGN
//       x.bin, g.bin: OUTER*N*INNER elements (logits; the upstream gradient). Writes out.bin
//       (soft.bin when HARD) from the forward, then dx.bin from the backward of g through the
//       forward's soft sample, as the op saves it. MISALIGN=1 starts every buffer one element
//       past a 16-byte boundary (the launchers then take the kernels for unaligned rows).
//   gan DTYPE KIND ROLE REDUCTION N_REAL N_FAKE
//       real.bin (N_REAL elements; 0 when the plan reads none), fake.bin. Writes loss.bin (one
//       element, N_FAKE for reduction none), grad_real.bin, grad_fake.bin.
// DTYPE: f32 | f64 | bf16 | fp16. Inputs sit in buffers of exactly their size, outputs in NaN-filled
// guarded ones (driver_io.h). Prints one JSON line of emulator statistics.
#include "emu_sm80.h"

#include "../../csrc/cuda/gan_loss_kernels.cu"
#include "../../csrc/cuda/gumbel_softmax_kernels.cu"

#include <string>

#include "driver_io.h"

namespace {

using gencore::FloatType;
using gencore_emu::fail;
using gencore_emu::Guarded;
using gencore_emu::read_file;

FloatType dtype_of(const std::string& name, size_t* bytes) {
  if (name == "f32") return *bytes = 4, FloatType::kFloat32;
  if (name == "f64") return *bytes = 8, FloatType::kFloat64;
  if (name == "bf16") return *bytes = 2, FloatType::kBFloat16;
  if (name == "fp16") return *bytes = 2, FloatType::kFloat16;
  fail("unknown dtype");
}

// An exactly sized input, optionally starting `shift` bytes into its own allocation.
struct Input {
  std::vector<unsigned char> bytes;
  size_t shift;
  Input(const std::string& path, size_t n, size_t shift) : bytes(n + shift), shift(shift) {
    const auto data = read_file(path, n);
    std::copy(data.begin(), data.end(), bytes.begin() + shift);
  }
  const void* data() const { return bytes.data() + shift; }
};

void gumbel(const std::string& dir, std::ifstream& pf) {
  std::string dt;
  int64_t outer, n, inner;
  uint64_t seed, offset;
  double tau;
  int hard, misalign;
  pf >> dt >> outer >> n >> inner >> seed >> offset >> tau >> hard >> misalign;
  if (!pf) fail("bad params.txt");
  size_t es = 0;
  const FloatType dtype = dtype_of(dt, &es);
  const size_t bytes = (size_t)(outer * n * inner) * es, shift = misalign ? es : 0;
  const Input x(dir + "/x.bin", bytes, shift), g(dir + "/g.bin", bytes, shift);
  // Outputs misaligned alike: a guarded buffer one element longer, used from its second element.
  Guarded out(bytes + shift), soft(bytes + shift), dx(bytes + shift);
  auto at = [&](Guarded& b) { return static_cast<unsigned char*>(b.data()) + shift; };
  if (gencore::launch_gumbel_softmax_forward(dtype, x.data(), at(out), hard ? at(soft) : nullptr, outer, n, inner,
                                             seed, offset, tau, hard != 0, nullptr) != cudaSuccess)
    fail("forward");
  // The backward reads the soft sample from an exactly sized copy, as it reads g.
  std::vector<unsigned char> y(bytes + shift);
  std::memcpy(y.data() + shift, at(hard ? soft : out), bytes);
  if (gencore::launch_gumbel_softmax_backward(dtype, g.data(), y.data() + shift, at(dx), outer, n, inner, tau,
                                              nullptr) != cudaSuccess)
    fail("backward");
  auto save = [&](Guarded& b, const char* name) {
    b.check(name);
    gencore_emu::write_file(dir + "/" + name + ".bin", at(b), bytes);
  };
  save(out, "out");
  if (hard) save(soft, "soft");
  save(dx, "dx");
}

void gan(const std::string& dir, std::ifstream& pf) {
  std::string dt;
  int kind, role, reduction;
  int64_t n_real, n_fake;
  pf >> dt >> kind >> role >> reduction >> n_real >> n_fake;
  if (!pf) fail("bad params.txt");
  size_t es = 0;
  const FloatType dtype = dtype_of(dt, &es);
  std::vector<unsigned char> real = n_real ? read_file(dir + "/real.bin", n_real * es) : std::vector<unsigned char>();
  const std::vector<unsigned char> fake = read_file(dir + "/fake.bin", n_fake * es);
  const size_t n_loss = reduction == gencore::gan::kNoReduction ? n_fake : 1;
  Guarded loss(n_loss * es), grad_real(n_real * es), grad_fake(n_fake * es);
  gencore::cuda::GanLossArgs a;
  a.real = n_real ? real.data() : nullptr;
  a.fake = fake.data();
  a.grad_real = n_real ? grad_real.data() : nullptr;
  a.grad_fake = grad_fake.data();
  a.loss = loss.data();
  a.n_real = n_real;
  a.n_fake = n_fake;
  a.kind = kind;
  a.role = role;
  a.reduction = reduction;
  std::vector<unsigned char> workspace(gencore::cuda::gan_loss_workspace_bytes(a));
  if (gencore::cuda::launch_gan_loss(a, dtype, workspace.empty() ? nullptr : workspace.data(), nullptr) !=
      cudaSuccess)
    fail("gan_loss");
  loss.save(dir + "/loss.bin", "loss");
  grad_real.save(dir + "/grad_real.bin", "grad_real");
  grad_fake.save(dir + "/grad_fake.bin", "grad_fake");
}

}  // namespace

int main(int argc, char** argv) {
  if (argc != 2) fail("usage: ops_driver DIR");
  const std::string dir = argv[1];
  std::ifstream pf(dir + "/params.txt");
  std::string op;
  pf >> op;
  if (op == "gumbel") gumbel(dir, pf);
  else if (op == "gan") gan(dir, pf);
  else fail("params.txt: the first word is gumbel or gan");
  const auto& st = gencore_emu::machine().stats;
  std::printf("{\"collectives\": %ld, \"blocks\": %ld}\n", st.collectives, st.blocks);
  return 0;
}

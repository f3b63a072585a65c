// GAN losses: the per-element terms and the plan (which term each side gets, how the sides pair),
// shared by the CPU and CUDA kernels. No torch.
//
// Every loss is   L = c_r * sum_i T_r(r_i - shift_r) + c_f * sum_j T_f(f_j - shift_f)
// (unpaired kinds), or   L = c * sum_i T(s * (r_i - f_i))   (rsgan: paired), where c = 1/count for
// reduction "mean" and 1 for "sum"/"none". ragan shifts each side by the other side's mean, which
// couples them: d/df_j also gets K_f = -c_r * sum_i T_r'(r_i - mean f) / n_f (and K_r alike).
#pragma once
#include <cstdint>
#include "isa_namespace.h"

#if defined(__CUDACC__)
#define GENCORE_HD __host__ __device__ __forceinline__
#else
#define GENCORE_HD inline
#endif

GENCORE_NAMESPACE_BEGIN
namespace gan {

// Codes shared with gencore/ops/_gan_loss.py (the int arguments of the op schema).
enum Kind : int { kBce = 0, kHinge = 1, kWasserstein = 2, kRsgan = 3, kRagan = 4 };
enum Role : int { kDiscriminator = 0, kGenerator = 1 };
enum Reduction : int { kNoReduction = 0, kMean = 1, kSum = 2 };

// Per-element terms T(x) and their derivatives T'(x).
enum Term : int {
  kUnused = 0,
  kSoftplusNeg = 1,  // softplus(-x)      T' = -sigmoid(-x)
  kSoftplusPos = 2,  // softplus(x)       T' = sigmoid(x)
  kHingeNeg = 3,     // relu(1 - x)       T' = -[1 - x > 0]
  kHingePos = 4,     // relu(1 + x)       T' = [1 + x > 0]
  kLinearNeg = 5,    // -x                T' = -1
  kLinearPos = 6,    // x                 T' = 1
};

struct Plan {
  int term_r = kUnused, term_f = kUnused;
  bool paired = false;   // rsgan: one term of s * (r - f), elementwise over matching shapes
  int sign = 1;          // rsgan: s
  bool average = false;  // ragan: each side shifted by the mean of the other
  bool uses_real = true;
  bool elementwise = true;  // reduction "none" is defined (ragan: no)
};

// Returns false for an unknown kind/role.
inline bool make_plan(int kind, int role, Plan* p) {
  const bool disc = role == kDiscriminator;
  if (role != kDiscriminator && role != kGenerator) return false;
  Plan q;
  switch (kind) {
    case kBce:
      q.term_r = disc ? kSoftplusNeg : kUnused;
      q.term_f = disc ? kSoftplusPos : kSoftplusNeg;
      break;
    case kHinge:
      q.term_r = disc ? kHingeNeg : kUnused;
      q.term_f = disc ? kHingePos : kLinearNeg;
      break;
    case kWasserstein:
      q.term_r = disc ? kLinearNeg : kUnused;
      q.term_f = disc ? kLinearPos : kLinearNeg;
      break;
    case kRsgan:  // D: softplus(-(r - f)); G: softplus(-(f - r))
      q.paired = true;
      q.sign = disc ? 1 : -1;
      q.term_r = q.term_f = kSoftplusNeg;
      break;
    case kRagan:  // D: softplus(-(r - mf)) + softplus(f - mr); G mirrored
      q.average = true;
      q.elementwise = false;
      q.term_r = disc ? kSoftplusNeg : kSoftplusPos;
      q.term_f = disc ? kSoftplusPos : kSoftplusNeg;
      break;
    default:
      return false;
  }
  q.uses_real = q.term_r != kUnused;
  *p = q;
  return true;
}

}  // namespace gan
GENCORE_NAMESPACE_END

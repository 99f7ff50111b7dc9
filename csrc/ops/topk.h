// topk: per row of logits [B, C], an activation (softmax, sigmoid or none), then the k best
// scores and their class indices, sorted by score descending, ties broken by the lower index.
//
// Ordering is decided on the activated score (not on the logit), so two logits whose scores
// round to the same float (sigmoid(30) == sigmoid(40) == 1.0f) are ordered by index, as the
// contract says. NaN scores rank after every number.
//
// The per-element math lives here once (MEDTRT_HD), shared by cpu/topk_cpu.cpp and
// cuda/topk_cuda.cu. Row reductions (max, sum) run in a different order on the two devices, so
// softmax scores may differ in the last bits between them; the order relation is the same.
#pragma once

#include <cmath>
#include <cstdint>
#include <string>
#include <vector>

#include "common/check.h"
#include "common/half.h"

struct CUstream_st;

namespace medtrt::ops {

enum class Activation : std::int32_t { kSoftmax = 0, kSigmoid = 1, kNone = 2 };
enum class LogitType : std::int32_t { kF32 = 0, kF16 = 1 };

struct TopkParams {
  const void* logits;     // [batch, classes] of logit_type
  float* scores;          // [batch, k]
  std::int32_t* indices;  // [batch, k]
  std::int32_t batch;
  std::int32_t classes;
  std::int32_t k;
  LogitType logit_type;
  Activation activation;
};

// ---- shared per-element math ---------------------------------------------------------------

MEDTRT_HD float load_logit(const TopkParams& p, std::int64_t i) {
  if (p.logit_type == LogitType::kF32) return static_cast<const float*>(p.logits)[i];
  return half_bits_to_float(static_cast<const std::uint16_t*>(p.logits)[i]);
}

MEDTRT_HD float exp_f32(float x) {
#if defined(__CUDA_ARCH__)
  return expf(x);
#else
  return std::exp(x);
#endif
}

// Row maximum that ignores NaN (a row of only NaN gives NaN).
MEDTRT_HD float max_ignoring_nan(float a, float b) {
#if defined(__CUDA_ARCH__)
  return fmaxf(a, b);
#else
  return std::fmax(a, b);
#endif
}

// Score of one logit. For softmax, row_max is the row maximum and row_sum the sum of
// exp(x - row_max) over the row; other activations ignore both.
MEDTRT_HD float activate(float x, Activation a, float row_max, float row_sum) {
  switch (a) {
    case Activation::kSoftmax:
      return exp_f32(x - row_max) / row_sum;
    case Activation::kSigmoid:
      if (x >= 0.0f) return 1.0f / (1.0f + exp_f32(-x));
      else {
        const float e = exp_f32(x);
        return e / (1.0f + e);
      }
    default:
      return x;
  }
}

// True when (a, ia) ranks strictly before (b, ib): numbers before NaN, larger score first,
// then lower index. A strict total order over (score, index) pairs with distinct indices.
MEDTRT_HD bool ranks_before(float a, std::int32_t ia, float b, std::int32_t ib) {
  const bool a_nan = a != a;
  const bool b_nan = b != b;
  if (a_nan != b_nan) return b_nan;
  if (!a_nan && a != b) return a > b;
  return ia < ib;
}

// ---- validation (host only) ---------------------------------------------------------------

// Checks logits shape/dtype, k and the activation name; returns params with the pointers unset.
TopkParams validate_topk(const std::vector<std::int64_t>& shape, const std::string& dtype,
                         std::int64_t k, const std::string& activation);

void topk_cpu(const TopkParams& params);

// One warp per row; asynchronous on `stream`, never allocates or synchronizes. A build without
// CUDA has a stub instead (common/cuda_stub.cpp) that throws std::runtime_error saying so.
void topk_cuda(const TopkParams& params, CUstream_st* stream);

}  // namespace medtrt::ops

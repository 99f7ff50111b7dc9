// CUDA kernel for topk: one warp per row. The warp reduces the row max and softmax sum with
// shuffles, then selects the k best (score, index) pairs one after another: pass j takes the
// best pair ranked strictly after pass j-1's pick, so no scratch memory is needed and the
// order relation is exactly ranks_before() from ops/topk.h.
#include <cuda_runtime.h>

#include <cstdint>

#include "ops/topk.h"

namespace medtrt::ops {
namespace {

constexpr int kWarp = 32;
constexpr int kWarpsPerBlock = 4;
constexpr unsigned kFullMask = 0xffffffffu;

struct Candidate {
  float score;
  std::int32_t index;  // -1: none
};

__device__ __forceinline__ float warp_max(float v) {
  for (int offset = kWarp / 2; offset > 0; offset >>= 1)
    v = fmaxf(v, __shfl_xor_sync(kFullMask, v, offset));
  return v;
}

__device__ __forceinline__ float warp_sum(float v) {
  for (int offset = kWarp / 2; offset > 0; offset >>= 1)
    v += __shfl_xor_sync(kFullMask, v, offset);
  return v;
}

__device__ __forceinline__ Candidate warp_best(Candidate c) {
  for (int offset = kWarp / 2; offset > 0; offset >>= 1) {
    const float s = __shfl_xor_sync(kFullMask, c.score, offset);
    const std::int32_t i = __shfl_xor_sync(kFullMask, c.index, offset);
    if (i >= 0 && (c.index < 0 || ranks_before(s, i, c.score, c.index))) c = Candidate{s, i};
  }
  return c;
}

__global__ void topk_kernel(TopkParams p) {
  const int lane = threadIdx.x % kWarp;
  const std::int64_t first = static_cast<std::int64_t>(blockIdx.x) * kWarpsPerBlock +
                             threadIdx.x / kWarp;
  const std::int64_t stride = static_cast<std::int64_t>(gridDim.x) * kWarpsPerBlock;
  for (std::int64_t row = first; row < p.batch; row += stride) {  // warp-uniform
    const std::int64_t at = row * p.classes;
    float row_max = __int_as_float(0x7fffffff);  // NaN: ignored by fmaxf
    for (std::int32_t c = lane; c < p.classes; c += kWarp)
      row_max = fmaxf(row_max, load_logit(p, at + c));
    row_max = warp_max(row_max);
    float row_sum = 0.0f;
    if (p.activation == Activation::kSoftmax) {
      for (std::int32_t c = lane; c < p.classes; c += kWarp)
        row_sum += exp_f32(load_logit(p, at + c) - row_max);
      row_sum = warp_sum(row_sum);
    }
    Candidate prev{0.0f, -1};
    for (std::int32_t j = 0; j < p.k; ++j) {
      Candidate best{0.0f, -1};
      for (std::int32_t c = lane; c < p.classes; c += kWarp) {
        const float s = activate(load_logit(p, at + c), p.activation, row_max, row_sum);
        if (prev.index >= 0 && !ranks_before(prev.score, prev.index, s, c)) continue;
        if (best.index < 0 || ranks_before(s, c, best.score, best.index)) best = Candidate{s, c};
      }
      best = warp_best(best);
      if (lane == 0) {
        p.scores[row * p.k + j] = best.score;
        p.indices[row * p.k + j] = best.index;
      }
      prev = best;
    }
  }
}

}  // namespace

void topk_cuda(const TopkParams& params, CUstream_st* stream) {
  const std::int64_t blocks = (static_cast<std::int64_t>(params.batch) + kWarpsPerBlock - 1) /
                              kWarpsPerBlock;
  topk_kernel<<<static_cast<unsigned>(blocks), kWarp * kWarpsPerBlock, 0, stream>>>(params);
  MEDTRT_CUDA_CHECK(cudaGetLastError());
}

}  // namespace medtrt::ops

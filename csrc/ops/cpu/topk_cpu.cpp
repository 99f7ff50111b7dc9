// CPU twin of the topk kernel: the same activation and order relation, one row at a time.
#include <algorithm>
#include <cstdint>
#include <vector>

#include "ops/topk.h"

namespace medtrt::ops {

void topk_cpu(const TopkParams& p) {
#pragma omp parallel
  {
    std::vector<float> score(static_cast<std::size_t>(p.classes));
    std::vector<std::int32_t> order(static_cast<std::size_t>(p.classes));
#pragma omp for schedule(static)
    for (std::int64_t row = 0; row < p.batch; ++row) {
      const std::int64_t at = row * p.classes;
      float row_max = load_logit(p, at);
      for (std::int32_t c = 1; c < p.classes; ++c)
        row_max = max_ignoring_nan(row_max, load_logit(p, at + c));
      float row_sum = 0.0f;
      if (p.activation == Activation::kSoftmax)
        for (std::int32_t c = 0; c < p.classes; ++c)
          row_sum += exp_f32(load_logit(p, at + c) - row_max);
      for (std::int32_t c = 0; c < p.classes; ++c) {
        score[c] = activate(load_logit(p, at + c), p.activation, row_max, row_sum);
        order[c] = c;
      }
      std::partial_sort(order.begin(), order.begin() + p.k, order.end(),
                        [&](std::int32_t a, std::int32_t b) {
                          return ranks_before(score[a], a, score[b], b);
                        });
      for (std::int32_t j = 0; j < p.k; ++j) {
        p.scores[row * p.k + j] = score[order[j]];
        p.indices[row * p.k + j] = order[j];
      }
    }
  }
}

}  // namespace medtrt::ops

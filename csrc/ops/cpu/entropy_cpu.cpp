// CPU implementation of the entropy op (see ops/entropy.h).
#include <algorithm>
#include <cmath>
#include <limits>
#include <numeric>

#include "ops/entropy.h"

namespace medtrt::ops {

AbsHistogram::AbsHistogram(std::int64_t bins) {
  MEDTRT_CHECK(bins >= 2 && (bins & (bins - 1)) == 0 && bins <= (1 << 24),
               "entropy: bins must be a power of two in [2, 2^24] (pairs merge when the range "
               "doubles); got ", bins);
  counts_.assign(static_cast<std::size_t>(bins), 0);
}

void AbsHistogram::grow_to(double value) {
  const std::size_t half = counts_.size() / 2;
  while (value > range_) {
    for (std::size_t j = 0; j < half; ++j) counts_[j] = counts_[2 * j] + counts_[2 * j + 1];
    for (std::size_t j = half; j < counts_.size(); ++j) counts_[j] = 0;
    range_ *= 2.0;
    ++merges_;
  }
}

void AbsHistogram::add(const float* x, std::int64_t n) {
  float batch_max = 0.0f;
  std::uint64_t nans = 0;
  for (std::int64_t i = 0; i < n; ++i) {
    const float a = std::fabs(x[i]);
    if (a != a) {
      ++nans;
      continue;
    }
    MEDTRT_CHECK(a != std::numeric_limits<float>::infinity(),
                 "entropy: activation value ", x[i], " at index ", i,
                 " is infinite; the model overflows on this calibration data");
    if (a > batch_max) batch_max = a;
  }
  nan_count_ += nans;
  const std::uint64_t counted = static_cast<std::uint64_t>(n) - nans;
  total_ += counted;
  if (batch_max > max_abs_) max_abs_ = batch_max;
  if (range_ == 0.0) {
    if (batch_max == 0.0f) {  // only zeros so far: no range to bin them in yet
      zeros_pending_ += counted;
      return;
    }
    range_ = batch_max;
    counts_[0] += zeros_pending_;
    zeros_pending_ = 0;
  } else if (batch_max > range_) {
    grow_to(batch_max);
  }
  // Bins are found in float32 (the tests' NumPy restatement does the same). A range so small
  // that bins / range overflows float (below ~6e-36: a first batch of tiny values) is binned in
  // double instead: casting an infinite position to an integer is undefined.
  const double per_bin_d = static_cast<double>(counts_.size()) / range_;  // finite: range_ >= 1e-45
  const bool in_float = per_bin_d <= static_cast<double>(std::numeric_limits<float>::max());
  const float per_bin = in_float ? static_cast<float>(per_bin_d) : 0.0f;
  const double last = static_cast<double>(counts_.size() - 1);
  for (std::int64_t i = 0; i < n; ++i) {
    const float a = std::fabs(x[i]);
    if (a != a) continue;
    const double pos = in_float ? static_cast<double>(a * per_bin) : a * per_bin_d;
    const std::size_t b = pos < last ? static_cast<std::size_t>(pos) : counts_.size() - 1;
    ++counts_[b];
  }
}

AbsHistogram AbsHistogram::from_parts(std::vector<std::uint64_t> counts, double range,
                                      double max_abs, std::uint64_t nan_count,
                                      std::uint64_t merges) {
  AbsHistogram h(static_cast<std::int64_t>(counts.size()));
  MEDTRT_CHECK(std::isfinite(range) && range >= 0.0 && std::isfinite(max_abs) &&
                   max_abs >= 0.0 && max_abs <= range,
               "entropy: histogram parts need 0 <= max_abs <= range < inf; got range ", range,
               ", max_abs ", max_abs);
  // A range comes from float32 values: 0, or at least float's smallest positive value.
  MEDTRT_CHECK(range == 0.0 || range >= std::numeric_limits<float>::denorm_min(),
               "entropy: histogram range ", range, " is below float32's smallest value (1.4e-45); "
               "a histogram's range is 0 or the max |x| of float32 activations");
  h.counts_ = std::move(counts);
  h.range_ = range;
  h.max_abs_ = max_abs;
  h.nan_count_ = nan_count;
  h.merges_ = merges;
  h.total_ = std::accumulate(h.counts_.begin(), h.counts_.end(), std::uint64_t{0});
  return h;
}

EntropyResult entropy_amax(const AbsHistogram& h, std::int64_t start_bin,
                           std::int64_t quantized_bins) {
  const std::int64_t n = h.bins();
  MEDTRT_CHECK(quantized_bins >= 2 && quantized_bins <= n, "entropy: quantized_bins must be in [2, ",
               n, "]; got ", quantized_bins);
  MEDTRT_CHECK(start_bin >= quantized_bins && start_bin <= n, "entropy: start_bin must be in [",
               quantized_bins, ", ", n, "]; got ", start_bin);
  EntropyResult result{0.0, 0, {}};
  if (h.range() == 0.0 || h.total() == 0) return result;  // all zeros: nothing to calibrate

  std::vector<double> bins(h.counts().begin(), h.counts().end());
  bins[0] = bins[1];
  std::vector<double> suffix(static_cast<std::size_t>(n) + 1, 0.0);  // suffix[i] = sum bins[i:]
  for (std::int64_t j = n - 1; j >= 0; --j) suffix[j] = suffix[j + 1] + bins[j];
  const double p_total = suffix[0];
  if (p_total == 0.0) return result;

  std::vector<double> group_sum(static_cast<std::size_t>(quantized_bins));
  std::vector<std::int64_t> group_nonzero(static_cast<std::size_t>(quantized_bins));
  double best = std::numeric_limits<double>::infinity();
  std::int64_t best_i = n;
  result.divergences.reserve(static_cast<std::size_t>(n - start_bin + 1));
  for (std::int64_t i = start_bin; i <= n; ++i) {
    std::fill(group_sum.begin(), group_sum.end(), 0.0);
    std::fill(group_nonzero.begin(), group_nonzero.end(), 0);
    for (std::int64_t j = 0; j < i; ++j) {
      const std::int64_t g = j * quantized_bins / i;
      group_sum[g] += bins[j];
      group_nonzero[g] += bins[j] != 0.0;
    }
    const double q_total = p_total - suffix[i];
    double kl = 0.0;
    for (std::int64_t j = 0; j < i && std::isfinite(kl); ++j) {
      const double p = (j == i - 1 ? bins[j] + suffix[i] : bins[j]) / p_total;
      if (p == 0.0) continue;
      const std::int64_t g = j * quantized_bins / i;
      const double q = bins[j] != 0.0 && q_total > 0.0
                           ? group_sum[g] / static_cast<double>(group_nonzero[g]) / q_total
                           : 0.0;
      kl = q == 0.0 ? std::numeric_limits<double>::infinity() : kl + p * std::log(p / q);
    }
    result.divergences.push_back(kl);
    if (kl <= best) {  // <=: the last minimum wins, as in the reference implementation
      best = kl;
      best_i = i;
    }
  }
  result.bins_kept = best_i;
  // After range doublings the top bins can lie above every value seen; a threshold there only
  // wastes INT8 resolution, so it is capped at the largest |x| observed.
  result.amax = std::min(static_cast<double>(best_i) * h.bin_width(), h.max_abs());
  return result;
}

double percentile_amax(const AbsHistogram& h, double percentile) {
  MEDTRT_CHECK(percentile > 0.0 && percentile <= 100.0,
               "entropy: percentile must be in (0, 100]; got ", percentile);
  if (h.range() == 0.0 || h.total() == 0) return 0.0;
  const double target = percentile / 100.0 * static_cast<double>(h.total());
  double cumulative = 0.0;
  for (std::int64_t k = 0; k < h.bins(); ++k) {
    cumulative += static_cast<double>(h.counts()[static_cast<std::size_t>(k)]);
    if (cumulative >= target)
      return std::min(static_cast<double>(k + 1) * h.bin_width(), h.max_abs());
  }
  return h.max_abs();
}

}  // namespace medtrt::ops

// entropy: calibration statistics for INT8 quantization, as TensorRT's entropy calibrator
// computes them.
//
// AbsHistogram accumulates |x| of one activation tensor, batch after batch, in a fixed number
// of equal-width bins over [0, range). The first non-zero batch sets range to its max |x| (the
// maximum lands in the last bin); when a later batch holds a larger value, adjacent bin pairs
// merge and the range doubles until it covers it, so memory is fixed and counts are never
// re-binned approximately. NaN values are counted apart and ignored; +-inf is an error.
//
// Thresholds (amax) from a histogram:
//   entropy_amax     TensorRT's entropy method (EntropyCalibration2, as NVIDIA's
//                    pytorch-quantization restates it): for each candidate i >= start_bin of
//                    kept bins, P = bins[0:i] with the outliers folded into bin i-1, Q = the
//                    same bins merged into `quantized_bins` groups and spread evenly over each
//                    group's non-empty bins; amax = upper edge of the i minimising KL(P || Q)
//                    (the last minimum on ties), capped at the largest |x| seen. bins[0] is
//                    replaced by bins[1] first, so the mass of exact zeros after ReLU does not
//                    dominate.
//                    This is the reference: O(bins^2), a log per (candidate, bin).
//   entropy_amax_fast the same bins_kept and amax, bit for bit, in O(bins * quantized_bins)
//                    additions: every candidate's KL from prefix sums and a table of per-group
//                    terms, with a proven bound on the rounding error of both that computation
//                    and the reference's; the few candidates that bound cannot tell from the
//                    smallest are evaluated again exactly as entropy_amax evaluates them, and the
//                    last minimum among them wins (the argument: cpu/entropy_cpu.cpp).
//   percentile_amax  upper edge of the bin where the cumulative count reaches the percentile.
//   max              the largest |x| seen (AbsHistogram::max_abs).
// CPU only: the work is a pass over activations that ONNX Runtime already produced on the CPU.
//
// Filling: add() reads the values once when the range need not grow (max, NaN count and bins in
// one vectorised pass, counted in per-thread scratch and committed at the end; +-inf throws
// before anything changes) and twice otherwise (the batch max first, then the bins), so counts
// depend only on the values and the histogram's state. add_reference() is the plain two-pass
// loop it replaced, kept as the yardstick for tests and the before/after benchmark.
#pragma once

#include <cstdint>
#include <vector>

#include "common/check.h"

namespace medtrt::ops {

class AbsHistogram {
 public:
  explicit AbsHistogram(std::int64_t bins = 2048);

  // Adds |x| of n values. Not thread-safe for one histogram; different histograms may be
  // filled concurrently.
  void add(const float* x, std::int64_t n);
  void add_reference(const float* x, std::int64_t n);  // the former add(); same results, slower

  const std::vector<std::uint64_t>& counts() const { return counts_; }
  std::int64_t bins() const { return static_cast<std::int64_t>(counts_.size()); }
  double range() const { return range_; }  // 0 until a non-zero value arrives
  double bin_width() const { return range_ / static_cast<double>(counts_.size()); }
  double max_abs() const { return max_abs_; }
  std::uint64_t total() const { return total_; }  // values counted (NaN excluded)
  std::uint64_t nan_count() const { return nan_count_; }
  std::uint64_t merges() const { return merges_; }  // how often the range doubled

  // Restores a histogram from its parts (for caches and tests); validates them.
  static AbsHistogram from_parts(std::vector<std::uint64_t> counts, double range, double max_abs,
                                 std::uint64_t nan_count, std::uint64_t merges);

 private:
  void grow_to(double value);
  // Sets range_ on the first non-zero batch or doubles it to cover batch_max, after counting
  // the batch in nan_count_, total_ and max_abs_; false when nothing is to be binned yet.
  bool admit(float batch_max, std::uint64_t n, std::uint64_t nans);

  std::vector<std::uint64_t> counts_;
  std::uint64_t zeros_pending_ = 0;  // exact zeros seen before the range is known
  double range_ = 0.0;
  double max_abs_ = 0.0;
  std::uint64_t total_ = 0;
  std::uint64_t nan_count_ = 0;
  std::uint64_t merges_ = 0;
};

struct EntropyResult {
  double amax;
  std::int64_t bins_kept;           // the i that minimised the divergence
  std::vector<double> divergences;  // KL for i = start_bin .. bins (inf where Q has a hole)
};

EntropyResult entropy_amax(const AbsHistogram& h, std::int64_t start_bin = 128,
                           std::int64_t quantized_bins = 128);

struct EntropyChoice {
  double amax;
  std::int64_t bins_kept;
  std::int64_t rechecked;  // candidates evaluated again exactly (0 when the reference ran)
};

EntropyChoice entropy_amax_fast(const AbsHistogram& h, std::int64_t start_bin = 128,
                                std::int64_t quantized_bins = 128);

// Refuses settings entropy_amax cannot use for h (the same messages for both searches).
void validate_entropy(const AbsHistogram& h, std::int64_t start_bin, std::int64_t quantized_bins);

double percentile_amax(const AbsHistogram& h, double percentile);

}  // namespace medtrt::ops

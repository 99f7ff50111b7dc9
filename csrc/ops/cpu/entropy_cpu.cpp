// CPU implementation of the entropy op (see ops/entropy.h).
#include <algorithm>
#include <cmath>
#include <cstring>
#include <limits>
#include <numeric>

#include "common/vector_clones.h"
#include "ops/entropy.h"

namespace medtrt::ops {
namespace {

// ---- filling -------------------------------------------------------------------------------

constexpr std::int32_t kInfBits = 0x7f800000;  // |x| bit patterns above this one are NaN
constexpr std::int64_t kChunk = 1024;          // bin indices computed per vector pass
constexpr std::int64_t kBlock = std::int64_t{1} << 24;  // values per fill of uint32 scratch

// |x| as its IEEE bit pattern, read from memory that may be misaligned. Non-negative floats'
// patterns order as their values do and NaN's lie above +inf's, so the max and the NaN test
// are integer operations, which vectorise whatever the floating-point model.
inline std::int32_t abs_bits(const float* p) {
  std::uint32_t u;
  std::memcpy(&u, p, sizeof u);
  return static_cast<std::int32_t>(u & 0x7fffffffu);
}

inline float from_bits(std::int32_t bits) {
  float f;
  std::memcpy(&f, &bits, sizeof f);
  return f;
}

// What a pass over a batch learned: its largest |x| (NaN excluded, as bits) and NaN count.
struct BatchScan {
  std::int32_t max_bits = 0;
  std::uint64_t nans = 0;
};

MEDTRT_VECTOR_CLONES void scan_values(const float* x, std::int64_t n, BatchScan& scan) {
  for (std::int64_t start = 0; start < n; start += kBlock) {
    const std::int64_t m = std::min(kBlock, n - start);
    std::int32_t top = scan.max_bits;
    std::uint32_t nans = 0;
    for (std::int64_t i = start; i < start + m; ++i) {
      const std::int32_t u = abs_bits(x + i);
      const bool nan = u > kInfBits;
      nans += nan;
      const std::int32_t v = nan ? 0 : u;
      top = v > top ? v : top;
    }
    scan.max_bits = top;
    scan.nans += nans;
  }
}

// The bins of n values (n <= kBlock) counted into `local`: kWays interleaved arrays of
// bins + 1 counters (the extra one takes NaN), so that a run of one bin (the zeros after a
// ReLU) does not wait on its own increments. The bin is the reference's: |x| * per_bin in
// float, truncated, and everything at or past the last bin in the last bin (y < last in float
// is pos < last in double: last < 2^24 is exact in both). The max is scanned on the way.
template <int kWays>
MEDTRT_VECTOR_CLONES void bin_values(const float* x, std::int64_t n, float per_bin, std::int64_t bins,
                std::uint32_t* local, BatchScan& scan) {
  const float last = static_cast<float>(bins - 1);
  const float nan_bin = static_cast<float>(bins);
  const std::int64_t stride = bins + 1;
  alignas(64) std::int32_t idx[kChunk];
  std::int32_t top = scan.max_bits;
  for (std::int64_t start = 0; start < n; start += kChunk) {
    const std::int64_t k = std::min(kChunk, n - start);
    const float* xs = x + start;
    for (std::int64_t j = 0; j < k; ++j) {
      const std::int32_t u = abs_bits(xs + j);
      const bool nan = u > kInfBits;
      float y = from_bits(u) * per_bin;
      y = y < last ? y : last;
      y = nan ? nan_bin : y;
      idx[j] = static_cast<std::int32_t>(y);
      const std::int32_t v = nan ? 0 : u;
      top = v > top ? v : top;
    }
    std::int64_t j = 0;
    for (; j + kWays <= k; j += kWays)
      for (int w = 0; w < kWays; ++w) ++local[w * stride + idx[j + w]];
    for (; j < k; ++j) ++local[idx[j]];
  }
  scan.max_bits = top;
}

// The bins of a batch at per_bin, counted into `local` (ways x (bins + 1) uint32 counters) when
// the batch fits one block, else summed into `pending`; and its scan. Returns the ways used.
int count_batch(const float* x, std::int64_t n, float per_bin, std::int64_t bins,
                std::vector<std::uint32_t>& local, std::vector<std::uint64_t>& pending,
                BatchScan& scan) {
  const int ways = bins <= 4096 && n >= 4 * bins ? 4 : 1;  // 4 x 4097 counters fit in L1
  const std::size_t stride = static_cast<std::size_t>(bins) + 1;
  pending.clear();
  for (std::int64_t start = 0; start < n || start == 0; start += kBlock) {
    const std::int64_t m = std::min(kBlock, n - start);
    local.assign(ways * stride, 0);
    if (ways == 4)
      bin_values<4>(x + start, m, per_bin, bins, local.data(), scan);
    else
      bin_values<1>(x + start, m, per_bin, bins, local.data(), scan);
    for (int w = 0; w < ways; ++w) scan.nans += local[w * stride + bins];
    if (n <= kBlock) break;  // the usual case: the counts stay in `local`
    pending.resize(static_cast<std::size_t>(bins), 0);
    for (int w = 0; w < ways; ++w)
      for (std::size_t b = 0; b < pending.size(); ++b) pending[b] += local[w * stride + b];
  }
  return ways;
}

// bins / range as the float the bins are found with; false when it overflows float (a range
// below ~6e-36): then the bins are found in double (an infinite position has no integer).
bool float_per_bin(double range, std::int64_t bins, double* per_bin_d, float* per_bin) {
  *per_bin_d = static_cast<double>(bins) / range;  // finite: range >= 1e-45
  const bool in_float = *per_bin_d <= static_cast<double>(std::numeric_limits<float>::max());
  *per_bin = in_float ? static_cast<float>(*per_bin_d) : 0.0f;
  return in_float;
}

void bin_in_double(const float* x, std::int64_t n, double per_bin_d,
                   std::vector<std::uint64_t>& counts) {
  const double last = static_cast<double>(counts.size() - 1);
  for (std::int64_t i = 0; i < n; ++i) {
    const float a = std::fabs(x[i]);
    if (a != a) continue;
    const double pos = a * per_bin_d;
    const std::size_t b = pos < last ? static_cast<std::size_t>(pos) : counts.size() - 1;
    ++counts[b];
  }
}

[[noreturn]] void throw_infinite(const float* x, std::int64_t n) {
  for (std::int64_t i = 0; i < n; ++i)
    MEDTRT_CHECK(abs_bits(x + i) != kInfBits, "entropy: activation value ", x[i], " at index ", i,
                 " is infinite; the model overflows on this calibration data");
  throw std::logic_error("entropy: an infinite value was scanned but not found again");
}

}  // namespace

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

bool AbsHistogram::admit(float batch_max, std::uint64_t n, std::uint64_t nans) {
  nan_count_ += nans;
  const std::uint64_t counted = n - nans;
  total_ += counted;
  if (batch_max > max_abs_) max_abs_ = batch_max;
  if (range_ == 0.0) {
    if (batch_max == 0.0f) {  // only zeros so far: no range to bin them in yet
      zeros_pending_ += counted;
      return false;
    }
    range_ = batch_max;
    counts_[0] += zeros_pending_;
    zeros_pending_ = 0;
  } else if (batch_max > range_) {
    grow_to(batch_max);
  }
  return true;
}

void AbsHistogram::add(const float* x, std::int64_t n) {
  thread_local std::vector<std::uint32_t> local;
  thread_local std::vector<std::uint64_t> pending;
  const auto bins = static_cast<std::int64_t>(counts_.size());
  const double range_before = range_;
  double per_bin_d = 0.0;
  float per_bin = 0.0f;
  BatchScan scan;
  int ways = 0;
  // Usually the range holds: the bins are counted in the same pass as the max, and kept
  // unless the range has to grow.
  const bool counted = range_ > 0.0 && float_per_bin(range_, bins, &per_bin_d, &per_bin);
  if (counted)
    ways = count_batch(x, n, per_bin, bins, local, pending, scan);
  else
    scan_values(x, n, scan);
  if (scan.max_bits == kInfBits) throw_infinite(x, n);  // before anything changes
  if (!admit(from_bits(scan.max_bits), static_cast<std::uint64_t>(n), scan.nans)) return;
  if (!counted || range_ != range_before) {
    if (!float_per_bin(range_, bins, &per_bin_d, &per_bin)) {
      bin_in_double(x, n, per_bin_d, counts_);
      return;
    }
    BatchScan again;
    ways = count_batch(x, n, per_bin, bins, local, pending, again);
  }
  if (!pending.empty()) {
    for (std::size_t b = 0; b < counts_.size(); ++b) counts_[b] += pending[b];
    return;
  }
  const std::size_t stride = counts_.size() + 1;
  for (int w = 0; w < ways; ++w)
    for (std::size_t b = 0; b < counts_.size(); ++b) counts_[b] += local[w * stride + b];
}

// The former add(), unchanged: the yardstick of add() in tests and benchmarks.
void AbsHistogram::add_reference(const float* x, std::int64_t n) {
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

// ---- threshold search ----------------------------------------------------------------------

namespace {

// The histogram as both searches see it: counts as doubles with bins[0] replaced by bins[1],
// so the spike of exact zeros after a ReLU does not dominate; suffix[i] = sum of bins[i:].
struct SearchBins {
  std::vector<double> bins;
  std::vector<double> suffix;
  double p_total = 0.0;
};

SearchBins search_bins(const AbsHistogram& h) {
  const std::int64_t n = h.bins();
  SearchBins s{std::vector<double>(h.counts().begin(), h.counts().end()),
               std::vector<double>(static_cast<std::size_t>(n) + 1, 0.0), 0.0};
  s.bins[0] = s.bins[1];
  for (std::int64_t j = n - 1; j >= 0; --j) s.suffix[j] = s.suffix[j + 1] + s.bins[j];
  s.p_total = s.suffix[0];
  return s;
}

// KL(P || Q) of candidate i (kept bins), as the reference computes it; group_sum and
// group_nonzero are scratch of quantized_bins entries.
double candidate_kl(const SearchBins& s, std::int64_t i, std::int64_t quantized_bins,
                    std::vector<double>& group_sum, std::vector<std::int64_t>& group_nonzero) {
  const std::vector<double>& bins = s.bins;
  std::fill(group_sum.begin(), group_sum.end(), 0.0);
  std::fill(group_nonzero.begin(), group_nonzero.end(), 0);
  for (std::int64_t j = 0; j < i; ++j) {
    const std::int64_t g = j * quantized_bins / i;
    group_sum[g] += bins[j];
    group_nonzero[g] += bins[j] != 0.0;
  }
  const double q_total = s.p_total - s.suffix[i];
  double kl = 0.0;
  for (std::int64_t j = 0; j < i && std::isfinite(kl); ++j) {
    const double p = (j == i - 1 ? bins[j] + s.suffix[i] : bins[j]) / s.p_total;
    if (p == 0.0) continue;
    const std::int64_t g = j * quantized_bins / i;
    const double q = bins[j] != 0.0 && q_total > 0.0
                         ? group_sum[g] / static_cast<double>(group_nonzero[g]) / q_total
                         : 0.0;
    kl = q == 0.0 ? std::numeric_limits<double>::infinity() : kl + p * std::log(p / q);
  }
  return kl;
}

// ---- the fast search -----------------------------------------------------------------------
//
// With b the search's bins, P = sum b (an exact integer: the fast search runs for P < 2^52 and
// hands larger histograms to the reference), candidate i keeping bins [0, i), s = sum b[i:],
// Qt = P - s, and group g of candidate i (bins j with j * Q / i == g, i.e. from ceil(g i / Q)
// to ceil((g + 1) i / Q)) holding G_g in k_g non-empty bins, the reference computes
//   KL_i = sum over j < i with p_j > 0 of p_j ln(p_j / q_j),  p_j = b_j / P (bin i-1 also gets
//   s), q_j = G_g / (k_g Qt) for non-empty j (0 for empty ones),
// which is +inf exactly when b_{i-1} == 0 < s (P has mass in bin i-1, Q none; every other
// p_j > 0 has b_j > 0 and so q_j > 0). Otherwise, with c_g = ln P + ln G_g - ln k_g - ln Qt
// (so that ln(p_j / q_j) = ln b_j - c_g) and sum_g G_g = Qt, in exact arithmetic
//   P KL_i = sum_{j<i} b_j ln b_j - sum_g (G_g ln G_g - G_g ln k_g) - Qt (ln P - ln Qt) + corr,
//   corr   = (b_{i-1} + s) ln(b_{i-1} + s) - b_{i-1} ln b_{i-1} - s c_{Q-1}  if b_{i-1} > 0,
// (bin i-1, always in the last group, holds b_{i-1} + s on P's side and b_{i-1} on Q's). The
// first sum is a prefix sum; a group's term depends only on where it starts and its size,
// which is i / Q rounded down or up, so all of them are tabulated once. A candidate then costs
// Q additions and three logs instead of i logs.
//
// Why the choice is the reference's, bit for bit. Let e_i be the reference's computed KL, K_i
// the exact value of the formula, f_i the fast computed value; all three are +inf for the same
// i. For the finite ones, with u = 2^-53, gamma(k) = k u / (1 - k u), n bins, L = ln P + ln n + 1
// and a libm whose log is within 2 ulp:
//   |e_i - K_i| <= d_ref = gamma(n + 16) (L + 2). Each term p ln(p/q) is computed from exact
//     integers through at most 8 roundings (the log counted as two), so its error is at most
//     gamma(8) p (|ln(p/q)| + 1);
//     1/P <= p <= 1 and 1/(nP) <= q <= 1 give |ln(p/q)| <= ln P + ln n; the p sum to 1; adding
//     i <= n terms in order adds at most gamma(n) times the sum of their magnitudes.
//   |f_i - K_i| <= d_fast = gamma(n + Q + 32) (32 L + 32). The four parts of P KL_i are each at
//     most P L in magnitude except corr (at most 5 P L): b ln b <= b ln P, G ln k <= G ln n,
//     |ln P - ln Qt| <= ln P, s |c| <= P (3 ln P + ln n); each is computed with at most
//     n + 8 (the prefix sum), Q + 5 (the group terms) or 8 roundings relative to that
//     magnitude, the three additions and the division add 4 more: in all at most
//     gamma(n + Q + 16) * 18 P L for the numerator, then / P.
// Let m = min f_i and d = d_ref + d_fast. The reference's smallest value e* <= e_j <= f_j + d
// = m + d for the j with f_j = m. A candidate with f_i > m + 2d has e_i >= f_i - d > m + d >= e*:
// strictly worse than the minimum, never the minimum nor tied with it. So every i with
// e_i == e* has f_i <= m + 2d; evaluating exactly those with the reference's own loop, in
// increasing i with "<=", picks the reference's i, the last minimum (all candidates infinite:
// the reference keeps the last, i = n, and so does this). The test below uses m + 3d, which
// also absorbs the rounding of that sum (d >= n u L >> u m).

// Prefix sums over the search's bins (exact integers in double below 2^53).
struct Prefix {
  std::vector<double> sum;            // sum[j] = b[0] + ... + b[j-1]
  std::vector<std::int64_t> nonzero;  // non-empty bins among the first j
  std::vector<double> blogb;          // b ln b of each bin (0 for an empty one)
  std::vector<double> blogb_sum;      // prefix sums of blogb
  std::vector<double> log_int;        // ln k for group sizes k = 1 .. max (log_int[0] unused)
};

Prefix prefix_sums(const SearchBins& s, std::int64_t max_group) {
  const std::size_t n = s.bins.size();
  Prefix pre{std::vector<double>(n + 1, 0.0), std::vector<std::int64_t>(n + 1, 0),
             std::vector<double>(n, 0.0), std::vector<double>(n + 1, 0.0),
             std::vector<double>(static_cast<std::size_t>(max_group) + 1, 0.0)};
  for (std::size_t j = 0; j < n; ++j) {
    const double b = s.bins[j];
    pre.blogb[j] = b > 0.0 ? b * std::log(b) : 0.0;
    pre.sum[j + 1] = pre.sum[j] + b;
    pre.nonzero[j + 1] = pre.nonzero[j] + (b != 0.0);
    pre.blogb_sum[j + 1] = pre.blogb_sum[j] + pre.blogb[j];
  }
  for (std::size_t k = 1; k < pre.log_int.size(); ++k)
    pre.log_int[k] = std::log(static_cast<double>(k));
  return pre;
}

// G ln G - G ln k of the group of bins [lo, hi).
inline double group_term(const Prefix& pre, std::int64_t lo, std::int64_t hi) {
  const double g = pre.sum[hi] - pre.sum[lo];
  if (g == 0.0) return 0.0;
  return g * std::log(g) - g * pre.log_int[pre.nonzero[hi] - pre.nonzero[lo]];
}

// group_term for every start and every size the candidates use; left empty (each term computed
// when needed) when that table would exceed 2^22 entries (many bins, few quantized levels).
struct GroupTable {
  std::int64_t first_size = 0;
  std::int64_t stride = 0;
  std::vector<double> terms;

  double term(const Prefix& pre, std::int64_t lo, std::int64_t hi) const {
    return terms.empty() ? group_term(pre, lo, hi) : terms[(hi - lo - first_size) * stride + lo];
  }
};

GroupTable group_table(const Prefix& pre, std::int64_t start_bin, std::int64_t quantized_bins) {
  const auto n = static_cast<std::int64_t>(pre.blogb.size());
  GroupTable t{start_bin / quantized_bins, n, {}};
  const std::int64_t sizes = (n + quantized_bins - 1) / quantized_bins - t.first_size + 1;
  if (sizes * n > (std::int64_t{1} << 22)) return t;
  t.terms.assign(static_cast<std::size_t>(sizes * n), 0.0);
  for (std::int64_t k = 0; k < sizes; ++k)
    for (std::int64_t lo = 0; lo + t.first_size + k <= n; ++lo)
      t.terms[k * n + lo] = group_term(pre, lo, lo + t.first_size + k);
  return t;
}

// f_i of every candidate i = start_bin .. bins (see above).
std::vector<double> fast_divergences(const SearchBins& s, const Prefix& pre,
                                     const GroupTable& table, std::int64_t start_bin,
                                     std::int64_t quantized_bins) {
  const auto n = static_cast<std::int64_t>(s.bins.size());
  const std::int64_t q = quantized_bins;
  const double ln_p = std::log(s.p_total);
  std::vector<double> f(static_cast<std::size_t>(n - start_bin + 1));
  for (std::int64_t i = start_bin; i <= n; ++i) {
    const double tail = s.suffix[i];
    const double last = s.bins[i - 1];
    if (last == 0.0 && tail > 0.0) {
      f[i - start_bin] = std::numeric_limits<double>::infinity();
      continue;
    }
    // Group g ends at ceil((g + 1) i / Q) = (g + 1) a + ceil((g + 1) r / Q) for i = a Q + r;
    // the ceiling steps up by at most one per group (r < Q), tracked without a division.
    const std::int64_t a = i / q;
    const std::int64_t r = i % q;
    std::int64_t lo = 0, lo_last = 0, up = 0, rem = 0;  // rem = up Q - g r, in [0, Q)
    double terms = 0.0;
    for (std::int64_t g = 0; g < q; ++g) {
      rem -= r;
      if (rem < 0) {
        ++up;
        rem += q;
      }
      const std::int64_t hi = (g + 1) * a + up;
      terms += table.term(pre, lo, hi);
      lo_last = lo;
      lo = hi;
    }
    const double qt = s.p_total - tail;  // > 0: bins below i are not all empty here
    double num = pre.blogb_sum[i] - terms - qt * (ln_p - std::log(qt));
    if (last > 0.0 && tail > 0.0) {
      const double g_last = pre.sum[i] - pre.sum[lo_last];
      const double c = ln_p + std::log(g_last) -
                       pre.log_int[pre.nonzero[i] - pre.nonzero[lo_last]] - std::log(qt);
      const double folded = last + tail;
      num += folded * std::log(folded) - pre.blogb[i - 1] - tail * c;
    }
    f[i - start_bin] = num / s.p_total;
  }
  return f;
}

}  // namespace

void validate_entropy(const AbsHistogram& h, std::int64_t start_bin, std::int64_t quantized_bins) {
  const std::int64_t n = h.bins();
  MEDTRT_CHECK(quantized_bins >= 2 && quantized_bins <= n, "entropy: quantized_bins must be in [2, ",
               n, "]; got ", quantized_bins);
  MEDTRT_CHECK(start_bin >= quantized_bins && start_bin <= n, "entropy: start_bin must be in [",
               quantized_bins, ", ", n, "]; got ", start_bin);
}

EntropyResult entropy_amax(const AbsHistogram& h, std::int64_t start_bin,
                           std::int64_t quantized_bins) {
  validate_entropy(h, start_bin, quantized_bins);
  const std::int64_t n = h.bins();
  EntropyResult result{0.0, 0, {}};
  if (h.range() == 0.0 || h.total() == 0) return result;  // all zeros: nothing to calibrate
  const SearchBins s = search_bins(h);
  if (s.p_total == 0.0) return result;

  std::vector<double> group_sum(static_cast<std::size_t>(quantized_bins));
  std::vector<std::int64_t> group_nonzero(static_cast<std::size_t>(quantized_bins));
  double best = std::numeric_limits<double>::infinity();
  std::int64_t best_i = n;
  result.divergences.reserve(static_cast<std::size_t>(n - start_bin + 1));
  for (std::int64_t i = start_bin; i <= n; ++i) {
    const double kl = candidate_kl(s, i, quantized_bins, group_sum, group_nonzero);
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

EntropyChoice entropy_amax_fast(const AbsHistogram& h, std::int64_t start_bin,
                                std::int64_t quantized_bins) {
  validate_entropy(h, start_bin, quantized_bins);
  const std::int64_t n = h.bins();
  if (h.range() == 0.0 || h.total() == 0) return {0.0, 0, 0};
  const SearchBins s = search_bins(h);
  if (s.p_total == 0.0) return {0.0, 0, 0};
  if (!(s.p_total < 0x1p52)) {  // counts no longer exact in double: the reference decides
    const EntropyResult r = entropy_amax(h, start_bin, quantized_bins);
    return {r.amax, r.bins_kept, n - start_bin + 1};
  }
  const Prefix pre = prefix_sums(s, (n + quantized_bins - 1) / quantized_bins);
  const std::vector<double> f =
      fast_divergences(s, pre, group_table(pre, start_bin, quantized_bins), start_bin,
                       quantized_bins);
  const double m = *std::min_element(f.begin(), f.end());
  std::int64_t best_i = n;
  std::int64_t rechecked = 0;
  if (m != std::numeric_limits<double>::infinity()) {
    const auto gamma = [](std::int64_t k) {
      const double ku = static_cast<double>(k) * std::numeric_limits<double>::epsilon() / 2.0;
      return ku / (1.0 - ku);
    };
    const double big_l = std::log(s.p_total) + std::log(static_cast<double>(n)) + 1.0;
    const double d = gamma(n + 16) * (big_l + 2.0) +
                     gamma(n + quantized_bins + 32) * (32.0 * big_l + 32.0);
    const double cut = m + 3.0 * d;
    std::vector<double> group_sum(static_cast<std::size_t>(quantized_bins));
    std::vector<std::int64_t> group_nonzero(static_cast<std::size_t>(quantized_bins));
    double best = std::numeric_limits<double>::infinity();
    for (std::int64_t i = start_bin; i <= n; ++i) {
      if (!(f[i - start_bin] <= cut)) continue;
      const double kl = candidate_kl(s, i, quantized_bins, group_sum, group_nonzero);
      ++rechecked;
      if (kl <= best) {
        best = kl;
        best_i = i;
      }
    }
  }
  return {std::min(static_cast<double>(best_i) * h.bin_width(), h.max_abs()), best_i, rechecked};
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

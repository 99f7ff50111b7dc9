// CPU twin of the resize_normalize kernel: the same per-pixel function, looped on the host, with
// each image's column taps computed once and each row's tap once per row.
#include <cstdint>
#include <vector>

#include "ops/resize_normalize.h"

namespace medtrt::ops {
namespace {

template <typename Pixel>
void run(const ResizeNormalizeParams& p) {
#pragma omp parallel
  {
    std::vector<Tap> column_taps(static_cast<std::size_t>(p.out_w));
    std::int32_t taps_for = -1;  // image whose column taps are in column_taps
    const std::int64_t rows = static_cast<std::int64_t>(p.batch) * p.out_h;
#pragma omp for schedule(static)
    for (std::int64_t r = 0; r < rows; ++r) {
      const auto b = static_cast<std::int32_t>(r / p.out_h);
      const auto y = static_cast<std::int32_t>(r % p.out_h);
      const ImageDesc& d = p.images[b];
      if (taps_for != b) {
        for (std::int32_t x = 0; x < p.out_w; ++x) column_taps[x] = source_tap(x, d.width, p.out_w);
        taps_for = b;
      }
      const Tap ty = source_tap(y, d.height, p.out_h);
      for (std::int32_t x = 0; x < p.out_w; ++x)
        resize_normalize_pixel<Pixel>(p, d, y, x, ty, column_taps[x]);
    }
  }
}

}  // namespace

void resize_normalize_cpu(const ResizeNormalizeParams& params) {
  switch (params.pixel_type) {
    case PixelType::kU8: return run<std::uint8_t>(params);
    case PixelType::kU16: return run<std::uint16_t>(params);
    case PixelType::kI16: return run<std::int16_t>(params);
    case PixelType::kF32: return run<float>(params);
  }
}

}  // namespace medtrt::ops

// CPU twin of the resize_normalize kernel: the same per-pixel function, looped on the host.
#include <cstdint>

#include "ops/resize_normalize.h"

namespace medtrt::ops {
namespace {

template <typename Pixel>
void run(const ResizeNormalizeParams& p) {
  const std::int64_t rows = static_cast<std::int64_t>(p.batch) * p.out_h;
#pragma omp parallel for schedule(static)
  for (std::int64_t r = 0; r < rows; ++r) {
    const auto b = static_cast<std::int32_t>(r / p.out_h);
    const auto y = static_cast<std::int32_t>(r % p.out_h);
    for (std::int32_t x = 0; x < p.out_w; ++x) resize_normalize_pixel<Pixel>(p, b, y, x);
  }
}

}  // namespace

void resize_normalize_cpu(const ResizeNormalizeParams& params) {
  if (params.pixel_type == PixelType::kU8) run<std::uint8_t>(params);
  else run<std::uint16_t>(params);
}

}  // namespace medtrt::ops

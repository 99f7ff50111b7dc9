// resize_normalize: stored pixels (uint8/uint16/int16/float32, 1 or 3 channels, any size) ->
// network input (NCHW float32/float16) in one pass.
//
// Per stored pixel, in this order:
//   1. RGB -> gray (ITU-R BT.601 weights) when the image has 3 channels and the output 1;
//   2. modality rescale  v = v * slope + intercept              (identity when not given);
//   3. window            v = clamp((v - (center - width/2)) / width, 0, 1)   or
//      scale             v = v * scale   (default 1/255 for uint8, 1/65535 for uint16, 1 for
//                                         int16 and float32, e.g. DICOM values after rescale);
// then bilinear resize with half-pixel centres (torch interpolate, align_corners=False,
// antialias=False; source coordinates exact, see source_tap), then (v - mean[c]) / std[c],
// then the output cast.
// Steps 1-2 and the final normalisation are affine, so their place relative to the resize does
// not matter; the window clamp does, and it is applied to stored pixels before interpolation.
//
// The per-pixel math lives here once, in MEDTRT_HD functions used by the CPU twin
// (cpu/resize_normalize_cpu.cpp) and the CUDA kernel (cuda/resize_normalize_cuda.cu).
#pragma once

#include <cstdint>
#include <optional>
#include <string>
#include <utility>
#include <vector>

#include "common/check.h"
#include "common/half.h"

struct CUstream_st;  // cudaStream_t without including the CUDA headers

namespace medtrt::ops {

enum class PixelType : std::int32_t { kU8 = 0, kU16 = 1, kI16 = 2, kF32 = 3 };
enum class OutType : std::int32_t { kF32 = 0, kF16 = 1 };

// One image of a (possibly ragged) batch. Pixels are row-major with channels interleaved
// (H x W x C), contiguous. `src` is an address in the memory space of whoever reads it.
struct ImageDesc {
  std::uint64_t src;
  std::int32_t height;
  std::int32_t width;
  std::int32_t channels;  // 1 or 3
  std::int32_t out_row;   // image index in the output batch (lets one batch mix pixel types)
};
static_assert(sizeof(ImageDesc) == 24, "ImageDesc is copied to the device as raw bytes");

struct ResizeNormalizeParams {
  const ImageDesc* images;  // `batch` descriptors, readable by the executing device
  void* out;                // [batch, out_channels, out_h, out_w] of out_type
  std::int32_t batch;
  std::int32_t out_h;
  std::int32_t out_w;
  std::int32_t out_channels;  // 1 or 3
  PixelType pixel_type;
  OutType out_type;
  std::int32_t use_window;  // 1: window, 0: scale
  float rescale_slope;
  float rescale_intercept;
  float scale;
  float window_low;
  float window_inv_width;
  float mean[3];
  float inv_std[3];
};

// ---- shared per-pixel math ---------------------------------------------------------------

constexpr float kGrayR = 0.299f;
constexpr float kGrayG = 0.587f;
constexpr float kGrayB = 0.114f;

// Bilinear source taps for one output coordinate with half-pixel centres (align_corners=False):
//   src = (dst + 0.5) * in / out - 0.5 = ((2*dst + 1) * in - out) / (2 * out), clamped at 0.
// Split exactly into integer part and remainder with integer arithmetic, so only the fractional
// weight is rounded. (ATen computes src in float32, which at src ~ 1000 is off by up to ~6e-5
// pixel; against a steep edge that is a 6e-5 error in the output.)
struct Tap {
  std::int32_t i0;
  std::int32_t i1;
  float w0;
  float w1;
};

MEDTRT_HD Tap source_tap(std::int32_t dst, std::int32_t in_size, std::int32_t out_size) {
  const std::int64_t num = (2 * static_cast<std::int64_t>(dst) + 1) * in_size - out_size;
  const std::int64_t den = 2 * static_cast<std::int64_t>(out_size);
  Tap t;
  if (num <= 0) {
    t.i0 = 0;
    t.w1 = 0.0f;
  } else {
    // 32-bit division when it fits (always for realistic sizes; 64-bit division is slow on GPUs).
    const std::int64_t i0 = num <= 0x7fffffff
                                ? static_cast<std::int64_t>(static_cast<std::uint32_t>(num) /
                                                            static_cast<std::uint32_t>(den))
                                : num / den;
    t.i0 = static_cast<std::int32_t>(i0);
    t.w1 = static_cast<float>(num - i0 * den) / static_cast<float>(den);
  }
  if (t.i0 >= in_size - 1) {  // last row/column: both taps on it
    t.i0 = in_size - 1;
    t.w1 = 0.0f;
  }
  t.i1 = t.i0 < in_size - 1 ? t.i0 + 1 : t.i0;
  t.w0 = 1.0f - t.w1;
  return t;
}

MEDTRT_HD float intensity(const ResizeNormalizeParams& p, float v) {
  v = v * p.rescale_slope + p.rescale_intercept;
  if (p.use_window) {
    v = (v - p.window_low) * p.window_inv_width;
    v = v < 0.0f ? 0.0f : (v > 1.0f ? 1.0f : v);
  } else {
    v = v * p.scale;
  }
  return v;
}

// Intensity-transformed value of stored pixel (y, x) for output channel `ch`.
template <typename Pixel>
MEDTRT_HD float stored_value(const ResizeNormalizeParams& p, const ImageDesc& d, std::int32_t y,
                             std::int32_t x, std::int32_t ch) {
  const Pixel* px = reinterpret_cast<const Pixel*>(d.src);
  const std::int64_t at = (static_cast<std::int64_t>(y) * d.width + x) * d.channels;
  float v;
  if (d.channels == 1) {
    v = static_cast<float>(px[at]);
  } else if (p.out_channels == 3) {
    v = static_cast<float>(px[at + ch]);
  } else {
    v = kGrayR * static_cast<float>(px[at]) + kGrayG * static_cast<float>(px[at + 1]) +
        kGrayB * static_cast<float>(px[at + 2]);
  }
  return intensity(p, v);
}

MEDTRT_HD void store_output(const ResizeNormalizeParams& p, std::int64_t index, float v) {
  if (p.out_type == OutType::kF32) {
    static_cast<float*>(p.out)[index] = v;
  } else {
    static_cast<std::uint16_t*>(p.out)[index] = float_to_half_bits(v);
  }
}

// Computes every output channel of output pixel (y, x) of image d (output row d.out_row),
// given its taps.
template <typename Pixel>
MEDTRT_HD void resize_normalize_pixel(const ResizeNormalizeParams& p, const ImageDesc& d,
                                      std::int32_t y, std::int32_t x, const Tap& ty,
                                      const Tap& tx) {
  const std::int64_t plane = static_cast<std::int64_t>(p.out_h) * p.out_w;
  const std::int64_t base = static_cast<std::int64_t>(d.out_row) * p.out_channels * plane +
                            static_cast<std::int64_t>(y) * p.out_w + x;
  // A grayscale source gives the same interpolated value for every output channel.
  const std::int32_t distinct = (d.channels == 3 && p.out_channels == 3) ? 3 : 1;
  float v = 0.0f;
  // Unrolled over the compile-time bound so mean[c]/inv_std[c] are constant offsets: a runtime
  // index would make nvcc copy the whole params struct to local memory in every thread.
#if defined(__CUDA_ARCH__)
#pragma unroll
#endif
  for (std::int32_t c = 0; c < 3; ++c) {
    if (c >= p.out_channels) break;
    if (c < distinct) {
      const float v00 = stored_value<Pixel>(p, d, ty.i0, tx.i0, c);
      const float v01 = stored_value<Pixel>(p, d, ty.i0, tx.i1, c);
      const float v10 = stored_value<Pixel>(p, d, ty.i1, tx.i0, c);
      const float v11 = stored_value<Pixel>(p, d, ty.i1, tx.i1, c);
      v = ty.w0 * (tx.w0 * v00 + tx.w1 * v01) + ty.w1 * (tx.w0 * v10 + tx.w1 * v11);
    }
    store_output(p, base + c * plane, (v - p.mean[c]) * p.inv_std[c]);
  }
}

// Same, computing the taps: what one CUDA thread does. The CPU twin computes each row's and
// column's taps once with the same source_tap() and calls the overload above.
template <typename Pixel>
MEDTRT_HD void resize_normalize_pixel(const ResizeNormalizeParams& p, std::int32_t b,
                                      std::int32_t y, std::int32_t x) {
  const ImageDesc& d = p.images[b];
  resize_normalize_pixel<Pixel>(p, d, y, x, source_tap(y, d.height, p.out_h),
                                source_tap(x, d.width, p.out_w));
}

// ---- validation (host only) ---------------------------------------------------------------

// What the validator needs to know about one image, from a NumPy array or a device tensor.
struct ImageShape {
  std::vector<std::int64_t> shape;
  std::string dtype;  // NumPy/torch dtype name, e.g. "uint8"
};

struct ResizeNormalizeOptions {
  std::int64_t out_h = 0;
  std::int64_t out_w = 0;
  std::int64_t channels = 1;
  std::optional<double> scale;
  std::optional<std::pair<double, double>> window;   // (center, width)
  std::optional<std::pair<double, double>> rescale;  // (slope, intercept)
  std::vector<double> mean{0.0};
  std::vector<double> std{1.0};
  std::string dtype = "float32";
};

// The validators throw std::invalid_argument stating the expected and the actual value.
//
// Checks a batch and its options; returns params with every field but `images`/`out` filled,
// and the per-image descriptors with `src` left 0 and `out_row` = the image's index. CPU and
// CUDA entry points both call this first.
ResizeNormalizeParams validate_resize_normalize(const std::vector<ImageShape>& images,
                                                const ResizeNormalizeOptions& options,
                                                std::vector<ImageDesc>* descs);

// The same checks in parts, for a caller that validates image by image (the pipeline, whose
// batches may mix pixel types). One image: `index` is its batch position, which the errors
// name; `batch_dtype` the pixel type every image of the batch must have ("": any accepted one);
// `caller` prefixes the errors (e.g. "Pipeline.stage_in: "). Returns its descriptor, `src` 0
// and `out_row` = index.
ImageDesc validate_resize_normalize_image(const ImageShape& image, std::int64_t index,
                                          const std::string& batch_dtype = "",
                                          const std::string& caller = "");

// The options, for `batch` images of pixel type `dtype` (one the image check accepts): params
// as validate_resize_normalize returns them.
ResizeNormalizeParams validate_resize_normalize_options(const ResizeNormalizeOptions& options,
                                                        const std::string& dtype,
                                                        std::int32_t batch);

std::size_t output_element_size(OutType t);

// CPU twin: params.images points to host descriptors, params.out to host memory.
void resize_normalize_cpu(const ResizeNormalizeParams& params);

// The CUDA entry points (cuda/resize_normalize_cuda.cu). A build without CUDA has stubs instead
// (common/cuda_stub.cpp) that throw std::runtime_error saying so.
//
// Copies `host_descs` into `device_descs` (params.batch entries) on `stream`, then launches the
// kernel writing params.out (device memory). Asynchronous; never allocates or synchronizes.
// For the op-level API host_descs may be pageable; the pipeline passes pinned memory.
void resize_normalize_cuda(const ResizeNormalizeParams& params, const ImageDesc* host_descs,
                           ImageDesc* device_descs, CUstream_st* stream);

// Launch only: params.images must already point to the descriptors in device memory.
void resize_normalize_cuda_launch(const ResizeNormalizeParams& params, CUstream_st* stream);

}  // namespace medtrt::ops

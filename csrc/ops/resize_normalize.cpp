// Validation for resize_normalize, shared by the CPU and CUDA entry points.
#include "ops/resize_normalize.h"

#include <cmath>
#include <limits>

namespace medtrt::ops {
namespace {

std::string shape_str(const std::vector<std::int64_t>& shape) {
  std::string s = "(";
  for (std::size_t i = 0; i < shape.size(); ++i) {
    s += std::to_string(shape[i]);
    if (i + 1 < shape.size() || shape.size() == 1) s += ", ";
  }
  if (shape.size() == 1) s.pop_back();
  return s + ")";
}

// Sides up to 2^24 keep every int32 index and grid-stride loop in the kernels far from overflow.
constexpr std::int64_t kMaxDim = std::int64_t{1} << 24;

std::optional<PixelType> pixel_type(const std::string& dtype) {
  if (dtype == "uint8") return PixelType::kU8;
  if (dtype == "uint16") return PixelType::kU16;
  if (dtype == "int16") return PixelType::kI16;
  if (dtype == "float32") return PixelType::kF32;
  return std::nullopt;
}

double default_scale(PixelType t) {
  switch (t) {
    case PixelType::kU8: return 1.0 / 255.0;
    case PixelType::kU16: return 1.0 / 65535.0;
    default: return 1.0;  // signed or float values are taken as they are
  }
}

// The kernels compute in float32: a setting finite as a double but not as a float (scale=1e300,
// or 1/std for std=1e-300) would make every pixel inf or NaN, and the conversion itself is
// undefined past float's range. Checked before converting.
float to_float(double v, const char* op, const std::string& what) {
  MEDTRT_CHECK(std::isfinite(v) && std::fabs(v) <= std::numeric_limits<float>::max(), op, what,
               " = ", v, " is outside float32's range (|x| <= 3.4e38), in which the kernels "
               "compute; pass a value of a sensible magnitude");
  return static_cast<float>(v);
}

constexpr const char* kOp = "resize_normalize: ";

// The output half of the options: size, channels and element type.
void check_output(const ResizeNormalizeOptions& o) {
  const char* op = kOp;
  MEDTRT_CHECK(o.out_h >= 1 && o.out_w >= 1, op,
               "out_size must be positive (height, width); got (", o.out_h, ", ", o.out_w, ")");
  MEDTRT_CHECK(o.out_h <= kMaxDim && o.out_w <= kMaxDim, op, "out_size (", o.out_h, ", ", o.out_w,
               ") exceeds the limit of 2^24 per side");
  MEDTRT_CHECK(o.channels == 1 || o.channels == 3, op, "channels must be 1 or 3; got ",
               o.channels);
  MEDTRT_CHECK(o.dtype == "float32" || o.dtype == "float16", op,
               "dtype must be 'float32' or 'float16'; got '", o.dtype, "'");
}

// Modality rescale, then window or scale (its default from the pixel type) into `p`.
void set_intensity(const ResizeNormalizeOptions& o, ResizeNormalizeParams& p) {
  const char* op = kOp;
  p.rescale_slope = 1.0f;
  p.rescale_intercept = 0.0f;
  if (o.rescale) {
    const auto [slope, intercept] = *o.rescale;
    MEDTRT_CHECK(std::isfinite(slope) && std::isfinite(intercept), op,
                 "rescale=(slope, intercept) must be finite; got (", slope, ", ", intercept, ")");
    p.rescale_slope = to_float(slope, op, "rescale slope");
    p.rescale_intercept = to_float(intercept, op, "rescale intercept");
  }

  MEDTRT_CHECK(!(o.window && o.scale), op,
               "pass either window=(center, width) or scale, not both");
  if (o.window) {
    const auto [center, width] = *o.window;
    MEDTRT_CHECK(std::isfinite(center) && std::isfinite(width), op,
                 "window=(center, width) must be finite; got (", center, ", ", width, ")");
    MEDTRT_CHECK(width > 0.0, op, "window width must be > 0; got ", width,
                 " (window=(center, width))");
    p.use_window = 1;
    p.window_low = to_float(center - width / 2.0, op, "window low edge (center - width/2)");
    p.window_inv_width = to_float(1.0 / width, op, "1 / window width");
  } else {
    const double scale = o.scale ? *o.scale : default_scale(p.pixel_type);
    MEDTRT_CHECK(std::isfinite(scale), op, "scale must be finite; got ", scale);
    p.use_window = 0;
    p.scale = to_float(scale, op, "scale");
  }
}

// Per-channel mean and 1/std into `p` (one value or one per channel; replicated to 3).
void set_mean_std(const ResizeNormalizeOptions& o, ResizeNormalizeParams& p) {
  const char* op = kOp;
  const auto check_stat = [&](const std::vector<double>& v, const char* name) {
    MEDTRT_CHECK(v.size() == 1 || static_cast<std::int64_t>(v.size()) == o.channels, op, name,
                 " has ", v.size(), " values; expected 1 or channels (", o.channels, ")");
    for (std::size_t c = 0; c < v.size(); ++c)
      MEDTRT_CHECK(std::isfinite(v[c]), op, name, "[", c, "] must be finite; got ", v[c]);
  };
  check_stat(o.mean, "mean");
  check_stat(o.std, "std");
  for (std::size_t c = 0; c < o.std.size(); ++c)
    MEDTRT_CHECK(o.std[c] != 0.0, op, "std[", c, "] is 0; expected a nonzero standard deviation");
  const auto at = [](const std::vector<double>& v, std::int64_t c) {
    return v.size() == 1 ? v[0] : v[static_cast<std::size_t>(c)];
  };
  for (std::int64_t c = 0; c < 3; ++c) {
    const std::int64_t src = c < o.channels ? c : 0;
    p.mean[c] = to_float(at(o.mean, src), op, detail::concat("mean[", src, "]"));
    p.inv_std[c] = to_float(1.0 / at(o.std, src), op, detail::concat("1 / std[", src, "]"));
  }
}

// Everything but the output checks (done first by the callers): params for `batch` images of
// pixel type `dtype`.
ResizeNormalizeParams make_params(const ResizeNormalizeOptions& o, const std::string& dtype,
                                  std::int32_t batch) {
  ResizeNormalizeParams p{};
  p.batch = batch;
  p.out_h = static_cast<std::int32_t>(o.out_h);
  p.out_w = static_cast<std::int32_t>(o.out_w);
  p.out_channels = static_cast<std::int32_t>(o.channels);
  p.pixel_type = *pixel_type(dtype);
  p.out_type = o.dtype == "float32" ? OutType::kF32 : OutType::kF16;
  set_intensity(o, p);
  set_mean_std(o, p);
  return p;
}

}  // namespace

std::size_t output_element_size(OutType t) { return t == OutType::kF32 ? 4 : 2; }

ImageDesc validate_resize_normalize_image(const ImageShape& im, std::int64_t i,
                                          const std::string& batch_dtype,
                                          const std::string& caller) {
  const std::string op = caller + kOp;
  const std::size_t rank = im.shape.size();
  MEDTRT_CHECK(rank == 2 || rank == 3, op, "image ", i, " has ", rank, " dimensions, shape ",
               shape_str(im.shape), "; expected 2 (H, W) or 3 (H, W, C)");
  MEDTRT_CHECK(pixel_type(im.dtype).has_value(), op, "image ", i, " has dtype ", im.dtype,
               "; expected uint8, uint16, int16 or float32 pixels");
  MEDTRT_CHECK(batch_dtype.empty() || im.dtype == batch_dtype, op, "image ", i, " is ", im.dtype,
               " but image 0 is ", batch_dtype, "; expected one dtype per batch (convert before "
               "calling)");
  const std::int64_t c = rank == 3 ? im.shape[2] : 1;
  MEDTRT_CHECK(c == 1 || c == 3, op, "image ", i, " has ", c, " channels, shape ",
               shape_str(im.shape), "; expected 1 or 3 in H x W x C layout");
  MEDTRT_CHECK(im.shape[0] >= 1 && im.shape[1] >= 1, op, "image ", i, " has shape ",
               shape_str(im.shape), "; expected height and width >= 1");
  MEDTRT_CHECK(im.shape[0] <= kMaxDim && im.shape[1] <= kMaxDim, op, "image ", i,
               " has shape ", shape_str(im.shape), "; expected sides of at most 2^24");
  return ImageDesc{0, static_cast<std::int32_t>(im.shape[0]),
                   static_cast<std::int32_t>(im.shape[1]), static_cast<std::int32_t>(c),
                   static_cast<std::int32_t>(i)};
}

ResizeNormalizeParams validate_resize_normalize_options(const ResizeNormalizeOptions& o,
                                                        const std::string& dtype,
                                                        std::int32_t batch) {
  check_output(o);
  MEDTRT_CHECK(pixel_type(dtype).has_value(), kOp, "pixel dtype ", dtype,
               " is not one of uint8, uint16, int16 or float32");
  return make_params(o, dtype, batch);
}

// In this order: the batch, the output options, each image, the intensity options (the default
// scale depends on the images' pixel type).
ResizeNormalizeParams validate_resize_normalize(const std::vector<ImageShape>& images,
                                                const ResizeNormalizeOptions& o,
                                                std::vector<ImageDesc>* descs) {
  MEDTRT_CHECK(!images.empty(), kOp, "expected at least one image; got an empty batch");
  MEDTRT_CHECK(static_cast<std::int64_t>(images.size()) <= std::numeric_limits<std::int32_t>::max(),
               kOp, "batch of ", images.size(), " images exceeds the limit of 2^31-1");
  check_output(o);
  const std::string& dtype0 = images[0].dtype;
  descs->assign(images.size(), ImageDesc{});
  for (std::size_t i = 0; i < images.size(); ++i)
    (*descs)[i] = validate_resize_normalize_image(images[i], static_cast<std::int64_t>(i), dtype0);
  return make_params(o, dtype0, static_cast<std::int32_t>(images.size()));
}

}  // namespace medtrt::ops

// CUDA kernel for resize_normalize: one thread per output pixel (all channels), the per-pixel
// math shared with the CPU twin through ops/resize_normalize.h.
#include <cuda_runtime.h>

#include <algorithm>
#include <cstdint>

#include "ops/resize_normalize.h"

namespace medtrt::ops {
namespace {

constexpr int kBlockX = 32;
constexpr int kBlockY = 8;
constexpr unsigned kMaxGridYZ = 65535;

template <typename Pixel>
__global__ void resize_normalize_kernel(ResizeNormalizeParams p) {
  const std::int32_t x = blockIdx.x * blockDim.x + threadIdx.x;
  if (x >= p.out_w) return;
  for (std::int32_t b = blockIdx.z; b < p.batch; b += gridDim.z)
    for (std::int32_t y = blockIdx.y * blockDim.y + threadIdx.y; y < p.out_h;
         y += gridDim.y * blockDim.y)
      resize_normalize_pixel<Pixel>(p, b, y, x);
}

}  // namespace

void resize_normalize_cuda(const ResizeNormalizeParams& params, const ImageDesc* host_descs,
                           ImageDesc* device_descs, CUstream_st* stream) {
  MEDTRT_CUDA_CHECK(cudaMemcpyAsync(device_descs, host_descs,
                                    sizeof(ImageDesc) * static_cast<std::size_t>(params.batch),
                                    cudaMemcpyHostToDevice, stream));
  ResizeNormalizeParams p = params;
  p.images = device_descs;
  resize_normalize_cuda_launch(p, stream);
}

void resize_normalize_cuda_launch(const ResizeNormalizeParams& p, CUstream_st* stream) {
  const dim3 block(kBlockX, kBlockY);
  const dim3 grid((p.out_w + kBlockX - 1) / kBlockX,
                  std::min<unsigned>((p.out_h + kBlockY - 1) / kBlockY, kMaxGridYZ),
                  std::min<unsigned>(p.batch, kMaxGridYZ));
  switch (p.pixel_type) {
    case PixelType::kU8: resize_normalize_kernel<std::uint8_t><<<grid, block, 0, stream>>>(p); break;
    case PixelType::kU16: resize_normalize_kernel<std::uint16_t><<<grid, block, 0, stream>>>(p); break;
    case PixelType::kI16: resize_normalize_kernel<std::int16_t><<<grid, block, 0, stream>>>(p); break;
    case PixelType::kF32: resize_normalize_kernel<float><<<grid, block, 0, stream>>>(p); break;
  }
  MEDTRT_CUDA_CHECK(cudaGetLastError());
}

}  // namespace medtrt::ops

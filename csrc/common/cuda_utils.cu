#include "common/cuda_utils.h"

#include "common/check.h"

#include <cuda_runtime.h>

namespace medtrt {

int cuda_device_count() noexcept {
  int n = 0;
  if (cudaGetDeviceCount(&n) != cudaSuccess) {
    cudaGetLastError();  // clear the sticky-free error so later calls start clean
    return 0;
  }
  return n;
}

std::string cuda_device_status() {
  int n = 0;
  const cudaError_t err = cudaGetDeviceCount(&n);
  if (err == cudaSuccess) return n > 0 ? "" : "no CUDA device is visible";
  cudaGetLastError();
  int driver = 0;
  const std::string detail = std::string(cudaGetErrorName(err)) + ": " + cudaGetErrorString(err);
  if (cudaDriverGetVersion(&driver) == cudaSuccess && driver == 0)
    return "no NVIDIA driver is installed (" + detail + ")";
  return detail;
}

int cuda_runtime_version() noexcept {
  return CUDART_VERSION;
}

int cuda_current_device() noexcept {
  int d = -1;
  if (cudaGetDevice(&d) != cudaSuccess) {
    cudaGetLastError();
    return -1;
  }
  return d;
}

void cuda_set_device(int ordinal) { MEDTRT_CUDA_CHECK(cudaSetDevice(ordinal)); }

int cuda_driver_version() noexcept {
  int v = 0;
  if (cudaDriverGetVersion(&v) != cudaSuccess) return 0;
  return v;
}

}  // namespace medtrt

#include "common/cuda_utils.h"

#include "common/check.h"

#include <cuda_runtime.h>

#ifndef MEDTRT_CUDA_ARCHITECTURES
#define MEDTRT_CUDA_ARCHITECTURES ""
#endif

namespace medtrt {

bool cuda_compiled() noexcept { return true; }

const char* cuda_architectures() noexcept { return MEDTRT_CUDA_ARCHITECTURES; }

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

// Whether `device` has an active primary context. Making a device current creates its context
// (cudaSetDevice initialises it since CUDA 12, taking GPU memory), so a device the process has
// not used is not restored to (torch's device guard does the same). True when it cannot tell.
bool cuda_has_primary_context(int device) noexcept {
#if CUDART_VERSION >= 12050
  // Driver entry points through the runtime (no link to libcuda). CUresult and CUdevice are ints.
  using DeviceGet = int (*)(int*, int);                // cuDeviceGet (v2000 ABI)
  using GetState = int (*)(int, unsigned int*, int*);  // cuDevicePrimaryCtxGetState (v7000 ABI)
  static const auto lookup = [](const char* name) -> void* {
    void* fn = nullptr;
    cudaDriverEntryPointQueryResult found{};
    if (cudaGetDriverEntryPointByVersion(name, &fn, 12000, cudaEnableDefault, &found) !=
            cudaSuccess ||
        found != cudaDriverEntryPointSuccess) {
      cudaGetLastError();
      return nullptr;
    }
    return fn;
  };
  static const auto device_get = reinterpret_cast<DeviceGet>(lookup("cuDeviceGet"));
  static const auto get_state = reinterpret_cast<GetState>(lookup("cuDevicePrimaryCtxGetState"));
  int handle = 0;
  unsigned int flags = 0;
  int active = 0;
  if (device_get == nullptr || get_state == nullptr || device_get(&handle, device) != 0 ||
      get_state(handle, &flags, &active) != 0)
    return true;
  return active != 0;
#else
  (void)device;
  return true;
#endif
}

void cuda_restore_device(int previous) noexcept {
  if (previous < 0 || !cuda_has_primary_context(previous)) return;
  if (cudaSetDevice(previous) != cudaSuccess) cudaGetLastError();
}

int cuda_driver_version() noexcept {
  int v = 0;
  if (cudaDriverGetVersion(&v) != cudaSuccess) return 0;
  return v;
}

}  // namespace medtrt

// Host-side CUDA queries callable from translation units that do not include CUDA headers.
// Defined in cuda_utils.cu when the build found a CUDA compiler, else in cuda_stub.cpp (no
// device: count 0, current device -1, versions 0, the status says why).
#pragma once

#include <string>

namespace medtrt {

// Whether the CUDA kernels were compiled into this extension.
bool cuda_compiled() noexcept;

// The architectures they were compiled for, comma-separated ("75-real,...,90"; "" without CUDA).
const char* cuda_architectures() noexcept;

// Number of visible CUDA devices; 0 when there is no driver or no device (never throws).
int cuda_device_count() noexcept;

// Why cuda_device_count() is 0 ("" when it is not), e.g. "cudaErrorNoDevice: no CUDA-capable
// device is detected".
std::string cuda_device_status();

// Runtime version this extension was linked against, as CUDA encodes it (13000 = 13.0); 0
// without CUDA.
int cuda_runtime_version() noexcept;

// The calling thread's current device; -1 when there is none (no driver or device).
int cuda_current_device() noexcept;

// Makes `ordinal` the calling thread's current device; throws CudaError on failure.
void cuda_set_device(int ordinal);

// Whether `device` has an active primary context (the process has used it); true when it cannot
// tell (CUDA < 12.5 or no driver entry point).
bool cuda_has_primary_context(int device) noexcept;

// Makes `previous` current again, unless it is -1 or has no primary context: setting it would
// create one, taking memory on a GPU the caller never used. Never throws.
void cuda_restore_device(int previous) noexcept;

// Latest CUDA version the installed driver supports; 0 when there is no driver.
int cuda_driver_version() noexcept;

}  // namespace medtrt

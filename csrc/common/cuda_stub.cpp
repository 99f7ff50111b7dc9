// Every CUDA entry point, for a build in which CMake found no CUDA compiler: compiled instead of
// common/cuda_utils.cu, ops/cuda/*.cu and runtime/pipeline_cuda.cu (see CMakeLists.txt), so the
// callers (bindings.cpp) are the same code in both builds. The queries answer "no device"
// (count 0, current device -1, versions 0, a status that says why); the work entry points throw
// std::runtime_error (Python RuntimeError) naming the call and the fix.
#include <stdexcept>
#include <string>

#include "common/check.h"
#include "common/cuda_utils.h"
#include "ops/resize_normalize.h"
#include "ops/topk.h"
#include "runtime/pipeline.h"

namespace medtrt {
namespace {

[[noreturn]] void no_cuda(const char* what) {
  throw std::runtime_error(std::string(what) +
                           ": medtrt was built without CUDA (no nvcc was found at build time); "
                           "reinstall with the CUDA toolkit on PATH or use NumPy inputs");
}

}  // namespace

// ---- common/cuda_utils.h ---------------------------------------------------------------------

bool cuda_compiled() noexcept { return false; }
const char* cuda_architectures() noexcept { return ""; }
int cuda_device_count() noexcept { return 0; }
std::string cuda_device_status() { return "medtrt was built without CUDA"; }
int cuda_runtime_version() noexcept { return 0; }
int cuda_current_device() noexcept { return -1; }

void cuda_set_device(int ordinal) {
  MEDTRT_CHECK(false, "cuda_set_device(", ordinal, "): medtrt was built without CUDA");
}

bool cuda_has_primary_context(int) noexcept { return false; }  // no device has a context
void cuda_restore_device(int) noexcept {}
int cuda_driver_version() noexcept { return 0; }

// ---- ops -------------------------------------------------------------------------------------

namespace ops {

void resize_normalize_cuda(const ResizeNormalizeParams&, const ImageDesc*, ImageDesc*,
                           CUstream_st*) {
  no_cuda("resize_normalize_cuda");
}

void resize_normalize_cuda_launch(const ResizeNormalizeParams&, CUstream_st*) {
  no_cuda("resize_normalize_cuda");
}

void topk_cuda(const TopkParams&, CUstream_st*) { no_cuda("topk_cuda"); }

}  // namespace ops

// ---- runtime ---------------------------------------------------------------------------------

namespace runtime {

std::unique_ptr<Device> make_cuda_device(int) { no_cuda("Pipeline(device=cuda)"); }

}  // namespace runtime
}  // namespace medtrt

// Error checking shared by every translation unit (C++ and CUDA).
//
// MEDTRT_CHECK(cond, parts...)  -> std::invalid_argument (pybind11 maps it to ValueError).
// MEDTRT_CUDA_CHECK(expr)       -> medtrt::CudaError naming the call, file and line
//                                  (bindings map it to medtrt.errors.CudaError).
// MEDTRT_CUDA_CHECK expands to CUDA runtime calls, so it is only usable in .cu files.
#pragma once

#include <sstream>
#include <stdexcept>
#include <string>

#if defined(__CUDACC__)
#define MEDTRT_HD __host__ __device__ __forceinline__
#else
#define MEDTRT_HD inline
#endif

namespace medtrt {

class CudaError : public std::runtime_error {
 public:
  using std::runtime_error::runtime_error;
};

namespace detail {

template <typename... Parts>
std::string concat(const Parts&... parts) {
  std::ostringstream os;
  (os << ... << parts);
  return os.str();
}

[[noreturn]] inline void throw_cuda_error(const char* name, const char* what, const char* expr,
                                          const char* file, int line) {
  throw CudaError(concat(expr, " failed: ", name, " (", what, ") at ", file, ":", line));
}

}  // namespace detail
}  // namespace medtrt

#define MEDTRT_CHECK(cond, ...)                                             \
  do {                                                                      \
    if (!(cond)) throw std::invalid_argument(::medtrt::detail::concat(__VA_ARGS__)); \
  } while (0)

// On failure the runtime's last error is cleared (cudaGetLastError) before throwing: the error
// is reported once, here, not again by the next launch check (ours or torch's) in this thread.
#define MEDTRT_CUDA_CHECK(expr)                                                          \
  do {                                                                                   \
    const cudaError_t medtrt_err_ = (expr);                                              \
    if (medtrt_err_ != cudaSuccess) {                                                    \
      (void)cudaGetLastError();                                                          \
      ::medtrt::detail::throw_cuda_error(cudaGetErrorName(medtrt_err_),                  \
                                         cudaGetErrorString(medtrt_err_), #expr, __FILE__, \
                                         __LINE__);                                      \
    }                                                                                    \
  } while (0)

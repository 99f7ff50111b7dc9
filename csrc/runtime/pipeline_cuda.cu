// The CUDA Device of the pipeline: pinned host memory, stream-ordered device memory, one
// non-blocking stream per slot, timing events, the CUDA kernels. Every call expects the device
// current (the pipeline holds a DeviceScope around its calls).
#include <cuda_runtime.h>

#include "common/check.h"
#include "common/cuda_utils.h"
#include "runtime/pipeline.h"

namespace medtrt::runtime {
namespace {

cudaStream_t as_stream(void* s) { return static_cast<cudaStream_t>(s); }
cudaEvent_t as_event(void* e) { return static_cast<cudaEvent_t>(e); }

// For the noexcept frees: a failure there is not reported (nothing can be done about it), but
// the runtime would keep it as the last error, and the next launch check would report it as the
// kernel's failure. Clear it.
void ignore(cudaError_t err) noexcept {
  if (err != cudaSuccess) cudaGetLastError();
}

class CudaDevice final : public Device {
 public:
  explicit CudaDevice(int ordinal) : ordinal_(ordinal) {
    int count = 0;
    MEDTRT_CUDA_CHECK(cudaGetDeviceCount(&count));
    MEDTRT_CHECK(ordinal >= 0 && ordinal < count, "Pipeline: CUDA device ", ordinal,
                 " does not exist (", count, " visible)");
    cudaDeviceProp prop{};
    MEDTRT_CUDA_CHECK(cudaGetDeviceProperties(&prop, ordinal));
    name_ = std::string("cuda:") + std::to_string(ordinal) + " (" + prop.name + ")";
  }

  std::string name() const override { return name_; }
  bool is_host() const override { return false; }
  int activate() const override {
    int previous = -1;
    MEDTRT_CUDA_CHECK(cudaGetDevice(&previous));
    if (previous != ordinal_) MEDTRT_CUDA_CHECK(cudaSetDevice(ordinal_));
    return previous;
  }
  void restore(int previous) const noexcept override {
    if (previous != ordinal_) cuda_restore_device(previous);
  }

  void* alloc_pinned(std::size_t bytes) override {
    void* p = nullptr;
    MEDTRT_CUDA_CHECK(cudaHostAlloc(&p, bytes, cudaHostAllocDefault));
    return p;
  }
  void free_pinned(void* p) noexcept override { ignore(cudaFreeHost(p)); }

  // Stream-ordered: growing a slot's buffer neither waits for nor disturbs the other slots.
  void* alloc_device(std::size_t bytes, void* stream) override {
    void* p = nullptr;
    MEDTRT_CUDA_CHECK(cudaMallocAsync(&p, bytes, as_stream(stream)));
    return p;
  }
  void free_device(void* p, void* stream) noexcept override {
    ignore(cudaFreeAsync(p, as_stream(stream)));
  }

  void* create_stream() override {
    cudaStream_t s = nullptr;
    MEDTRT_CUDA_CHECK(cudaStreamCreateWithFlags(&s, cudaStreamNonBlocking));
    return s;
  }
  void destroy_stream(void* s) noexcept override {
    if (s) ignore(cudaStreamDestroy(as_stream(s)));
  }
  void* create_event(bool timing, bool blocking) override {
    cudaEvent_t e = nullptr;
    // blocking: a host thread waiting on it sleeps instead of spinning a core.
    const unsigned int flags = (timing ? cudaEventDefault : cudaEventDisableTiming) |
                               (blocking ? cudaEventBlockingSync : 0u);
    MEDTRT_CUDA_CHECK(cudaEventCreateWithFlags(&e, flags));
    return e;
  }
  void destroy_event(void* e) noexcept override {
    if (e) ignore(cudaEventDestroy(as_event(e)));
  }

  void copy_to_device(void* dst, const void* src, std::size_t bytes, void* stream) override {
    MEDTRT_CUDA_CHECK(cudaMemcpyAsync(dst, src, bytes, cudaMemcpyHostToDevice, as_stream(stream)));
  }
  void copy_to_host(void* dst, const void* src, std::size_t bytes, void* stream) override {
    MEDTRT_CUDA_CHECK(cudaMemcpyAsync(dst, src, bytes, cudaMemcpyDeviceToHost, as_stream(stream)));
  }
  void resize_normalize(const ops::ResizeNormalizeParams& params, void* stream) override {
    ops::resize_normalize_cuda_launch(params, as_stream(stream));
  }
  void topk(const ops::TopkParams& params, void* stream) override {
    ops::topk_cuda(params, as_stream(stream));
  }
  void fill(void* p, int value, std::size_t bytes, void* stream) override {
    MEDTRT_CUDA_CHECK(cudaMemsetAsync(p, value, bytes, as_stream(stream)));
  }
  void record(void* event, void* stream) override {
    MEDTRT_CUDA_CHECK(cudaEventRecord(as_event(event), as_stream(stream)));
  }
  void wait_for(void* stream, void* event, void* producer) override {
    MEDTRT_CUDA_CHECK(cudaEventRecord(as_event(event), as_stream(producer)));
    MEDTRT_CUDA_CHECK(cudaStreamWaitEvent(as_stream(stream), as_event(event), 0));
  }
  std::string check_readable(const void* p) const override {
    cudaPointerAttributes attr{};
    const cudaError_t err = cudaPointerGetAttributes(&attr, p);
    if (err != cudaSuccess) {
      cudaGetLastError();  // not sticky; do not leave it for the next call to report
      return std::string("cudaPointerGetAttributes: ") + cudaGetErrorString(err);
    }
    switch (attr.type) {
      case cudaMemoryTypeManaged:
        return {};
      case cudaMemoryTypeDevice:
        if (attr.device == ordinal_) return {};
        return "it is memory of CUDA device " + std::to_string(attr.device);
      case cudaMemoryTypeHost:
        return "it is pinned host memory";
      default:
        return "it is not device memory: host memory, or a freed or foreign pointer";
    }
  }
  void wait_event(void* event) override {
    MEDTRT_CUDA_CHECK(cudaEventSynchronize(as_event(event)));
  }
  void wait_stream(void* stream) override {
    MEDTRT_CUDA_CHECK(cudaStreamSynchronize(as_stream(stream)));
  }
  float elapsed_ms(void* start, void* end) override {
    float ms = 0;
    MEDTRT_CUDA_CHECK(cudaEventElapsedTime(&ms, as_event(start), as_event(end)));
    return ms;
  }

 private:
  int ordinal_;
  std::string name_;
};

}  // namespace

std::unique_ptr<Device> make_cuda_device(int ordinal) {
  return std::make_unique<CudaDevice>(ordinal);
}

}  // namespace medtrt::runtime

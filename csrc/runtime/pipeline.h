// Pipeline: batches in flight through N slots. Each slot owns everything one batch needs on its
// way from host pixels to host top-k: pinned staging for the packed raw pixels and their
// descriptors, the device copies of both, the device network input, the device logits, the
// device top-k, pinned result buffers, a stream and its events.
//
//   acquire()            blocks until a slot is free, marks it taken (try_acquire: -1 if none)
//   stage_in(slot, ...)  packs the images into the slot's pinned staging (host memcpy), then
//                        enqueues H2D -> resize_normalize on the slot's stream and returns the
//                        addresses the compute stage reads and writes
//   stage_in_resident    the same for images already in device memory (decoded there, or a
//                        CUDA tensor): no staging and no pixel upload, the kernel reads them
//                        in place after the producer's stream has reached this point
//   (compute stage)      the caller enqueues the network on the slot's stream: input -> logits
//   stage_out(slot, ..)  enqueues topk (all classes, sorted) -> D2H of the results and returns
//   wait(slot)           blocks on the slot's done event, copies the results out, frees the slot
//
// A slot is refilled only after wait() has seen its previous batch finish, so its staging is never
// overwritten while a copy from it may still be running. Buffers grow when a larger batch arrives
// and never shrink. Nothing here synchronizes the device; waiting is per slot, on an event.
//
// Where the work runs is a Device: CUDA (streams, pinned memory, the CUDA kernels) or the host
// (plain memory, the CPU twins, work done at enqueue time). The host Device runs the same slot
// logic, packing and descriptor code on every CI machine.
#pragma once

#include <condition_variable>
#include <cstdint>
#include <memory>
#include <mutex>
#include <string>
#include <vector>

#include "ops/resize_normalize.h"
#include "ops/topk.h"

namespace medtrt::runtime {

// What the pipeline needs from the place it runs on. Handles are opaque pointers.
class Device {
 public:
  virtual ~Device() = default;
  virtual std::string name() const = 0;
  virtual bool is_host() const = 0;     // true: device memory is host memory, work is synchronous
  // Makes this device current for the calling thread; returns the device that was current
  // (-1 where there is nothing to restore). Use DeviceScope, which restores it.
  virtual int activate() const = 0;
  virtual void restore(int previous) const noexcept = 0;
  virtual void* alloc_pinned(std::size_t bytes) = 0;
  virtual void free_pinned(void* p) noexcept = 0;
  virtual void* alloc_device(std::size_t bytes, void* stream) = 0;  // stream-ordered on CUDA
  virtual void free_device(void* p, void* stream) noexcept = 0;
  virtual void* create_stream() = 0;
  virtual void destroy_stream(void* s) noexcept = 0;
  // timing: elapsed_ms may measure from/to it; blocking: wait_event sleeps rather than spins.
  virtual void* create_event(bool timing, bool blocking) = 0;
  virtual void destroy_event(void* e) noexcept = 0;
  virtual void copy_to_device(void* dst, const void* src, std::size_t bytes, void* stream) = 0;
  virtual void copy_to_host(void* dst, const void* src, std::size_t bytes, void* stream) = 0;
  // params.images is a device address; launches asynchronously on `stream`.
  virtual void resize_normalize(const ops::ResizeNormalizeParams& params, void* stream) = 0;
  virtual void topk(const ops::TopkParams& params, void* stream) = 0;
  // Sets `bytes` bytes at device address `p` to `value`, in stream order.
  virtual void fill(void* p, int value, std::size_t bytes, void* stream) = 0;
  virtual void record(void* event, void* stream) = 0;
  // Work enqueued on `stream` from now on waits until `producer` has finished what it has
  // enqueued so far (`event` is recorded on the producer for that). No host blocking.
  virtual void wait_for(void* stream, void* event, void* producer) = 0;
  // Whether the device's kernels can read `p`: device or managed memory of this GPU; anything on
  // the host. Empty when they can, else why not.
  virtual std::string check_readable(const void* p) const = 0;
  virtual void wait_event(void* event) = 0;      // blocks the calling host thread
  virtual void wait_stream(void* stream) = 0;    // blocks the calling host thread
  virtual float elapsed_ms(void* start, void* end) = 0;
};

// The device current for the calling thread while the scope lives; the one current before is
// restored after (CUDA's current device is per thread, and callers such as torch rely on theirs).
class DeviceScope {
 public:
  explicit DeviceScope(const Device& device) : device_(device), previous_(device.activate()) {}
  ~DeviceScope() { device_.restore(previous_); }
  DeviceScope(const DeviceScope&) = delete;
  DeviceScope& operator=(const DeviceScope&) = delete;

 private:
  const Device& device_;
  int previous_;
};

std::unique_ptr<Device> make_host_device();

// Bytes per stored pixel of a pixel type (uint8 1, uint16/int16 2, float32 4); 0 for others.
std::size_t pixel_bytes(const std::string& dtype);

// The CUDA device `ordinal` (pipeline_cuda.cu). A build without CUDA has a stub instead
// (common/cuda_stub.cpp) that throws std::runtime_error saying so.
std::unique_ptr<Device> make_cuda_device(int ordinal);

// One image: contiguous H x W[ x C] pixels. For stage_in `data` is host memory and must stay
// valid during the call; for stage_in_resident it is device memory and must stay allocated until
// wait() for the slot returns.
struct ImageRef {
  const void* data;
  std::size_t bytes;
  ops::ImageShape shape;
};

struct PipelineConfig {
  std::int32_t slots = 2;
  std::int32_t classes = 0;
  ops::ResizeNormalizeOptions preprocess;  // network input size, channels, mean/std, dtype
  std::string logits_dtype = "float32";    // what the compute stage writes: float32 or float16
  std::string activation = "softmax";      // softmax | sigmoid | none
};

// Addresses the compute stage works with, for one slot and one batch.
struct SlotView {
  std::int32_t slot = 0;
  std::int32_t batch = 0;
  std::uintptr_t stream = 0;  // cudaStream_t (0 on the host device)
  std::uintptr_t input = 0;   // [batch, C, H, W] of preprocess.dtype
  std::uintptr_t logits = 0;  // [batch, classes] of logits_dtype
};

// Milliseconds per stage of one batch. staging: host memcpy into pinned memory (host clock);
// the others from events on the slot's stream (device clock on CUDA, host clock on the host).
struct StageTimes {
  float staging = 0, h2d = 0, preprocess = 0, compute = 0, postprocess = 0, d2h = 0, total = 0;
};

struct Collected {
  std::int32_t batch = 0;
  std::int32_t classes = 0;
  std::vector<float> scores;            // [batch, classes], sorted per row
  std::vector<std::int32_t> indices;    // [batch, classes]
  std::vector<float> logits;            // [batch, classes] as float32, when asked for
  StageTimes times;
};

// Bytes held, for checking that memory stays flat.
struct MemoryUse {
  std::size_t pinned = 0;
  std::size_t device = 0;
  std::int64_t grows = 0;
};

class Pipeline {
 public:
  Pipeline(PipelineConfig config, std::unique_ptr<Device> device);
  ~Pipeline();
  Pipeline(const Pipeline&) = delete;
  Pipeline& operator=(const Pipeline&) = delete;

  std::int32_t acquire();
  std::int32_t try_acquire();  // -1 when every slot is taken or in flight
  SlotView stage_in(std::int32_t slot, const std::vector<ImageRef>& images);
  // Images in the device's memory, read in place. The slot's work first waits for `producer`'s
  // work so far, i.e. for whatever wrote the images (the slot streams are non-blocking, so
  // nothing else orders the read after the writes; 0 is the legacy default stream).
  SlotView stage_in_resident(std::int32_t slot, const std::vector<ImageRef>& images,
                             void* producer);
  void stage_out(std::int32_t slot, bool want_logits);
  Collected wait(std::int32_t slot);
  // Gives a taken slot back without results (after an error between acquire and wait); waits for
  // whatever was already enqueued on it.
  void release(std::int32_t slot) noexcept;
  // Grows every slot to hold `batch` images of `raw_bytes` packed pixels, so later batches up to
  // that size allocate nothing.
  void reserve(std::int32_t batch, std::size_t raw_bytes);

  // Throws (naming `what` and the fix) unless `slot` is acquired and not yet submitted.
  void check_taken(std::int32_t slot, const char* what) const;
  // The host memory behind a view's input or logits, shared: a NumPy view made from it keeps it
  // alive when the slot later moves to a larger buffer. Throws unless `view` is the batch now
  // staged in its slot of this pipeline, or the pipeline is not on the host device.
  std::shared_ptr<void> host_buffer(const SlotView& view, bool input, const char* what) const;

  const PipelineConfig& config() const { return config_; }
  const Device& device() const { return *device_; }
  MemoryUse memory() const;
  std::size_t input_bytes_per_image() const;
  // MEDTRT_EXACT_ALLOC=1 when the pipeline was made: buffers of exactly the batch's size,
  // reallocated for every batch (a debug mode for memory checkers; slow).
  bool exact_alloc() const { return exact_alloc_; }

 private:
  struct Buffer {
    void* ptr = nullptr;
    std::size_t bytes = 0;
    std::shared_ptr<void> shared;  // host device only: owns ptr, shared with NumPy views
  };
  enum class State { kFree, kTaken, kInFlight };
  struct Slot {
    void* stream = nullptr;
    void* ev_start = nullptr;
    void* ev_h2d = nullptr;
    void* ev_pre = nullptr;
    void* ev_compute = nullptr;
    void* ev_post = nullptr;
    void* ev_done = nullptr;
    void* ev_ready = nullptr;  // recorded on a resident batch's producer stream
    Buffer staging, descs_host, scores_host, indices_host, logits_host;      // pinned
    Buffer raw, descs, input, logits, scores, indices;                       // device
    State state = State::kFree;
    std::int32_t batch = 0;
    bool want_logits = false;
    float staging_ms = 0;
  };

  // stage_in / stage_in_resident: check the slot, plan the batch, make room, pack, enqueue.
  SlotView stage(std::int32_t slot, const std::vector<ImageRef>& images, bool resident,
                 void* producer);
  struct Plan;  // one batch's descriptors, launches and staging layout (pipeline.cpp)
  // Validates every image (errors prefixed with `op` name its batch position) and lays the
  // batch out: one resize_normalize launch per pixel type, each image's place in staging.
  Plan plan(const std::vector<ImageRef>& images, bool resident, const std::string& op) const;
  void check_readable(const std::vector<ImageRef>& images, const std::string& op) const;
  void pack(Slot& s, const std::vector<ImageRef>& images, const Plan& plan, bool resident);
  void enqueue(Slot& s, const Plan& plan, bool resident, void* producer);
  void check_slot(std::int32_t slot, State expected, const char* what) const;
  static constexpr std::size_t kKeep = static_cast<std::size_t>(-1);
  std::size_t regrow_size(const Buffer& b, std::size_t bytes) const;  // kKeep: big enough
  void grow_pinned(Buffer& b, std::size_t bytes);
  void grow_device(Buffer& b, std::size_t bytes, void* stream);
  void hold(Buffer& b, void* p, std::size_t size);  // takes ownership of a new allocation
  void free_pinned(Buffer& b) noexcept;
  void free_device(Buffer& b, void* stream) noexcept;
  void ensure(Slot& s, std::int32_t batch, std::size_t raw_bytes);
  void destroy(Slot& s) noexcept;

  PipelineConfig config_;
  std::unique_ptr<Device> device_;
  std::vector<Slot> slots_;
  std::size_t logit_bytes_ = 4;
  bool exact_alloc_ = false;
  mutable std::mutex mutex_;
  std::condition_variable freed_;
  std::int32_t next_ = 0;  // round-robin start for acquire()
  std::int64_t grows_ = 0;
};

}  // namespace medtrt::runtime

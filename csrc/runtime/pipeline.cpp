// Pipeline slot logic (device independent) and the host Device.
#include "runtime/pipeline.h"

#include <algorithm>
#include <chrono>
#include <cstdlib>
#include <cstring>
#include <map>
#include <new>
#include <numeric>
#include <optional>

#include "common/check.h"
#include "common/half.h"

namespace medtrt::runtime {
namespace {

constexpr std::int32_t kMaxSlots = 16;
constexpr std::size_t kImageAlign = 16;  // every packed image starts 16-byte aligned

std::size_t align_up(std::size_t n, std::size_t a) { return (n + a - 1) / a * a; }

// Room for `need` bytes with headroom, so batches that vary in size do not regrow every time.
std::size_t grown_size(std::size_t have, std::size_t need) {
  return std::max(need, have + have / 2);
}

// a * b, or an error instead of a wrapped size (a batch size from Python can be absurd).
std::size_t checked_mul(std::size_t a, std::size_t b) {
  std::size_t r = 0;
  MEDTRT_CHECK(!__builtin_mul_overflow(a, b, &r), "Pipeline: a buffer of ", a, " x ", b,
               " bytes does not fit in memory addresses; use a smaller batch");
  return r;
}

// The host device's allocator: 64-byte aligned, freed with std::free (also by the shared owners
// of host views, which may outlive the pipeline, so the deleter must not need a Device).
void* host_alloc(std::size_t bytes) {
  void* p = std::aligned_alloc(64, align_up(std::max<std::size_t>(bytes, 1), 64));
  if (p == nullptr) throw std::bad_alloc();
  return p;
}
void host_free(void* p) noexcept { std::free(p); }

using Clock = std::chrono::steady_clock;

float ms_between(Clock::time_point a, Clock::time_point b) {
  return std::chrono::duration<float, std::milli>(b - a).count();
}

// ---- host device --------------------------------------------------------------------------------

class HostDevice final : public Device {
 public:
  std::string name() const override { return "cpu"; }
  bool is_host() const override { return true; }
  int activate() const override { return -1; }
  void restore(int) const noexcept override {}
  void* alloc_pinned(std::size_t bytes) override { return host_alloc(bytes); }
  void free_pinned(void* p) noexcept override { host_free(p); }
  void* alloc_device(std::size_t bytes, void*) override { return host_alloc(bytes); }
  void free_device(void* p, void*) noexcept override { host_free(p); }
  void* create_stream() override { return nullptr; }
  void destroy_stream(void*) noexcept override {}
  void* create_event(bool, bool) override { return new Clock::time_point(); }
  void destroy_event(void* e) noexcept override { delete static_cast<Clock::time_point*>(e); }
  void copy_to_device(void* dst, const void* src, std::size_t bytes, void*) override {
    if (dst != src) std::memcpy(dst, src, bytes);
  }
  void copy_to_host(void* dst, const void* src, std::size_t bytes, void*) override {
    if (dst != src) std::memcpy(dst, src, bytes);
  }
  void resize_normalize(const ops::ResizeNormalizeParams& params, void*) override {
    ops::resize_normalize_cpu(params);
  }
  void topk(const ops::TopkParams& params, void*) override { ops::topk_cpu(params); }
  void fill(void* p, int value, std::size_t bytes, void*) override { std::memset(p, value, bytes); }
  void record(void* event, void*) override {
    *static_cast<Clock::time_point*>(event) = Clock::now();
  }
  void wait_for(void*, void*, void*) override {}  // host work is done when it is enqueued
  std::string check_readable(const void*) const override { return {}; }
  void wait_event(void*) override {}
  void wait_stream(void*) override {}
  float elapsed_ms(void* start, void* end) override {
    return ms_between(*static_cast<Clock::time_point*>(start),
                      *static_cast<Clock::time_point*>(end));
  }
};

}  // namespace

std::unique_ptr<Device> make_host_device() { return std::make_unique<HostDevice>(); }

std::size_t pixel_bytes(const std::string& dtype) {
  if (dtype == "uint8") return 1;
  if (dtype == "uint16" || dtype == "int16") return 2;
  if (dtype == "float32") return 4;
  return 0;  // the validator names the accepted dtypes
}

// ---- pipeline -----------------------------------------------------------------------------------

Pipeline::Pipeline(PipelineConfig config, std::unique_ptr<Device> device)
    : config_(std::move(config)), device_(std::move(device)) {
  const char* op = "Pipeline: ";
  MEDTRT_CHECK(device_ != nullptr, op, "no device");
  MEDTRT_CHECK(config_.slots >= 1 && config_.slots <= kMaxSlots, op, "slots must be in [1, ",
               kMaxSlots, "]; got ", config_.slots);
  MEDTRT_CHECK(config_.classes >= 1, op, "classes must be >= 1; got ", config_.classes);
  // The op validators check the rest, with their own messages.
  ops::validate_topk({1, config_.classes}, config_.logits_dtype, config_.classes,
                     config_.activation);
  ops::validate_resize_normalize_options(config_.preprocess, "uint8", 1);
  logit_bytes_ = config_.logits_dtype == "float32" ? 4 : 2;
  const char* exact = std::getenv("MEDTRT_EXACT_ALLOC");
  exact_alloc_ = exact != nullptr && std::string(exact) == "1";

  const DeviceScope scope(*device_);
  slots_.resize(static_cast<std::size_t>(config_.slots));
  try {
    for (Slot& s : slots_) {
      s.stream = device_->create_stream();
      for (void** e : {&s.ev_start, &s.ev_h2d, &s.ev_pre, &s.ev_compute, &s.ev_post})
        *e = device_->create_event(true, false);
      s.ev_done = device_->create_event(true, true);  // wait() blocks on it: no busy-wait
      s.ev_ready = device_->create_event(false, false);  // orders work only
    }
  } catch (...) {
    for (Slot& s : slots_) destroy(s);
    throw;
  }
}

Pipeline::~Pipeline() {
  std::optional<DeviceScope> scope;
  try {
    scope.emplace(*device_);
  } catch (...) {  // a destructor must not throw; the frees below are best effort
  }
  for (Slot& s : slots_) {
    try {
      device_->wait_stream(s.stream);
    } catch (...) {  // a failed device cannot be waited on; free what can be freed
    }
    destroy(s);
  }
}

void Pipeline::destroy(Slot& s) noexcept {
  for (Buffer* b : {&s.raw, &s.descs, &s.input, &s.logits, &s.scores, &s.indices})
    free_device(*b, s.stream);
  for (Buffer* b : {&s.staging, &s.descs_host, &s.scores_host, &s.indices_host, &s.logits_host})
    free_pinned(*b);
  for (void** e : {&s.ev_start, &s.ev_h2d, &s.ev_pre, &s.ev_compute, &s.ev_post, &s.ev_done,
                        &s.ev_ready})
    if (*e) device_->destroy_event(*e), *e = nullptr;
  if (s.stream) device_->destroy_stream(s.stream), s.stream = nullptr;
}

void Pipeline::check_slot(std::int32_t slot, State expected, const char* what) const {
  MEDTRT_CHECK(slot >= 0 && slot < config_.slots, "Pipeline.", what, ": slot ", slot,
               " does not exist (slots: ", config_.slots, ")");
  std::lock_guard<std::mutex> lock(mutex_);
  const State st = slots_[static_cast<std::size_t>(slot)].state;
  if (st == expected) return;
  const char* now = st == State::kFree ? "free (acquire() it first)"
                    : st == State::kTaken ? "taken but not submitted (stage_out() first)"
                                          : "in flight (wait() for it first)";
  MEDTRT_CHECK(false, "Pipeline.", what, ": slot ", slot, " is ", now);
}

void Pipeline::check_taken(std::int32_t slot, const char* what) const {
  check_slot(slot, State::kTaken, what);
}

std::shared_ptr<void> Pipeline::host_buffer(const SlotView& v, bool input,
                                            const char* what) const {
  MEDTRT_CHECK(device_->is_host(), "Pipeline.", what, ": host views exist only on the cpu device; "
               "this pipeline runs on ", device_->name());
  MEDTRT_CHECK(v.slot >= 0 && v.slot < config_.slots, "Pipeline.", what, ": slot ", v.slot,
               " does not exist (slots: ", config_.slots, ")");
  std::lock_guard<std::mutex> lock(mutex_);
  const Slot& s = slots_[static_cast<std::size_t>(v.slot)];
  MEDTRT_CHECK(s.state == State::kTaken && s.batch > 0 && s.batch == v.batch &&
                   v.input == reinterpret_cast<std::uintptr_t>(s.input.ptr) &&
                   v.logits == reinterpret_cast<std::uintptr_t>(s.logits.ptr),
               "Pipeline.", what, ": the view is not the batch now staged in slot ", v.slot,
               " of this pipeline (a view of another pipeline, or of a batch already submitted "
               "or collected); use the view the compute stage is called with");
  return input ? s.input.shared : s.logits.shared;
}

std::int32_t Pipeline::acquire() {
  std::unique_lock<std::mutex> lock(mutex_);
  std::int32_t found = -1;
  freed_.wait(lock, [&] {
    for (std::int32_t i = 0; i < config_.slots; ++i) {
      const std::int32_t j = (next_ + i) % config_.slots;
      if (slots_[static_cast<std::size_t>(j)].state == State::kFree) {
        found = j;
        return true;
      }
    }
    return false;
  });
  slots_[static_cast<std::size_t>(found)].state = State::kTaken;
  next_ = (found + 1) % config_.slots;
  return found;
}

std::int32_t Pipeline::try_acquire() {
  std::lock_guard<std::mutex> lock(mutex_);
  for (std::int32_t i = 0; i < config_.slots; ++i) {
    const std::int32_t j = (next_ + i) % config_.slots;
    Slot& s = slots_[static_cast<std::size_t>(j)];
    if (s.state == State::kFree) {
      s.state = State::kTaken;
      next_ = (j + 1) % config_.slots;
      return j;
    }
  }
  return -1;
}

// Normally a buffer grows (with headroom) only when it is too small. With exact allocation
// (MEDTRT_EXACT_ALLOC=1, for sanitizer runs) every call replaces it with one of exactly the size
// asked for, so any read or write past what a batch needs lands outside the allocation.
std::size_t Pipeline::regrow_size(const Buffer& b, std::size_t bytes) const {
  if (exact_alloc_) return bytes;
  return b.bytes >= bytes ? kKeep : grown_size(b.bytes, bytes);
}

void Pipeline::grow_pinned(Buffer& b, std::size_t bytes) {
  const std::size_t size = regrow_size(b, bytes);
  if (size == kKeep) return;
  void* p = size ? device_->alloc_pinned(size) : nullptr;
  free_pinned(b);
  hold(b, p, size);
}

void Pipeline::grow_device(Buffer& b, std::size_t bytes, void* stream) {
  const std::size_t size = regrow_size(b, bytes);
  if (size == kKeep) return;
  void* p = size ? device_->alloc_device(size, stream) : nullptr;
  free_device(b, stream);
  hold(b, p, size);
}

// On the host device a buffer is owned through a shared_ptr: a NumPy view of it (host_input,
// host_logits) shares it, so a view kept past its batch still points at live memory.
void Pipeline::hold(Buffer& b, void* p, std::size_t size) {
  b = Buffer{p, size, {}};
  if (device_->is_host() && p != nullptr) b.shared = std::shared_ptr<void>(p, host_free);
  ++grows_;
}

void Pipeline::free_pinned(Buffer& b) noexcept {
  if (!b.shared && b.ptr) device_->free_pinned(b.ptr);
  b = Buffer{};  // a shared one is freed with its last owner
}

void Pipeline::free_device(Buffer& b, void* stream) noexcept {
  if (!b.shared && b.ptr) device_->free_device(b.ptr, stream);
  b = Buffer{};
}

std::size_t Pipeline::input_bytes_per_image() const {
  const auto& o = config_.preprocess;
  return checked_mul(checked_mul(static_cast<std::size_t>(o.channels),
                                 checked_mul(static_cast<std::size_t>(o.out_h),
                                             static_cast<std::size_t>(o.out_w))),
                     o.dtype == "float32" ? 4 : 2);
}

void Pipeline::ensure(Slot& s, std::int32_t batch, std::size_t raw_bytes) {
  const auto n = static_cast<std::size_t>(batch);
  const std::size_t nc = checked_mul(n, static_cast<std::size_t>(config_.classes));
  const std::size_t descs = checked_mul(n, sizeof(ops::ImageDesc));
  const std::size_t input = checked_mul(n, input_bytes_per_image());
  const std::size_t scores = checked_mul(nc, sizeof(float));
  const std::size_t logits = checked_mul(nc, logit_bytes_);
  std::lock_guard<std::mutex> lock(mutex_);  // memory() may read the sizes from another thread
  grow_pinned(s.staging, raw_bytes);
  grow_pinned(s.descs_host, descs);
  grow_pinned(s.scores_host, scores);
  grow_pinned(s.indices_host, checked_mul(nc, sizeof(std::int32_t)));
  grow_pinned(s.logits_host, logits);
  if (!device_->is_host()) {  // on the host the staging buffers are read in place
    grow_device(s.raw, raw_bytes, s.stream);
    grow_device(s.descs, descs, s.stream);
  }
  grow_device(s.input, input, s.stream);
  grow_device(s.logits, logits, s.stream);
  grow_device(s.scores, scores, s.stream);
  grow_device(s.indices, checked_mul(nc, sizeof(std::int32_t)), s.stream);
}

void Pipeline::reserve(std::int32_t batch, std::size_t raw_bytes) {
  MEDTRT_CHECK(batch >= 1, "Pipeline.reserve: batch must be >= 1; got ", batch);
  const DeviceScope scope(*device_);
  std::vector<std::int32_t> taken;
  try {
    for (std::int32_t i = 0; i < config_.slots; ++i) taken.push_back(acquire());
    for (std::int32_t i : taken) ensure(slots_[static_cast<std::size_t>(i)], batch, raw_bytes);
  } catch (...) {
    for (std::int32_t i : taken) release(i);
    throw;
  }
  for (std::int32_t i : taken) release(i);
}

SlotView Pipeline::stage_in(std::int32_t slot, const std::vector<ImageRef>& images) {
  return stage(slot, images, false, nullptr);
}

SlotView Pipeline::stage_in_resident(std::int32_t slot, const std::vector<ImageRef>& images,
                                     void* producer) {
  return stage(slot, images, true, producer);
}

struct Pipeline::Plan {
  struct Launch {
    ops::ResizeNormalizeParams params;  // images/out set at enqueue
    std::size_t first_desc;             // its first descriptor in `descs`
  };
  std::vector<Launch> launches;       // one per pixel type
  std::vector<ops::ImageDesc> descs;  // in launch order; out_row: the image's batch position
  std::vector<std::size_t> offsets;   // per image (batch order): its pixels' offset in staging
  std::size_t raw_bytes = 0;          // staging bytes (0 for a resident batch)
};

SlotView Pipeline::stage(std::int32_t slot, const std::vector<ImageRef>& images, bool resident,
                         void* producer) {
  const char* what = resident ? "stage_in_resident" : "stage_in";
  check_slot(slot, State::kTaken, what);
  Slot& s = slots_[static_cast<std::size_t>(slot)];
  const std::string op = detail::concat("Pipeline.", what, ": ");
  // A second stage_in would overwrite staging an upload may still be reading.
  MEDTRT_CHECK(s.batch == 0, op, "slot ", slot, " already holds a staged batch (stage_out() and "
               "wait() for it, or release() it, first)");
  MEDTRT_CHECK(!images.empty(), op, "expected at least one image; got an empty batch");
  const auto batch = static_cast<std::int32_t>(images.size());
  const Plan layout = plan(images, resident, op);

  const DeviceScope scope(*device_);
  if (resident) check_readable(images, op);
  ensure(s, batch, layout.raw_bytes);
  pack(s, images, layout, resident);
  enqueue(s, layout, resident, producer);
  s.batch = batch;

  SlotView v;
  v.slot = slot;
  v.batch = batch;
  v.stream = reinterpret_cast<std::uintptr_t>(s.stream);
  v.input = reinterpret_cast<std::uintptr_t>(s.input.ptr);
  v.logits = reinterpret_cast<std::uintptr_t>(s.logits.ptr);
  return v;
}

Pipeline::Plan Pipeline::plan(const std::vector<ImageRef>& images, bool resident,
                              const std::string& op) const {
  // Each image validated on its own (the batch may mix pixel types), told its batch position.
  std::vector<ops::ImageDesc> image_descs(images.size());
  std::map<std::string, std::vector<std::size_t>> groups;  // pixel type -> batch positions
  for (std::size_t i = 0; i < images.size(); ++i) {
    image_descs[i] = ops::validate_resize_normalize_image(
        images[i].shape, static_cast<std::int64_t>(i), /*batch_dtype=*/"", op);
    groups[images[i].shape.dtype].push_back(i);
  }
  // One launch per pixel type; out_row puts every image in its batch position.
  Plan p;
  p.descs.reserve(images.size());
  p.offsets.assign(images.size(), 0);
  for (const auto& [dtype, members] : groups) {
    p.launches.push_back({ops::validate_resize_normalize_options(
                              config_.preprocess, dtype, static_cast<std::int32_t>(members.size())),
                          p.descs.size()});
    const std::size_t px = pixel_bytes(dtype);
    for (const std::size_t i : members) {
      const ImageRef& im = images[i];
      std::size_t expect = px;
      for (std::int64_t d : im.shape.shape) expect *= static_cast<std::size_t>(d);
      MEDTRT_CHECK(im.bytes == expect && im.data != nullptr, op, "image ", i, " has ", im.bytes,
                   " bytes; its shape and dtype need ", expect);
      // Read in place: the kernel needs each pixel aligned to its size.
      MEDTRT_CHECK(!resident || reinterpret_cast<std::uintptr_t>(im.data) % px == 0, op, "image ",
                   i, " (", dtype, ") does not start on a ", px,
                   "-byte boundary; pass a contiguous copy");
      p.descs.push_back(image_descs[i]);
      p.offsets[i] = p.raw_bytes;
      if (!resident) p.raw_bytes += align_up(im.bytes, kImageAlign);
    }
  }
  return p;
}

void Pipeline::check_readable(const std::vector<ImageRef>& images, const std::string& op) const {
  for (std::size_t i = 0; i < images.size(); ++i) {
    const std::string why = device_->check_readable(images[i].data);
    MEDTRT_CHECK(why.empty(), op, "image ", i, " is not in ", device_->name(), " memory (", why,
                 "); pass host images to stage_in, or move it to this device first");
  }
}

// The pixels into pinned staging (host time, not on the stream; nothing for a resident batch),
// then the descriptors, each pointing at its pixels where the kernel reads them.
void Pipeline::pack(Slot& s, const std::vector<ImageRef>& images, const Plan& plan,
                    bool resident) {
  const auto t0 = Clock::now();
  if (!resident) {
    auto* staging = static_cast<unsigned char*>(s.staging.ptr);
    for (std::size_t i = 0; i < images.size(); ++i)
      std::memcpy(staging + plan.offsets[i], images[i].data, images[i].bytes);
  }
  s.staging_ms = resident ? 0.f : ms_between(t0, Clock::now());

  const bool host = device_->is_host();
  const auto raw_base = reinterpret_cast<std::uintptr_t>(host ? s.staging.ptr : s.raw.ptr);
  auto* descs_host = static_cast<ops::ImageDesc*>(s.descs_host.ptr);
  for (std::size_t j = 0; j < plan.descs.size(); ++j) {
    ops::ImageDesc d = plan.descs[j];
    const auto i = static_cast<std::size_t>(d.out_row);
    d.src = resident ? reinterpret_cast<std::uintptr_t>(images[i].data)
                     : raw_base + plan.offsets[i];
    descs_host[j] = d;
  }
}

// The batch's device work on the slot's stream, between its timing events: the uploads, one
// resize_normalize per pixel type, the logits set to NaN.
void Pipeline::enqueue(Slot& s, const Plan& plan, bool resident, void* producer) {
  const bool host = device_->is_host();
  const std::size_t batch = plan.descs.size();
  // The producer's work so far (what wrote the images) before anything of this batch.
  if (resident) device_->wait_for(s.stream, s.ev_ready, producer);
  device_->record(s.ev_start, s.stream);
  if (!host) {
    if (plan.raw_bytes)
      device_->copy_to_device(s.raw.ptr, s.staging.ptr, plan.raw_bytes, s.stream);
    device_->copy_to_device(s.descs.ptr, s.descs_host.ptr, batch * sizeof(ops::ImageDesc),
                            s.stream);
  }
  device_->record(s.ev_h2d, s.stream);
  auto* descs = static_cast<ops::ImageDesc*>(host ? s.descs_host.ptr : s.descs.ptr);
  for (const Plan::Launch& l : plan.launches) {
    ops::ResizeNormalizeParams p = l.params;
    p.images = descs + l.first_desc;
    p.out = s.input.ptr;
    device_->resize_normalize(p, s.stream);
  }
  // Logits start as NaN (0xFF bytes, in float32 and float16): a compute stage that writes
  // nothing gives NaN scores, never values read from uninitialised memory.
  device_->fill(s.logits.ptr, 0xFF, batch * static_cast<std::size_t>(config_.classes) *
                                        logit_bytes_, s.stream);
  device_->record(s.ev_pre, s.stream);
}

void Pipeline::stage_out(std::int32_t slot, bool want_logits) {
  check_slot(slot, State::kTaken, "stage_out");
  Slot& s = slots_[static_cast<std::size_t>(slot)];
  MEDTRT_CHECK(s.batch >= 1, "Pipeline.stage_out: slot ", slot, " has no batch (stage_in() first)");
  const DeviceScope scope(*device_);
  device_->record(s.ev_compute, s.stream);
  ops::TopkParams p = ops::validate_topk({s.batch, config_.classes}, config_.logits_dtype,
                                         config_.classes, config_.activation);
  p.logits = s.logits.ptr;
  p.scores = static_cast<float*>(s.scores.ptr);
  p.indices = static_cast<std::int32_t*>(s.indices.ptr);
  device_->topk(p, s.stream);
  device_->record(s.ev_post, s.stream);
  const auto n = static_cast<std::size_t>(s.batch) * static_cast<std::size_t>(config_.classes);
  device_->copy_to_host(s.scores_host.ptr, s.scores.ptr, n * sizeof(float), s.stream);
  device_->copy_to_host(s.indices_host.ptr, s.indices.ptr, n * sizeof(std::int32_t), s.stream);
  if (want_logits)
    device_->copy_to_host(s.logits_host.ptr, s.logits.ptr, n * logit_bytes_, s.stream);
  device_->record(s.ev_done, s.stream);
  s.want_logits = want_logits;
  std::lock_guard<std::mutex> lock(mutex_);
  s.state = State::kInFlight;
}

Collected Pipeline::wait(std::int32_t slot) {
  check_slot(slot, State::kInFlight, "wait");
  Slot& s = slots_[static_cast<std::size_t>(slot)];
  Collected r;
  try {
    const DeviceScope scope(*device_);
    device_->wait_event(s.ev_done);
    r.batch = s.batch;
    r.classes = config_.classes;
    const auto n = static_cast<std::size_t>(s.batch) * static_cast<std::size_t>(config_.classes);
    const auto* scores = static_cast<const float*>(s.scores_host.ptr);
    const auto* indices = static_cast<const std::int32_t*>(s.indices_host.ptr);
    r.scores.assign(scores, scores + n);
    r.indices.assign(indices, indices + n);
    if (s.want_logits) {
      r.logits.resize(n);
      if (logit_bytes_ == 4) {
        std::memcpy(r.logits.data(), s.logits_host.ptr, n * sizeof(float));
      } else {
        const auto* h = static_cast<const std::uint16_t*>(s.logits_host.ptr);
        for (std::size_t i = 0; i < n; ++i) r.logits[i] = half_bits_to_float(h[i]);
      }
    }
    StageTimes& t = r.times;
    t.staging = s.staging_ms;
    t.h2d = device_->elapsed_ms(s.ev_start, s.ev_h2d);
    t.preprocess = device_->elapsed_ms(s.ev_h2d, s.ev_pre);
    t.compute = device_->elapsed_ms(s.ev_pre, s.ev_compute);
    t.postprocess = device_->elapsed_ms(s.ev_compute, s.ev_post);
    t.d2h = device_->elapsed_ms(s.ev_post, s.ev_done);
    t.total = device_->elapsed_ms(s.ev_start, s.ev_done);
  } catch (...) {
    release(slot);
    throw;
  }
  {
    std::lock_guard<std::mutex> lock(mutex_);
    s.state = State::kFree;
    s.batch = 0;
  }
  freed_.notify_one();
  return r;
}

void Pipeline::release(std::int32_t slot) noexcept {
  if (slot < 0 || slot >= config_.slots) return;
  Slot& s = slots_[static_cast<std::size_t>(slot)];
  try {
    const DeviceScope scope(*device_);
    device_->wait_stream(s.stream);
  } catch (...) {
  }
  {
    std::lock_guard<std::mutex> lock(mutex_);
    s.state = State::kFree;
    s.batch = 0;
  }
  freed_.notify_one();
}

MemoryUse Pipeline::memory() const {
  std::lock_guard<std::mutex> lock(mutex_);
  MemoryUse m;
  for (const Slot& s : slots_) {
    for (const Buffer* b :
         {&s.staging, &s.descs_host, &s.scores_host, &s.indices_host, &s.logits_host})
      m.pinned += b->bytes;
    for (const Buffer* b : {&s.raw, &s.descs, &s.input, &s.logits, &s.scores, &s.indices})
      m.device += b->bytes;
  }
  m.grows = grows_;
  return m;
}

}  // namespace medtrt::runtime

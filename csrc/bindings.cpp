// The only pybind11 module. Converts Python arguments to op params (arrays through
// array_interface.h), lets the shared validators check them (so CPU and CUDA report identical
// errors), and releases the GIL around the work. Device entry points take raw addresses and a
// stream handle (ints), so the extension never links against torch; the Python wrappers own the
// tensors. The same code serves both builds: without CUDA, common/cuda_stub.cpp defines the CUDA
// entry points (no device; work refused with "medtrt was built without CUDA").
#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <algorithm>
#include <cstdint>
#include <memory>
#include <numeric>
#include <optional>
#include <string>
#include <tuple>
#include <utility>
#include <vector>

#include "array_interface.h"
#include "common/check.h"
#include "common/cuda_utils.h"
#include "ops/entropy.h"
#include "ops/resize_normalize.h"
#include "ops/topk.h"
#include "runtime/pipeline.h"

namespace medtrt::bindings {
namespace {

// ---- errors and build ----------------------------------------------------------------------

void def_errors() {
  py::register_exception_translator([](std::exception_ptr e) {
    try {
      if (e) std::rethrow_exception(e);
    } catch (const CudaError& err) {
      py::object cls = py::module_::import("medtrt.errors").attr("CudaError");
      PyErr_SetString(cls.ptr(), err.what());
    }
  });
}

// The CUDA runtime queries Python needs (device count, why none, current device) are
// hand-written here rather than taken from cuda-python (cuda.bindings): the CUDA runtime is
// already linked into this extension, statically, for the kernels, so they cost no dependency
// and no import time; they need no driver to import (without one they answer "no device" and
// say why); the CPU-only build answers through the same functions (common/cuda_stub.cpp); and
// they act on the very runtime that launches our kernels. cuda-python (an optional, lazily
// imported extra) becomes worth it if Python needs much more of the runtime API than this.
void def_cuda_queries(py::module_& m) {
  m.def("cuda_compiled", &cuda_compiled,
        "True when the CUDA kernels were compiled into this extension.");
  m.def("cuda_device_count", &cuda_device_count,
        "Visible CUDA devices; 0 without a driver, a device, or CUDA support in this build.");
  m.def("cuda_device_status", &cuda_device_status,
        "Why cuda_device_count() is 0, or '' when a device is visible.");
  m.def("cuda_driver_version", &cuda_driver_version);
  m.def("cuda_current_device", &cuda_current_device,
        "The calling thread's current CUDA device; -1 without a device or CUDA support.");
  m.def("cuda_set_device", &cuda_set_device, py::arg("ordinal"),
        "Makes a CUDA device current for the calling thread.");
  m.def("cuda_restore_device", &cuda_restore_device, py::arg("previous"),
        "Makes `previous` current again unless it is -1 or a GPU the process has not used (no "
        "primary context: setting it would create one). Never raises.");
}

py::dict build_info() {
  py::dict d;
  d["cuda_compiled"] = cuda_compiled();
  d["cuda_architectures"] = std::string(cuda_architectures());
  d["cuda_runtime_version"] = cuda_runtime_version();
#ifdef _OPENMP
  d["openmp"] = true;
#else
  d["openmp"] = false;
#endif
#if defined(__clang__)
  d["compiler"] = std::string("clang ") + __clang_version__;
#elif defined(__GNUC__)
  d["compiler"] = std::string("gcc ") + __VERSION__;
#else
  d["compiler"] = std::string("unknown");
#endif
  return d;
}

// ---- resize_normalize ----------------------------------------------------------------------

using ShapeAndDtype = std::tuple<std::vector<std::int64_t>, std::string>;
using DeviceImage = std::tuple<std::uintptr_t, std::vector<std::int64_t>, std::string>;

py::array resize_normalize_cpu(const py::list& images, const ops::ResizeNormalizeOptions& o) {
  const NumpyImages in = numpy_images(images);
  std::vector<ops::ImageDesc> descs;
  ops::ResizeNormalizeParams p = ops::validate_resize_normalize(in.shapes, o, &descs);
  for (std::size_t i = 0; i < descs.size(); ++i)
    descs[i].src = reinterpret_cast<std::uintptr_t>(in.arrays[i].data());
  py::array out(py::dtype(o.dtype),
                std::vector<py::ssize_t>{p.batch, p.out_channels, p.out_h, p.out_w});
  p.images = descs.data();
  p.out = out.mutable_data();
  {
    py::gil_scoped_release nogil;
    ops::resize_normalize_cpu(p);
  }
  return out;
}

py::tuple resize_normalize_check(const std::vector<ShapeAndDtype>& images,
                                 const ops::ResizeNormalizeOptions& o) {
  std::vector<ops::ImageShape> shapes;
  for (const auto& [shape, dtype] : images) shapes.push_back({shape, dtype});
  std::vector<ops::ImageDesc> descs;
  const ops::ResizeNormalizeParams p = ops::validate_resize_normalize(shapes, o, &descs);
  return py::make_tuple(p.batch, p.out_channels, p.out_h, p.out_w);
}

void resize_normalize_cuda(const std::vector<DeviceImage>& images,
                           const ops::ResizeNormalizeOptions& o, std::uintptr_t out,
                           std::uintptr_t device_descs, std::uintptr_t stream,
                           bool upload_descs) {
  std::vector<ops::ImageShape> shapes;
  for (const auto& [ptr, shape, dtype] : images) shapes.push_back({shape, dtype});
  std::vector<ops::ImageDesc> descs;
  ops::ResizeNormalizeParams p = ops::validate_resize_normalize(shapes, o, &descs);
  for (std::size_t i = 0; i < descs.size(); ++i) descs[i].src = std::get<0>(images[i]);
  MEDTRT_CHECK(out != 0 && device_descs != 0, "resize_normalize: null device pointer");
  p.out = reinterpret_cast<void*>(out);
  py::gil_scoped_release nogil;
  auto* dev = reinterpret_cast<ops::ImageDesc*>(device_descs);
  auto* s = reinterpret_cast<CUstream_st*>(stream);
  if (upload_descs) {
    ops::resize_normalize_cuda(p, descs.data(), dev, s);
  } else {  // the caller uploaded these exact descriptors before (benchmarks, pipelines)
    p.images = dev;
    ops::resize_normalize_cuda_launch(p, s);
  }
}

ops::ResizeNormalizeOptions make_options(std::pair<std::int64_t, std::int64_t> out_size,
                                         std::int64_t channels, std::optional<double> scale,
                                         std::optional<std::pair<double, double>> window,
                                         std::optional<std::pair<double, double>> rescale,
                                         std::vector<double> mean, std::vector<double> std,
                                         std::string dtype) {
  ops::ResizeNormalizeOptions o;
  o.out_h = out_size.first;
  o.out_w = out_size.second;
  o.channels = channels;
  o.scale = scale;
  o.window = window;
  o.rescale = rescale;
  o.mean = std::move(mean);
  o.std = std::move(std);
  o.dtype = std::move(dtype);
  return o;
}

void def_resize_normalize(py::module_& m) {
  m.attr("IMAGE_DESC_BYTES") = sizeof(ops::ImageDesc);
  py::class_<ops::ResizeNormalizeOptions>(m, "ResizeNormalizeOptions")
      .def(py::init(&make_options), py::kw_only(), py::arg("out_size"), py::arg("channels") = 1,
           py::arg("scale") = py::none(), py::arg("window") = py::none(),
           py::arg("rescale") = py::none(), py::arg("mean") = std::vector<double>{0.0},
           py::arg("std") = std::vector<double>{1.0}, py::arg("dtype") = "float32");
  m.def("resize_normalize_cpu", &resize_normalize_cpu, py::arg("images"), py::arg("options"));
  m.def("resize_normalize_check", &resize_normalize_check, py::arg("images"),
        py::arg("options"));
  m.def("resize_normalize_cuda", &resize_normalize_cuda, py::arg("images"), py::arg("options"),
        py::arg("out"), py::arg("device_descs"), py::arg("stream"),
        py::arg("upload_descs") = true);
}

// ---- topk ----------------------------------------------------------------------------------

py::tuple topk_cpu(const py::array& logits_in, std::int64_t k, const std::string& activation) {
  py::array logits = contiguous_aligned(logits_in);
  if (!logits) throw py::type_error("topk: expected a NumPy array of logits");
  ops::TopkParams p = ops::validate_topk(array_shape(logits), dtype_name(logits), k, activation);
  const std::vector<py::ssize_t> shape{p.batch, p.k};
  py::array_t<float> scores(shape);
  py::array_t<std::int32_t> indices(shape);
  p.logits = logits.data();
  p.scores = scores.mutable_data();
  p.indices = indices.mutable_data();
  {
    py::gil_scoped_release nogil;
    ops::topk_cpu(p);
  }
  return py::make_tuple(scores, indices);
}

py::tuple topk_check(const std::vector<std::int64_t>& shape, const std::string& dtype,
                     std::int64_t k, const std::string& activation) {
  const ops::TopkParams p = ops::validate_topk(shape, dtype, k, activation);
  return py::make_tuple(p.batch, p.k);
}

void topk_cuda(std::uintptr_t logits, const std::vector<std::int64_t>& shape,
               const std::string& dtype, std::int64_t k, const std::string& activation,
               std::uintptr_t scores, std::uintptr_t indices, std::uintptr_t stream) {
  ops::TopkParams p = ops::validate_topk(shape, dtype, k, activation);
  MEDTRT_CHECK(logits != 0 && scores != 0 && indices != 0, "topk: null device pointer");
  p.logits = reinterpret_cast<const void*>(logits);
  p.scores = reinterpret_cast<float*>(scores);
  p.indices = reinterpret_cast<std::int32_t*>(indices);
  py::gil_scoped_release nogil;
  ops::topk_cuda(p, reinterpret_cast<CUstream_st*>(stream));
}

void def_topk(py::module_& m) {
  m.def("topk_cpu", &topk_cpu, py::arg("logits"), py::arg("k"), py::arg("activation"));
  m.def("topk_check", &topk_check, py::arg("shape"), py::arg("dtype"), py::arg("k"),
        py::arg("activation"));
  m.def("topk_cuda", &topk_cuda, py::arg("logits"), py::arg("shape"), py::arg("dtype"),
        py::arg("k"), py::arg("activation"), py::arg("scores"), py::arg("indices"),
        py::arg("stream"));
}

// ---- entropy -------------------------------------------------------------------------------

// Fills several histograms from their arrays in parallel (one histogram per task, the largest
// arrays first so that no thread is left with a big one at the end); reference: the former
// fill (AbsHistogram::add_reference, in the order given), for the before/after benchmark.
void histogram_add_many(const std::vector<std::pair<ops::AbsHistogram*, py::array>>& work,
                        bool reference) {
  std::vector<py::array> arrays;
  for (std::size_t i = 0; i < work.size(); ++i) {
    MEDTRT_CHECK(work[i].first != nullptr, "histogram_add_many: item ", i,
                 " has no histogram (None); pass (AbsHistogram, float32 array) pairs");
    for (std::size_t j = 0; j < i; ++j)
      MEDTRT_CHECK(work[j].first != work[i].first, "histogram_add_many: items ", j, " and ", i,
                   " are the same histogram, which two threads would fill at once; pass each "
                   "histogram once (concatenate its arrays)");
    arrays.push_back(float32_array(work[i].second, "activation"));
  }
  py::gil_scoped_release nogil;
  const auto n = static_cast<std::int64_t>(work.size());
  std::vector<std::size_t> order(work.size());
  std::iota(order.begin(), order.end(), std::size_t{0});
  if (!reference)
    std::stable_sort(order.begin(), order.end(), [&arrays](std::size_t a, std::size_t b) {
      return arrays[a].size() > arrays[b].size();
    });
  std::string error;
#pragma omp parallel for schedule(dynamic, 1)
  for (std::int64_t k = 0; k < n; ++k) {
    const std::size_t i = order[static_cast<std::size_t>(k)];
    try {
      const py::array& a = arrays[i];
      const auto* x = static_cast<const float*>(a.data());
      if (reference)
        work[i].first->add_reference(x, static_cast<std::int64_t>(a.size()));
      else
        work[i].first->add(x, static_cast<std::int64_t>(a.size()));
    } catch (const std::exception& e) {
#pragma omp critical
      error = e.what();
    }
  }
  if (!error.empty()) throw std::invalid_argument(error);
}

void histogram_add(ops::AbsHistogram& h, const py::array& x) {
  const py::array a = float32_array(x, "activation");
  py::gil_scoped_release nogil;
  h.add(static_cast<const float*>(a.data()), static_cast<std::int64_t>(a.size()));
}

void histogram_add_reference(ops::AbsHistogram& h, const py::array& x) {
  const py::array a = float32_array(x, "activation");
  py::gil_scoped_release nogil;
  h.add_reference(static_cast<const float*>(a.data()), static_cast<std::int64_t>(a.size()));
}

// c_style: a strided or reversed view is copied in order, not read past its buffer.
ops::AbsHistogram histogram_from_parts(const py::array_t<std::uint64_t, py::array::c_style>& counts,
                                       double range, double max_abs, std::uint64_t nan_count,
                                       std::uint64_t merges) {
  return ops::AbsHistogram::from_parts(
      std::vector<std::uint64_t>(counts.data(), counts.data() + counts.size()), range, max_abs,
      nan_count, merges);
}

py::tuple entropy_amax(const ops::AbsHistogram& h, std::int64_t start_bin,
                       std::int64_t quantized_bins) {
  const ops::EntropyResult r = ops::entropy_amax(h, start_bin, quantized_bins);
  return py::make_tuple(r.amax, r.bins_kept,
                        py::array_t<double>(static_cast<py::ssize_t>(r.divergences.size()),
                                            r.divergences.data()));
}

// The fast threshold search over several histograms in parallel, GIL released:
// (amax float64[n], bins_kept int64[n], rechecked int64[n]).
py::tuple entropy_amax_many(const std::vector<const ops::AbsHistogram*>& histograms,
                            std::int64_t start_bin, std::int64_t quantized_bins) {
  for (std::size_t i = 0; i < histograms.size(); ++i) {
    MEDTRT_CHECK(histograms[i] != nullptr, "entropy_amax_many: item ", i,
                 " is None; pass AbsHistogram objects");
    ops::validate_entropy(*histograms[i], start_bin, quantized_bins);
  }
  const auto n = static_cast<py::ssize_t>(histograms.size());
  py::array_t<double> amax(n);
  py::array_t<std::int64_t> kept(n), rechecked(n);
  double* a = amax.mutable_data();
  std::int64_t* k = kept.mutable_data();
  std::int64_t* r = rechecked.mutable_data();
  std::string error;
  {
    py::gil_scoped_release nogil;
#pragma omp parallel for schedule(dynamic, 1)
    for (py::ssize_t i = 0; i < n; ++i) {
      try {
        const ops::EntropyChoice c = ops::entropy_amax_fast(
            *histograms[static_cast<std::size_t>(i)], start_bin, quantized_bins);
        a[i] = c.amax;
        k[i] = c.bins_kept;
        r[i] = c.rechecked;
      } catch (const std::exception& e) {
#pragma omp critical
        error = e.what();
      }
    }
  }
  if (!error.empty()) throw std::invalid_argument(error);
  return py::make_tuple(amax, kept, rechecked);
}

void def_entropy(py::module_& m) {
  using H = ops::AbsHistogram;
  py::class_<H>(m, "AbsHistogram")
      .def(py::init<std::int64_t>(), py::arg("bins") = 2048)
      .def("add", &histogram_add, py::arg("x"))
      .def("add_reference", &histogram_add_reference, py::arg("x"),
           "The former add (two plain passes): same results, slower; for tests and benchmarks.")
      .def_property_readonly("counts", [](const H& h) {
             return py::array_t<std::uint64_t>(static_cast<py::ssize_t>(h.counts().size()),
                                               h.counts().data());
           })
      .def_property_readonly("bins", &H::bins)
      .def_property_readonly("range", &H::range)
      .def_property_readonly("bin_width", &H::bin_width)
      .def_property_readonly("max_abs", &H::max_abs)
      .def_property_readonly("total", &H::total)
      .def_property_readonly("nan_count", &H::nan_count)
      .def_property_readonly("merges", &H::merges)
      .def_static("from_parts", &histogram_from_parts, py::arg("counts"), py::arg("range"),
                  py::arg("max_abs"), py::arg("nan_count") = 0, py::arg("merges") = 0);
  m.def("histogram_add_many", &histogram_add_many, py::arg("work"), py::arg("reference") = false,
        "Fill [(histogram, float32 array), ...] in parallel, GIL released.");
  m.def("entropy_amax", &entropy_amax, py::arg("histogram"), py::arg("start_bin") = 128,
        py::arg("quantized_bins") = 128,
        "The reference search, O(bins^2): (amax, bins_kept, divergences).");
  m.def("entropy_amax_many", &entropy_amax_many, py::arg("histograms"), py::arg("start_bin") = 128,
        py::arg("quantized_bins") = 128,
        "entropy_amax's choice, bit for bit, for many histograms in parallel (GIL released): "
        "(amax, bins_kept, rechecked) arrays.");
  m.def("percentile_amax", &ops::percentile_amax, py::arg("histogram"), py::arg("percentile"));
}

// ---- pipeline ------------------------------------------------------------------------------

std::unique_ptr<runtime::Device> make_device(const py::object& device) {
  if (py::isinstance<py::str>(device)) {
    const auto name = device.cast<std::string>();
    if (name == "cpu") return runtime::make_host_device();
    MEDTRT_CHECK(name.rfind("cuda", 0) == 0, "Pipeline: device must be 'cpu', 'cuda', 'cuda:N' or "
                 "an int; got '", name, "'");
    const int ordinal = name.size() > 5 ? std::stoi(name.substr(5)) : 0;
    return make_device(py::int_(ordinal));
  }
  return runtime::make_cuda_device(device.cast<int>());
}

std::unique_ptr<runtime::Pipeline> make_pipeline(std::int32_t slots, std::int32_t classes,
                                                 const ops::ResizeNormalizeOptions& preprocess,
                                                 std::string logits_dtype, std::string activation,
                                                 const py::object& device) {
  runtime::PipelineConfig c;
  c.slots = slots;
  c.classes = classes;
  c.preprocess = preprocess;
  c.logits_dtype = std::move(logits_dtype);
  c.activation = std::move(activation);
  return std::make_unique<runtime::Pipeline>(std::move(c), make_device(device));
}

py::dict times_dict(const runtime::StageTimes& t) {
  py::dict d;
  d["staging"] = t.staging;
  d["h2d"] = t.h2d;
  d["preprocess"] = t.preprocess;
  d["compute"] = t.compute;
  d["postprocess"] = t.postprocess;
  d["d2h"] = t.d2h;
  d["total"] = t.total;
  return d;
}

// Resident on the host device means NumPy arrays (the host twin of device memory).
ImageBatch resident_batch(const runtime::Pipeline& p, const py::list& images,
                          const py::object& producer) {
  if (p.device().is_host()) return host_batch(images);
  return device_batch(images, producer);
}

runtime::SlotView stage_in(runtime::Pipeline& p, std::int32_t slot, const py::list& images) {
  ImageBatch b = host_batch(images);
  py::gil_scoped_release nogil;
  return p.stage_in(slot, b.images);
}

runtime::SlotView stage_in_resident(runtime::Pipeline& p, std::int32_t slot,
                                    const py::list& images, const py::object& producer) {
  ImageBatch b = resident_batch(p, images, producer);
  py::gil_scoped_release nogil;
  return p.stage_in_resident(slot, b.images, reinterpret_cast<void*>(b.producer));
}

// acquire -> stage_in -> compute(view) (GIL held: the compute stage is Python) -> stage_out.
// `slot` >= 0: a slot the caller already acquired. On any error the slot is given back.
// resident: the images are in the pipeline device's memory (see stage_in_resident).
std::int32_t submit(runtime::Pipeline& p, const py::list& images, const py::function& compute,
                    bool want_logits, std::int32_t slot, bool resident,
                    const py::object& producer) {
  // A slot passed in must be one the caller acquired: on an error below it is given back, and
  // giving back another caller's in-flight slot would drop their batch.
  if (slot >= 0) p.check_taken(slot, "submit");
  ImageBatch b;
  try {
    b = resident ? resident_batch(p, images, producer) : host_batch(images);
  } catch (...) {
    if (slot >= 0) p.release(slot);
    throw;
  }
  if (slot < 0) {
    py::gil_scoped_release nogil;
    slot = p.acquire();
  }
  try {
    // The pipeline's device is current while the compute stage enqueues (TensorRT and CUDA
    // graphs use the current device); the caller's is restored on return.
    const runtime::DeviceScope scope(p.device());
    runtime::SlotView view;
    {
      py::gil_scoped_release nogil;
      view = resident ? p.stage_in_resident(slot, b.images, reinterpret_cast<void*>(b.producer))
                      : p.stage_in(slot, b.images);
    }
    compute(view);
    p.stage_out(slot, want_logits);
  } catch (...) {
    py::gil_scoped_release nogil;
    p.release(slot);
    throw;
  }
  return slot;
}

py::tuple wait(runtime::Pipeline& p, std::int32_t slot) {
  runtime::Collected r;
  {
    py::gil_scoped_release nogil;
    r = p.wait(slot);
  }
  const std::vector<py::ssize_t> shape{r.batch, r.classes};
  py::array_t<float> scores(shape, r.scores.data());
  py::array_t<std::int32_t> indices(shape, r.indices.data());
  py::object logits = py::none();
  if (!r.logits.empty()) logits = py::array_t<float>(shape, r.logits.data());
  return py::make_tuple(scores, indices, logits, times_dict(r.times));
}

// NumPy views of a host-device slot's input and logits. Each view owns a share of its memory,
// so it stays valid (if no longer read by anything) after the slot moves on to a larger buffer.
py::array host_view(const runtime::Pipeline& p, const runtime::SlotView& v, bool input) {
  std::shared_ptr<void> mem = p.host_buffer(v, input, input ? "host_input" : "host_logits");
  py::capsule owner(new std::shared_ptr<void>(mem),
                    [](void* share) { delete static_cast<std::shared_ptr<void>*>(share); });
  const auto& c = p.config();
  if (input) {
    const auto& o = c.preprocess;
    return py::array(py::dtype(o.dtype),
                     std::vector<py::ssize_t>{v.batch, o.channels, o.out_h, o.out_w}, mem.get(),
                     owner);
  }
  return py::array(py::dtype(c.logits_dtype), std::vector<py::ssize_t>{v.batch, c.classes},
                   mem.get(), owner);
}

py::dict memory(const runtime::Pipeline& p) {
  const runtime::MemoryUse u = p.memory();
  py::dict d;
  d["pinned"] = u.pinned;
  d["device"] = u.device;
  d["grows"] = u.grows;
  return d;
}

void def_slot_view(py::module_& m) {
  using V = runtime::SlotView;
  py::class_<V>(m, "SlotView")
      .def_readonly("slot", &V::slot)
      .def_readonly("batch", &V::batch)
      .def_readonly("stream", &V::stream)
      .def_readonly("input", &V::input)
      .def_readonly("logits", &V::logits)
      .def("__repr__", [](const V& v) {
        return detail::concat("SlotView(slot=", v.slot, ", batch=", v.batch, ", stream=0x",
                              std::hex, v.stream, ", input=0x", v.input, ", logits=0x", v.logits,
                              ")");
      });
}

using PipelineClass = py::class_<runtime::Pipeline>;

void def_pipeline_properties(PipelineClass& cls) {
  using P = runtime::Pipeline;
  cls.def_property_readonly("slots", [](const P& p) { return p.config().slots; })
      .def_property_readonly("exact_alloc", &P::exact_alloc)
      .def_property_readonly("classes", [](const P& p) { return p.config().classes; })
      .def_property_readonly("device", [](const P& p) { return p.device().name(); })
      .def_property_readonly("input_dtype", [](const P& p) { return p.config().preprocess.dtype; })
      .def_property_readonly("logits_dtype", [](const P& p) { return p.config().logits_dtype; })
      .def_property_readonly("input_shape", [](const P& p) {
        const auto& o = p.config().preprocess;
        return py::make_tuple(o.channels, o.out_h, o.out_w);
      });
}

void def_pipeline(py::module_& m) {
  using P = runtime::Pipeline;
  using nogil = py::call_guard<py::gil_scoped_release>;
  PipelineClass cls(m, "Pipeline");
  cls.def(py::init(&make_pipeline), py::kw_only(), py::arg("slots"), py::arg("classes"),
          py::arg("preprocess"), py::arg("logits_dtype") = "float32",
          py::arg("activation") = "softmax", py::arg("device") = "cpu")
      .def("acquire", &P::acquire, nogil())
      .def("try_acquire", &P::try_acquire)
      .def("stage_in", &stage_in, py::arg("slot"), py::arg("images"))
      .def("stage_in_resident", &stage_in_resident, py::arg("slot"), py::arg("images"),
           py::arg("producer") = py::none())
      .def("stage_out", &P::stage_out, py::arg("slot"), py::arg("want_logits") = false, nogil())
      .def("release", &P::release, py::arg("slot"), nogil())
      .def("submit", &submit, py::arg("images"), py::arg("compute"),
           py::arg("want_logits") = false, py::arg("slot") = -1, py::kw_only(),
           py::arg("resident") = false, py::arg("producer") = py::none())
      .def("wait", &wait, py::arg("slot"))
      .def("reserve", &P::reserve, py::arg("batch"), py::arg("raw_bytes"), nogil())
      .def("memory", &memory)
      .def("host_input", [](const P& p, const runtime::SlotView& v) {
             return host_view(p, v, true);
           }, py::arg("view"))
      .def("host_logits", [](const P& p, const runtime::SlotView& v) {
             return host_view(p, v, false);
           }, py::arg("view"));
  def_pipeline_properties(cls);
}

}  // namespace
}  // namespace medtrt::bindings

PYBIND11_MODULE(_C, m) {
  using namespace medtrt::bindings;
  m.doc() = "medtrt compiled core (private; use medtrt.ops)";
  def_errors();
  def_cuda_queries(m);
  m.def("build_info", &build_info);
  def_resize_normalize(m);
  def_entropy(m);
  def_slot_view(m);
  def_pipeline(m);
  def_topk(m);
}

// The only pybind11 translation unit. Converts Python arguments to op params, lets the shared
// validators check them (so CPU and CUDA report identical errors), and releases the GIL around
// the work. Device entry points take raw addresses and a stream handle (ints), so the extension
// never links against torch; the Python wrappers own the tensors.
#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <algorithm>
#include <cstdint>
#include <string>
#include <tuple>
#include <vector>

#include "common/check.h"
#include "common/cuda_utils.h"
#include "ops/entropy.h"
#include "ops/resize_normalize.h"
#include "ops/topk.h"
#include "runtime/pipeline.h"

namespace py = pybind11;

namespace medtrt {
namespace {

#ifndef MEDTRT_CUDA_ARCHITECTURES
#define MEDTRT_CUDA_ARCHITECTURES ""
#endif

constexpr bool kCudaCompiled = MEDTRT_WITH_CUDA != 0;

#if !MEDTRT_WITH_CUDA
[[noreturn]] void no_cuda(const char* what) {
  throw std::runtime_error(std::string(what) +
                           ": medtrt was built without CUDA (no nvcc was found at build time); "
                           "reinstall with the CUDA toolkit on PATH or use NumPy inputs");
}
#endif

std::vector<std::int64_t> array_shape(const py::array& a) {
  return std::vector<std::int64_t>(a.shape(), a.shape() + a.ndim());
}

std::string dtype_name(const py::array& a) { return py::str(a.dtype()).cast<std::string>(); }

// A C-contiguous, aligned array of `obj` (a copy only when it is neither), never a dtype cast:
// the kernels read elements through typed pointers, which must be aligned to their size.
py::array contiguous_aligned(const py::handle& obj) {
  return py::array::ensure(obj, py::array::c_style | py::detail::npy_api::NPY_ARRAY_ALIGNED_);
}

// ---- resize_normalize -------------------------------------------------------------------

using ShapeAndDtype = std::tuple<std::vector<std::int64_t>, std::string>;
using DeviceImage = std::tuple<std::uintptr_t, std::vector<std::int64_t>, std::string>;

py::tuple out_shape(const ops::ResizeNormalizeParams& p) {
  return py::make_tuple(p.batch, p.out_channels, p.out_h, p.out_w);
}

py::array resize_normalize_cpu(const py::list& images, const ops::ResizeNormalizeOptions& o) {
  std::vector<py::array> arrays;
  std::vector<ops::ImageShape> shapes;
  arrays.reserve(images.size());
  for (std::size_t i = 0; i < images.size(); ++i) {
    // Contiguous view or copy, never a dtype cast: the validator decides what is acceptable.
    py::array a = contiguous_aligned(images[i]);
    if (!a)
      throw py::type_error(detail::concat("resize_normalize: image ", i, " is a ",
                                          py::str(py::type::of(images[i])).cast<std::string>(),
                                          "; expected a NumPy array"));
    shapes.push_back({array_shape(a), dtype_name(a)});
    arrays.push_back(std::move(a));
  }
  std::vector<ops::ImageDesc> descs;
  ops::ResizeNormalizeParams p = ops::validate_resize_normalize(shapes, o, &descs);
  for (std::size_t i = 0; i < descs.size(); ++i)
    descs[i].src = reinterpret_cast<std::uintptr_t>(arrays[i].data());
  py::array out(py::dtype(o.dtype), std::vector<py::ssize_t>{p.batch, p.out_channels, p.out_h,
                                                             p.out_w});
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
  return out_shape(ops::validate_resize_normalize(shapes, o, &descs));
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
#if MEDTRT_WITH_CUDA
  py::gil_scoped_release nogil;
  auto* dev = reinterpret_cast<ops::ImageDesc*>(device_descs);
  auto* s = reinterpret_cast<CUstream_st*>(stream);
  if (upload_descs) {
    ops::resize_normalize_cuda(p, descs.data(), dev, s);
  } else {  // the caller uploaded these exact descriptors before (benchmarks, pipelines)
    p.images = dev;
    ops::resize_normalize_cuda_launch(p, s);
  }
#else
  (void)stream;
  (void)upload_descs;
  no_cuda("resize_normalize_cuda");
#endif
}

// ---- topk ------------------------------------------------------------------------------------

py::tuple topk_cpu(const py::array& logits_in, std::int64_t k, const std::string& activation) {
  py::array logits = contiguous_aligned(logits_in);
  if (!logits) throw py::type_error("topk: expected a NumPy array of logits");
  ops::TopkParams p = ops::validate_topk(array_shape(logits), dtype_name(logits), k, activation);
  py::array_t<float> scores({static_cast<py::ssize_t>(p.batch), static_cast<py::ssize_t>(p.k)});
  py::array_t<std::int32_t> indices(
      {static_cast<py::ssize_t>(p.batch), static_cast<py::ssize_t>(p.k)});
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
#if MEDTRT_WITH_CUDA
  py::gil_scoped_release nogil;
  ops::topk_cuda(p, reinterpret_cast<CUstream_st*>(stream));
#else
  (void)stream;
  no_cuda("topk_cuda");
#endif
}

// ---- entropy ---------------------------------------------------------------------------------

// A float32, C-contiguous array as the histogram reads it (an aligned copy when misaligned).
py::array float32_array(const py::array& a, const char* what) {
  MEDTRT_CHECK(dtype_name(a) == "float32", "entropy: ", what, " must be float32; got ",
               dtype_name(a));
  MEDTRT_CHECK(a.flags() & py::array::c_style, "entropy: ", what, " must be C-contiguous");
  return contiguous_aligned(a);
}

// Fills several histograms from their arrays in parallel (one histogram per task).
void histogram_add_many(const std::vector<std::pair<ops::AbsHistogram*, py::array>>& work) {
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
  std::string error;
#pragma omp parallel for schedule(dynamic, 1)
  for (std::int64_t i = 0; i < n; ++i) {
    try {
      const py::array& a = arrays[static_cast<std::size_t>(i)];
      work[i].first->add(static_cast<const float*>(a.data()), static_cast<std::int64_t>(a.size()));
    } catch (const std::exception& e) {
#pragma omp critical
      error = e.what();
    }
  }
  if (!error.empty()) throw std::invalid_argument(error);
}


// ---- pipeline --------------------------------------------------------------------------------

std::unique_ptr<runtime::Device> make_device(const py::object& device) {
  if (py::isinstance<py::str>(device)) {
    const auto name = device.cast<std::string>();
    if (name == "cpu") return runtime::make_host_device();
    MEDTRT_CHECK(name.rfind("cuda", 0) == 0, "Pipeline: device must be 'cpu', 'cuda', 'cuda:N' or "
                 "an int; got '", name, "'");
    const int ordinal = name.size() > 5 ? std::stoi(name.substr(5)) : 0;
    return make_device(py::int_(ordinal));
  }
  const int ordinal = device.cast<int>();
#if MEDTRT_WITH_CUDA
  return runtime::make_cuda_device(ordinal);
#else
  (void)ordinal;
  no_cuda("Pipeline(device=cuda)");
#endif
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

// The binding owns the NumPy arrays while their pixels are copied into staging (or, on the host
// device, read in place by a resident batch).
struct HostBatch {
  std::vector<py::array> arrays;
  std::vector<runtime::ImageRef> images;
  // Resident batches: the stream the images were written on: from the call, else from the
  // __cuda_array_interface__ 'stream' entry (1 and 2 are the default streams), else the legacy
  // default stream (torch's default; torch's interface has no 'stream' entry).
  std::uintptr_t producer = 1;  // cudaStreamLegacy
};

HostBatch host_batch(const py::list& images) {
  HostBatch b;
  for (std::size_t i = 0; i < images.size(); ++i) {
    if (!py::isinstance<py::array>(images[i]))
      throw py::type_error(detail::concat("Pipeline: image ", i, " is a ",
                                          py::str(py::type::of(images[i])).cast<std::string>(),
                                          "; expected a NumPy array"));
    py::array a = contiguous_aligned(images[i]);  // contiguous and aligned, same dtype
    b.images.push_back({a.data(), static_cast<std::size_t>(a.nbytes()),
                        ops::ImageShape{array_shape(a), dtype_name(a)}});
    b.arrays.push_back(std::move(a));
  }
  return b;
}

std::string cai_dtype(const std::string& typestr) {
  if (typestr == "|u1") return "uint8";
  if (typestr == "<u2") return "uint16";
  if (typestr == "<i2") return "int16";
  if (typestr == "<f4") return "float32";
  return {};
}

// Images in device memory, described by __cuda_array_interface__ (torch, CuPy, Numba, ...). The
// caller keeps the objects alive until wait(); only their addresses are taken here.
HostBatch device_batch(const py::list& images, const py::object& producer) {
  HostBatch b;
  std::vector<std::int64_t> streams;
  for (std::size_t i = 0; i < images.size(); ++i) {
    const py::handle item = images[i];
    if (!py::hasattr(item, "__cuda_array_interface__"))
      throw py::type_error(detail::concat(
          "Pipeline: image ", i, " is a ", py::str(py::type::of(item)).cast<std::string>(),
          " without __cuda_array_interface__; a resident batch takes GPU arrays (a CUDA torch "
          "tensor, a CuPy array)"));
    const auto cai = item.attr("__cuda_array_interface__").cast<py::dict>();
    const auto shape = cai["shape"].cast<std::vector<std::int64_t>>();
    const auto typestr = cai["typestr"].cast<std::string>();
    const std::string dtype = cai_dtype(typestr);
    MEDTRT_CHECK(!dtype.empty(), "Pipeline: image ", i, " has element type '", typestr,
                 "'; expected uint8, uint16, int16 or float32");
    const std::size_t itemsize = runtime::pixel_bytes(dtype);
    std::size_t bytes = itemsize;
    for (std::int64_t d : shape) bytes *= static_cast<std::size_t>(std::max<std::int64_t>(d, 0));
    if (cai.contains("strides") && !cai["strides"].is_none()) {
      const auto strides = cai["strides"].cast<std::vector<std::int64_t>>();
      auto expect = static_cast<std::int64_t>(itemsize);
      bool contiguous = strides.size() == shape.size();
      for (std::size_t d = shape.size(); contiguous && d-- > 0;) {
        contiguous = shape[d] == 1 || strides[d] == expect;
        expect *= shape[d];
      }
      MEDTRT_CHECK(contiguous, "Pipeline: image ", i, " is not contiguous (strides ",
                   py::str(cai["strides"]).cast<std::string>(), "); pass .contiguous()");
    }
    const auto data = cai["data"].cast<py::tuple>();
    const auto address = data[0].cast<std::uintptr_t>();
    b.images.push_back({reinterpret_cast<const void*>(address), bytes, ops::ImageShape{shape, dtype}});
    if (cai.contains("stream") && !cai["stream"].is_none())
      streams.push_back(cai["stream"].cast<std::int64_t>());
  }
  if (!producer.is_none()) {
    b.producer = producer.cast<std::uintptr_t>();
  } else if (!streams.empty()) {
    MEDTRT_CHECK(std::all_of(streams.begin(), streams.end(),
                             [&](std::int64_t x) { return x == streams[0]; }),
                 "Pipeline: the images were written on different CUDA streams; synchronize them "
                 "or pass producer= (a stream that has waited for all of them)");
    b.producer = static_cast<std::uintptr_t>(streams[0]);
  }
  return b;
}

// Resident on the host device means NumPy arrays (the host twin of device memory).
HostBatch resident_batch(const runtime::Pipeline& p, const py::list& images,
                         const py::object& producer) {
  if (p.device().is_host()) return host_batch(images);
  return device_batch(images, producer);
}

runtime::SlotView stage_in(runtime::Pipeline& p, std::int32_t slot, const py::list& images) {
  HostBatch b = host_batch(images);
  py::gil_scoped_release nogil;
  return p.stage_in(slot, b.images);
}

runtime::SlotView stage_in_resident(runtime::Pipeline& p, std::int32_t slot,
                                    const py::list& images, const py::object& producer) {
  HostBatch b = resident_batch(p, images, producer);
  py::gil_scoped_release nogil;
  return p.stage_in_resident(slot, b.images, reinterpret_cast<void*>(b.producer));
}

// acquire -> stage_in -> compute(view) (GIL held: the compute stage is Python) -> stage_out.
// `slot` >= 0: a slot the caller already acquired. On any error the slot is given back.
// resident: the images are in the pipeline device's memory (see stage_in_resident).
std::int32_t submit(runtime::Pipeline& p, const py::list& images, const py::function& compute,
                    bool want_logits, std::int32_t slot, bool resident, const py::object& producer) {
  // A slot passed in must be one the caller acquired: on an error below it is given back, and
  // giving back another caller's in-flight slot would drop their batch.
  if (slot >= 0) p.check_taken(slot, "submit");
  HostBatch b;
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

py::dict build_info() {
  py::dict d;
  d["cuda_compiled"] = kCudaCompiled;
  d["cuda_architectures"] = std::string(MEDTRT_CUDA_ARCHITECTURES);
#if MEDTRT_WITH_CUDA
  d["cuda_runtime_version"] = cuda_runtime_version();
#else
  d["cuda_runtime_version"] = 0;
#endif
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

}  // namespace
}  // namespace medtrt

PYBIND11_MODULE(_C, m) {
  using namespace medtrt;
  m.doc() = "medtrt compiled core (private; use medtrt.ops)";

  py::register_exception_translator([](std::exception_ptr e) {
    try {
      if (e) std::rethrow_exception(e);
    } catch (const CudaError& err) {
      py::object cls = py::module_::import("medtrt.errors").attr("CudaError");
      PyErr_SetString(cls.ptr(), err.what());
    }
  });

  m.def("cuda_compiled", [] { return kCudaCompiled; },
        "True when the CUDA kernels were compiled into this extension.");
  m.def("cuda_device_count", [] {
#if MEDTRT_WITH_CUDA
    return cuda_device_count();
#else
    return 0;
#endif
  }, "Visible CUDA devices; 0 without a driver, a device, or CUDA support in this build.");
  m.def("cuda_device_status", []() -> std::string {
#if MEDTRT_WITH_CUDA
    return cuda_device_status();
#else
    return "medtrt was built without CUDA";
#endif
  }, "Why cuda_device_count() is 0, or '' when a device is visible.");
  m.def("cuda_driver_version", [] {
#if MEDTRT_WITH_CUDA
    return cuda_driver_version();
#else
    return 0;
#endif
  });
  m.def("cuda_current_device", [] {
#if MEDTRT_WITH_CUDA
    return cuda_current_device();
#else
    return -1;
#endif
  }, "The calling thread's current CUDA device; -1 without a device or CUDA support.");
  m.def("cuda_set_device", [](int ordinal) {
#if MEDTRT_WITH_CUDA
    cuda_set_device(ordinal);
#else
    MEDTRT_CHECK(false, "cuda_set_device(", ordinal, "): medtrt was built without CUDA");
#endif
  }, py::arg("ordinal"), "Makes a CUDA device current for the calling thread.");
  m.def("cuda_restore_device", [](int previous) {
#if MEDTRT_WITH_CUDA
    cuda_restore_device(previous);
#else
    (void)previous;
#endif
  }, py::arg("previous"), "Makes `previous` current again unless it is -1 or a GPU the process "
     "has not used (no primary context: setting it would create one). Never raises.");
  m.def("build_info", &build_info);
  m.attr("IMAGE_DESC_BYTES") = sizeof(ops::ImageDesc);

  py::class_<ops::ResizeNormalizeOptions>(m, "ResizeNormalizeOptions")
      .def(py::init([](std::pair<std::int64_t, std::int64_t> out_size, std::int64_t channels,
                       std::optional<double> scale,
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
           }),
           py::kw_only(), py::arg("out_size"), py::arg("channels") = 1,
           py::arg("scale") = py::none(), py::arg("window") = py::none(),
           py::arg("rescale") = py::none(), py::arg("mean") = std::vector<double>{0.0},
           py::arg("std") = std::vector<double>{1.0}, py::arg("dtype") = "float32");

  m.def("resize_normalize_cpu", &resize_normalize_cpu, py::arg("images"), py::arg("options"));
  m.def("resize_normalize_check", &resize_normalize_check, py::arg("images"),
        py::arg("options"));
  m.def("resize_normalize_cuda", &resize_normalize_cuda, py::arg("images"), py::arg("options"),
        py::arg("out"), py::arg("device_descs"), py::arg("stream"),
        py::arg("upload_descs") = true);

  py::class_<ops::AbsHistogram>(m, "AbsHistogram")
      .def(py::init<std::int64_t>(), py::arg("bins") = 2048)
      .def("add", [](ops::AbsHistogram& h, const py::array& x) {
             const py::array a = float32_array(x, "activation");
             py::gil_scoped_release nogil;
             h.add(static_cast<const float*>(a.data()), static_cast<std::int64_t>(a.size()));
           }, py::arg("x"))
      .def_property_readonly("counts", [](const ops::AbsHistogram& h) {
             return py::array_t<std::uint64_t>(static_cast<py::ssize_t>(h.counts().size()),
                                               h.counts().data());
           })
      .def_property_readonly("bins", &ops::AbsHistogram::bins)
      .def_property_readonly("range", &ops::AbsHistogram::range)
      .def_property_readonly("bin_width", &ops::AbsHistogram::bin_width)
      .def_property_readonly("max_abs", &ops::AbsHistogram::max_abs)
      .def_property_readonly("total", &ops::AbsHistogram::total)
      .def_property_readonly("nan_count", &ops::AbsHistogram::nan_count)
      .def_property_readonly("merges", &ops::AbsHistogram::merges)
      // c_style: a strided or reversed view is copied in order, not read past its buffer.
      .def_static("from_parts", [](const py::array_t<std::uint64_t, py::array::c_style>& counts,
                                   double range,
                                   double max_abs, std::uint64_t nan_count, std::uint64_t merges) {
             return ops::AbsHistogram::from_parts(
                 std::vector<std::uint64_t>(counts.data(), counts.data() + counts.size()), range,
                 max_abs, nan_count, merges);
           }, py::arg("counts"), py::arg("range"), py::arg("max_abs"), py::arg("nan_count") = 0,
           py::arg("merges") = 0);
  m.def("histogram_add_many", &histogram_add_many, py::arg("work"),
        "Fill [(histogram, float32 array), ...] in parallel, GIL released.");
  m.def("entropy_amax", [](const ops::AbsHistogram& h, std::int64_t start_bin,
                           std::int64_t quantized_bins) {
          const ops::EntropyResult r = ops::entropy_amax(h, start_bin, quantized_bins);
          return py::make_tuple(r.amax, r.bins_kept,
                                py::array_t<double>(static_cast<py::ssize_t>(r.divergences.size()),
                                                    r.divergences.data()));
        }, py::arg("histogram"), py::arg("start_bin") = 128, py::arg("quantized_bins") = 128);
  m.def("percentile_amax", &ops::percentile_amax, py::arg("histogram"), py::arg("percentile"));


  py::class_<runtime::SlotView>(m, "SlotView")
      .def_readonly("slot", &runtime::SlotView::slot)
      .def_readonly("batch", &runtime::SlotView::batch)
      .def_readonly("stream", &runtime::SlotView::stream)
      .def_readonly("input", &runtime::SlotView::input)
      .def_readonly("logits", &runtime::SlotView::logits)
      .def("__repr__", [](const runtime::SlotView& v) {
        return detail::concat("SlotView(slot=", v.slot, ", batch=", v.batch, ", stream=0x",
                              std::hex, v.stream, ", input=0x", v.input, ", logits=0x", v.logits,
                              ")");
      });

  py::class_<runtime::Pipeline>(m, "Pipeline")
      .def(py::init([](std::int32_t slots, std::int32_t classes,
                       const ops::ResizeNormalizeOptions& preprocess, std::string logits_dtype,
                       std::string activation, const py::object& device) {
             runtime::PipelineConfig c;
             c.slots = slots;
             c.classes = classes;
             c.preprocess = preprocess;
             c.logits_dtype = std::move(logits_dtype);
             c.activation = std::move(activation);
             return std::make_unique<runtime::Pipeline>(std::move(c), make_device(device));
           }),
           py::kw_only(), py::arg("slots"), py::arg("classes"), py::arg("preprocess"),
           py::arg("logits_dtype") = "float32", py::arg("activation") = "softmax",
           py::arg("device") = "cpu")
      .def("acquire", &runtime::Pipeline::acquire, py::call_guard<py::gil_scoped_release>())
      .def("try_acquire", &runtime::Pipeline::try_acquire)
      .def("stage_in", &stage_in, py::arg("slot"), py::arg("images"))
      .def("stage_in_resident", &stage_in_resident, py::arg("slot"), py::arg("images"),
           py::arg("producer") = py::none())
      .def("stage_out", &runtime::Pipeline::stage_out, py::arg("slot"),
           py::arg("want_logits") = false, py::call_guard<py::gil_scoped_release>())
      .def("release", &runtime::Pipeline::release, py::arg("slot"),
           py::call_guard<py::gil_scoped_release>())
      .def("submit", &submit, py::arg("images"), py::arg("compute"),
           py::arg("want_logits") = false, py::arg("slot") = -1, py::kw_only(),
           py::arg("resident") = false, py::arg("producer") = py::none())
      .def("wait", &wait, py::arg("slot"))
      .def("reserve", &runtime::Pipeline::reserve, py::arg("batch"), py::arg("raw_bytes"),
           py::call_guard<py::gil_scoped_release>())
      .def("memory", [](const runtime::Pipeline& p) {
             const runtime::MemoryUse u = p.memory();
             py::dict d;
             d["pinned"] = u.pinned;
             d["device"] = u.device;
             d["grows"] = u.grows;
             return d;
           })
      .def("host_input", [](const runtime::Pipeline& p, const runtime::SlotView& v) {
             return host_view(p, v, true);
           }, py::arg("view"))
      .def("host_logits", [](const runtime::Pipeline& p, const runtime::SlotView& v) {
             return host_view(p, v, false);
           }, py::arg("view"))
      .def_property_readonly("slots", [](const runtime::Pipeline& p) { return p.config().slots; })
      .def_property_readonly("exact_alloc", &runtime::Pipeline::exact_alloc)
      .def_property_readonly("classes", [](const runtime::Pipeline& p) { return p.config().classes; })
      .def_property_readonly("device", [](const runtime::Pipeline& p) { return p.device().name(); })
      .def_property_readonly("input_dtype", [](const runtime::Pipeline& p) {
             return p.config().preprocess.dtype;
           })
      .def_property_readonly("logits_dtype", [](const runtime::Pipeline& p) {
             return p.config().logits_dtype;
           })
      .def_property_readonly("input_shape", [](const runtime::Pipeline& p) {
             const auto& o = p.config().preprocess;
             return py::make_tuple(o.channels, o.out_h, o.out_w);
           });

  m.def("topk_cpu", &topk_cpu, py::arg("logits"), py::arg("k"), py::arg("activation"));
  m.def("topk_check", &topk_check, py::arg("shape"), py::arg("dtype"), py::arg("k"),
        py::arg("activation"));
  m.def("topk_cuda", &topk_cuda, py::arg("logits"), py::arg("shape"), py::arg("dtype"),
        py::arg("k"), py::arg("activation"), py::arg("scores"), py::arg("indices"),
        py::arg("stream"));
}

// NumPy arrays and __cuda_array_interface__ objects -> shapes, dtype names and addresses.
#include "array_interface.h"

#include <algorithm>
#include <utility>

#include "common/check.h"

namespace medtrt::bindings {
namespace {

std::string type_name(const py::handle& obj) {
  return py::str(py::type::of(obj)).cast<std::string>();
}

// __cuda_array_interface__ typestr -> dtype name; "" for a type the pipeline does not take.
std::string cai_dtype(const std::string& typestr) {
  if (typestr == "|u1") return "uint8";
  if (typestr == "<u2") return "uint16";
  if (typestr == "<i2") return "int16";
  if (typestr == "<f4") return "float32";
  return {};
}

// Whether `strides` (bytes) describe a C-contiguous layout of `shape` (size-1 dims: any stride).
bool c_contiguous(const std::vector<std::int64_t>& shape, const std::vector<std::int64_t>& strides,
                  std::size_t itemsize) {
  if (strides.size() != shape.size()) return false;
  auto expect = static_cast<std::int64_t>(itemsize);
  for (std::size_t d = shape.size(); d-- > 0;) {
    if (shape[d] != 1 && strides[d] != expect) return false;
    expect *= shape[d];
  }
  return true;
}

// One device image of a resident batch (batch position `i`); its stream, if the interface
// names one, is appended to `streams`.
runtime::ImageRef device_image(const py::handle& item, std::size_t i,
                               std::vector<std::int64_t>& streams) {
  if (!py::hasattr(item, "__cuda_array_interface__"))
    throw py::type_error(detail::concat(
        "Pipeline: image ", i, " is a ", type_name(item),
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
    MEDTRT_CHECK(c_contiguous(shape, strides, itemsize), "Pipeline: image ", i,
                 " is not contiguous (strides ", py::str(cai["strides"]).cast<std::string>(),
                 "); pass .contiguous()");
  }
  const auto data = cai["data"].cast<py::tuple>();
  const auto address = data[0].cast<std::uintptr_t>();
  if (cai.contains("stream") && !cai["stream"].is_none())
    streams.push_back(cai["stream"].cast<std::int64_t>());
  return {reinterpret_cast<const void*>(address), bytes, ops::ImageShape{shape, dtype}};
}

}  // namespace

std::vector<std::int64_t> array_shape(const py::array& a) {
  return std::vector<std::int64_t>(a.shape(), a.shape() + a.ndim());
}

std::string dtype_name(const py::array& a) { return py::str(a.dtype()).cast<std::string>(); }

py::array contiguous_aligned(const py::handle& obj) {
  return py::array::ensure(obj, py::array::c_style | py::detail::npy_api::NPY_ARRAY_ALIGNED_);
}

py::array float32_array(const py::array& a, const char* what) {
  MEDTRT_CHECK(dtype_name(a) == "float32", "entropy: ", what, " must be float32; got ",
               dtype_name(a));
  MEDTRT_CHECK(a.flags() & py::array::c_style, "entropy: ", what, " must be C-contiguous");
  return contiguous_aligned(a);
}

NumpyImages numpy_images(const py::list& images) {
  NumpyImages out;
  out.arrays.reserve(images.size());
  for (std::size_t i = 0; i < images.size(); ++i) {
    py::array a = contiguous_aligned(images[i]);
    if (!a)
      throw py::type_error(detail::concat("resize_normalize: image ", i, " is a ",
                                          type_name(images[i]), "; expected a NumPy array"));
    out.shapes.push_back({array_shape(a), dtype_name(a)});
    out.arrays.push_back(std::move(a));
  }
  return out;
}

ImageBatch host_batch(const py::list& images) {
  ImageBatch b;
  for (std::size_t i = 0; i < images.size(); ++i) {
    if (!py::isinstance<py::array>(images[i]))
      throw py::type_error(detail::concat("Pipeline: image ", i, " is a ", type_name(images[i]),
                                          "; expected a NumPy array"));
    py::array a = contiguous_aligned(images[i]);  // contiguous and aligned, same dtype
    b.images.push_back({a.data(), static_cast<std::size_t>(a.nbytes()),
                        ops::ImageShape{array_shape(a), dtype_name(a)}});
    b.arrays.push_back(std::move(a));
  }
  return b;
}

ImageBatch device_batch(const py::list& images, const py::object& producer) {
  ImageBatch b;
  std::vector<std::int64_t> streams;
  for (std::size_t i = 0; i < images.size(); ++i)
    b.images.push_back(device_image(images[i], i, streams));
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

}  // namespace medtrt::bindings

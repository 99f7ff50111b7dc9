// Python arrays as the compiled core reads them: NumPy arrays (host memory) and objects with
// __cuda_array_interface__ (device memory: torch, CuPy, Numba). Only bindings.cpp uses this;
// everything past it takes plain pointers, shapes and dtype names.
#pragma once

#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>

#include <cstdint>
#include <string>
#include <vector>

#include "ops/resize_normalize.h"
#include "runtime/pipeline.h"

namespace medtrt::bindings {

namespace py = pybind11;

std::vector<std::int64_t> array_shape(const py::array& a);
std::string dtype_name(const py::array& a);

// A C-contiguous, aligned array of `obj` (a copy only when it is neither), never a dtype cast:
// the kernels read elements through typed pointers, which must be aligned to their size. Null
// when NumPy cannot make an array of `obj`.
py::array contiguous_aligned(const py::handle& obj);

// A float32, C-contiguous array as the histogram reads it (an aligned copy when misaligned);
// errors name `what` ("entropy: activation must be float32; got float64").
py::array float32_array(const py::array& a, const char* what);

// Images of resize_normalize_cpu: anything NumPy makes an array of (a copy only to make it
// contiguous and aligned, never a dtype cast; the validator decides which dtypes it accepts).
struct NumpyImages {
  std::vector<py::array> arrays;  // owns the pixels
  std::vector<ops::ImageShape> shapes;
};
NumpyImages numpy_images(const py::list& images);

// A pipeline batch: the images the pipeline reads and whatever keeps their memory alive.
struct ImageBatch {
  std::vector<py::array> arrays;  // host batches: the NumPy arrays (or their aligned copies)
  std::vector<runtime::ImageRef> images;
  // Resident batches: the stream the images were written on: from the call, else from the
  // __cuda_array_interface__ 'stream' entry (1 and 2 are the default streams), else the legacy
  // default stream (torch's default; torch's interface has no 'stream' entry).
  std::uintptr_t producer = 1;  // cudaStreamLegacy
};

// NumPy arrays only (anything else is a TypeError naming its batch position).
ImageBatch host_batch(const py::list& images);

// Images in device memory, described by __cuda_array_interface__ (contiguous; uint8, uint16,
// int16 or float32). The caller keeps the objects alive until wait(); only their addresses are
// taken here. `producer`: None or the stream handle (int) that wrote them.
ImageBatch device_batch(const py::list& images, const py::object& producer);

}  // namespace medtrt::bindings

# CUDA detection. Sets MEDTRT_WITH_CUDA to ON when a CUDA compiler is usable.
#
# Architectures: CMAKE_CUDA_ARCHITECTURES if given (-D or CMAKE_ARGS), else the environment
# variable MEDTRT_CUDA_ARCHITECTURES, else SASS for Turing, Ampere, Ada and Hopper plus PTX for
# Hopper so newer GPUs can JIT it.
set(MEDTRT_WITH_CUDA OFF)
if(NOT MEDTRT_ENABLE_CUDA)
  message(STATUS "medtrt: CUDA disabled (MEDTRT_ENABLE_CUDA=OFF); building the CPU-only core")
  return()
endif()

include(CheckLanguage)
check_language(CUDA)
if(NOT CMAKE_CUDA_COMPILER)
  message(STATUS "medtrt: no CUDA compiler found; building the CPU-only core")
  return()
endif()

if(NOT DEFINED CMAKE_CUDA_ARCHITECTURES OR CMAKE_CUDA_ARCHITECTURES STREQUAL "")
  if(DEFINED ENV{MEDTRT_CUDA_ARCHITECTURES} AND NOT "$ENV{MEDTRT_CUDA_ARCHITECTURES}" STREQUAL "")
    set(CMAKE_CUDA_ARCHITECTURES "$ENV{MEDTRT_CUDA_ARCHITECTURES}")
  else()
    set(CMAKE_CUDA_ARCHITECTURES "75-real;80-real;86-real;89-real;90")
  endif()
endif()
set(CMAKE_CUDA_STANDARD 17)
set(CMAKE_CUDA_STANDARD_REQUIRED ON)
enable_language(CUDA)
set(MEDTRT_WITH_CUDA ON)
message(STATUS "medtrt: CUDA ${CMAKE_CUDA_COMPILER_VERSION}, architectures ${CMAKE_CUDA_ARCHITECTURES}")

# Decides whether the CUDA backend is built. nvcc is looked for on PATH, in CUDA_HOME and in
# /usr/local/cuda/bin (where CMake itself does not look). CUDA 13 needs explicit architectures
# with CMake 3.25, so they are set before the language is enabled.
set(FLASHKV_CUDA_ENABLED OFF)
# The Hopper (sm_90a) attention kernels (on since they passed the GPU tests on an H100, see
# docs/performance.md, "sm90"); they are built when 90a is among
# CMAKE_CUDA_ARCHITECTURES and chosen at run time on compute capability 9.0.
option(FLASHKV_ENABLE_SM90 "Build the sm_90a (Hopper) attention kernels" ON)
# Paged prefill on the sm90 kernels (K/V tiles loaded by TMA page by page, for page sizes that
# are multiples of 64). On since it passed the GPU tests, racecheck and memcheck on an H100 and ran
# 2x faster than sm80's paged path (docs/performance.md, "sm90 paged prefill").
option(FLASHKV_ENABLE_SM90_PAGED "Build the sm_90a paged attention kernels" ON)
if(NOT FLASHKV_WITH_CUDA STREQUAL "OFF")
  if(NOT CMAKE_CUDA_COMPILER AND NOT DEFINED ENV{CUDACXX})
    find_program(FLASHKV_NVCC nvcc HINTS ENV CUDA_HOME PATH_SUFFIXES bin
                 PATHS /usr/local/cuda/bin)
    if(FLASHKV_NVCC)
      set(CMAKE_CUDA_COMPILER "${FLASHKV_NVCC}" CACHE FILEPATH "CUDA compiler")
    endif()
  endif()
  if(CMAKE_CUDA_COMPILER OR DEFINED ENV{CUDACXX})
    if(NOT DEFINED CMAKE_CUDA_ARCHITECTURES OR CMAKE_CUDA_ARCHITECTURES STREQUAL "")
      set(CMAKE_CUDA_ARCHITECTURES "80;90a" CACHE STRING "CUDA architectures" FORCE)
    endif()
    set(CMAKE_CUDA_RUNTIME_LIBRARY Shared)
    set(CMAKE_CUDA_STANDARD 17)
    set(CMAKE_CUDA_STANDARD_REQUIRED ON)
    enable_language(CUDA)
    find_package(CUDAToolkit REQUIRED)
    set(FLASHKV_CUDA_ENABLED ON)
  elseif(FLASHKV_WITH_CUDA STREQUAL "ON")
    message(FATAL_ERROR "FLASHKV_WITH_CUDA=ON but nvcc was not found (PATH, CUDA_HOME, "
                        "/usr/local/cuda/bin); set CMAKE_CUDA_COMPILER")
  endif()
endif()

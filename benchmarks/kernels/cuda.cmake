# CUDA kernel benchmarks (included from benchmarks/CMakeLists.txt when FLASHKV_CUDA_ENABLED).
# side_by_side.py (beside this file) drives libflashkv_capi.so against PyTorch SDPA.
add_executable(cuda_attention_benchmark ${CMAKE_CURRENT_LIST_DIR}/cuda_attention_benchmark.cc)
target_link_libraries(cuda_attention_benchmark PRIVATE flashkv_kernels CUDA::cudart)
# kernel_path.h (internal): the tables name the kernel each call takes.
target_include_directories(cuda_attention_benchmark PRIVATE ${PROJECT_SOURCE_DIR}/kernels/cuda)

# FLASHKV_SANITIZE=address builds everything with ASan+UBSan, =thread with TSan (the asan and tsan
# presets set it). Host code only: nvcc-compiled device code is not instrumented.
#
# FLASHKV_FUZZ=ON (clang only, with FLASHKV_SANITIZE=address) also instruments everything for
# libFuzzer's coverage feedback and builds the fuzz targets of tests/fuzz as libFuzzer programs
# (docs/reliability.md#fuzzing); off, the targets are built as replayers of their corpus.
set(FLASHKV_SANITIZE "" CACHE STRING "Sanitizer build: empty, address (ASan+UBSan) or thread")
option(FLASHKV_FUZZ "Build tests/fuzz as libFuzzer targets (needs clang and FLASHKV_SANITIZE=address)"
       OFF)
# What a program linking flashkv's libraries from this build must link with too (the install
# test's consumer): the sanitizer runtimes.
set(FLASHKV_SANITIZER_LINK_FLAGS "")
if(FLASHKV_SANITIZE STREQUAL "address")
  set(FLASHKV_SANITIZER_LINK_FLAGS "-fsanitize=address,undefined")
  add_compile_options($<$<COMPILE_LANGUAGE:CXX>:-fsanitize=address,undefined>
                      $<$<COMPILE_LANGUAGE:CXX>:-fno-omit-frame-pointer>
                      $<$<COMPILE_LANGUAGE:CXX>:-fno-sanitize-recover=undefined>)
  add_link_options(-fsanitize=address,undefined)
elseif(FLASHKV_SANITIZE STREQUAL "thread")
  set(FLASHKV_SANITIZER_LINK_FLAGS "-fsanitize=thread")
  add_compile_options($<$<COMPILE_LANGUAGE:CXX>:-fsanitize=thread>)
  add_link_options(-fsanitize=thread)
elseif(NOT FLASHKV_SANITIZE STREQUAL "")
  message(FATAL_ERROR "FLASHKV_SANITIZE must be empty, address or thread")
endif()

if(FLASHKV_FUZZ)
  if(NOT CMAKE_CXX_COMPILER_ID STREQUAL "Clang")
    message(FATAL_ERROR "FLASHKV_FUZZ needs clang (libFuzzer): configure with "
                        "-DCMAKE_CXX_COMPILER=clang++ or the asan preset")
  endif()
  if(NOT FLASHKV_SANITIZE STREQUAL "address")
    message(FATAL_ERROR "FLASHKV_FUZZ needs FLASHKV_SANITIZE=address (ASan+UBSan)")
  endif()
  if(FLASHKV_CUDA_ENABLED)
    message(FATAL_ERROR "FLASHKV_FUZZ needs FLASHKV_WITH_CUDA=OFF (nvcc does not take clang's "
                        "fuzzer instrumentation)")
  endif()
  # Coverage instrumentation everywhere; the fuzz targets alone link libFuzzer's main.
  add_compile_options($<$<COMPILE_LANGUAGE:CXX>:-fsanitize=fuzzer-no-link>)
endif()

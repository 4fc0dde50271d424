# FLASHKV_SANITIZE=address builds everything with ASan+UBSan, =thread with TSan (the asan and tsan
# presets set it). Host code only: nvcc-compiled device code is not instrumented.
set(FLASHKV_SANITIZE "" CACHE STRING "Sanitizer build: empty, address (ASan+UBSan) or thread")
if(FLASHKV_SANITIZE STREQUAL "address")
  add_compile_options($<$<COMPILE_LANGUAGE:CXX>:-fsanitize=address,undefined>
                      $<$<COMPILE_LANGUAGE:CXX>:-fno-omit-frame-pointer>
                      $<$<COMPILE_LANGUAGE:CXX>:-fno-sanitize-recover=undefined>)
  add_link_options(-fsanitize=address,undefined)
elseif(FLASHKV_SANITIZE STREQUAL "thread")
  add_compile_options($<$<COMPILE_LANGUAGE:CXX>:-fsanitize=thread>)
  add_link_options(-fsanitize=thread)
elseif(NOT FLASHKV_SANITIZE STREQUAL "")
  message(FATAL_ERROR "FLASHKV_SANITIZE must be empty, address or thread")
endif()

# Installs the client component of the build tree into a scratch prefix, then configures and builds
# client/examples/find_package against it with find_package(flashkv), and runs the result against
# an unreachable target (it must fail cleanly with exit code 1, having linked and started).
#   cmake -DBUILD_DIR=... -DSOURCE_DIR=... -DWORK_DIR=... [-DCXX_COMPILER=...] [-DLINK_FLAGS=...]
#         -P install_test.cmake
# CXX_COMPILER and LINK_FLAGS: the build's compiler and, in sanitizer builds, the runtimes that
# its instrumented libraries need.
file(REMOVE_RECURSE "${WORK_DIR}")
function(run)
  execute_process(COMMAND ${ARGV} RESULT_VARIABLE rc OUTPUT_VARIABLE out ERROR_VARIABLE out)
  if(NOT rc EQUAL 0)
    message(FATAL_ERROR "failed (${rc}): ${ARGV}\n${out}")
  endif()
endfunction()
run("${CMAKE_COMMAND}" --install "${BUILD_DIR}" --prefix "${WORK_DIR}/prefix" --component client)
run("${CMAKE_COMMAND}" -S "${SOURCE_DIR}/client/examples/find_package" -B "${WORK_DIR}/build"
    -G Ninja -DCMAKE_BUILD_TYPE=Release "-DCMAKE_PREFIX_PATH=${WORK_DIR}/prefix"
    "-DCMAKE_CXX_COMPILER=${CXX_COMPILER}" "-DCMAKE_EXE_LINKER_FLAGS=${LINK_FLAGS}")
run("${CMAKE_COMMAND}" --build "${WORK_DIR}/build")
execute_process(COMMAND "${WORK_DIR}/build/flashkv_hello" --target 127.0.0.1:1
                RESULT_VARIABLE rc OUTPUT_VARIABLE out ERROR_VARIABLE err TIMEOUT 60)
if(NOT rc EQUAL 1 OR NOT err MATCHES "UNAVAILABLE")
  message(FATAL_ERROR "flashkv_hello: expected exit 1 with UNAVAILABLE, got ${rc}: ${out}${err}")
endif()
file(REMOVE_RECURSE "${WORK_DIR}")

# Development stand-in for flashkv::proto until proto/CMakeLists.txt lands on main: the same
# messages and stubs (flashkv.v1 and grpc.health.v1), generated the same way. Removed once the
# real target exists.
find_program(_flashkv_protoc protoc REQUIRED)
get_target_property(_flashkv_grpc_plugin gRPC::grpc_cpp_plugin LOCATION)
set(_gen "${CMAKE_CURRENT_BINARY_DIR}/dev_proto")
set(_outs)
foreach(entry
    "${PROJECT_SOURCE_DIR}/proto|flashkv/v1/tensor"
    "${PROJECT_SOURCE_DIR}/proto|flashkv/v1/attention"
    "${PROJECT_SOURCE_DIR}/proto|flashkv/v1/kvcache"
    "/usr/share/grpc-proto|grpc/health/v1/health")
  string(REPLACE "|" ";" parts "${entry}")
  list(GET parts 0 root)
  list(GET parts 1 stem)
  set(outs "${_gen}/${stem}.pb.cc" "${_gen}/${stem}.pb.h" "${_gen}/${stem}.grpc.pb.cc"
           "${_gen}/${stem}.grpc.pb.h")
  add_custom_command(OUTPUT ${outs}
    COMMAND "${CMAKE_COMMAND}" -E make_directory "${_gen}"
    COMMAND "${_flashkv_protoc}" "-I${PROJECT_SOURCE_DIR}/proto" "-I${root}" "--cpp_out=${_gen}"
            "--grpc_out=${_gen}" "--plugin=protoc-gen-grpc=${_flashkv_grpc_plugin}"
            "${root}/${stem}.proto"
    DEPENDS "${root}/${stem}.proto" VERBATIM)
  list(APPEND _outs ${outs})
endforeach()
add_library(flashkv_proto STATIC ${_outs})
add_library(flashkv::proto ALIAS flashkv_proto)
target_include_directories(flashkv_proto PUBLIC $<BUILD_INTERFACE:${_gen}>
                                                $<INSTALL_INTERFACE:include>)
target_link_libraries(flashkv_proto PUBLIC protobuf::libprotobuf gRPC::grpc++)

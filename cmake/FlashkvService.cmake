# Decides whether the service parts (kvcache, proto, server, client) are built: they need gRPC,
# Protobuf, abseil and spdlog (Debian 12 packages; scripts/setup.sh installs them). The GPU
# machine has none of these, so there the kernels build alone.
set(FLASHKV_SERVICE_ENABLED OFF)
if(NOT FLASHKV_WITH_SERVICE STREQUAL "OFF")
  if(FLASHKV_WITH_SERVICE STREQUAL "ON")
    set(_flashkv_required REQUIRED)
  endif()
  find_package(Protobuf ${_flashkv_required})
  find_package(gRPC CONFIG ${_flashkv_required})
  find_package(absl CONFIG ${_flashkv_required})
  find_package(spdlog CONFIG ${_flashkv_required})
  if(Protobuf_FOUND AND gRPC_FOUND AND absl_FOUND AND spdlog_FOUND)
    set(FLASHKV_SERVICE_ENABLED ON)
  else()
    message(STATUS "flashkv: service parts off (gRPC, Protobuf, abseil or spdlog not found)")
  endif()
endif()

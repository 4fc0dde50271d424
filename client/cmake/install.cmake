# Installs what another CMake project needs to use the client: the libraries flashkv::client,
# flashkv::proto and flashkv::kernels (one export set, namespace flashkv::), their public headers,
# a package config for find_package(flashkv), and the flashkv / flashkv-loadgen tools.
#
#   cmake --install build --prefix /opt/flashkv
#   # elsewhere: find_package(flashkv CONFIG REQUIRED) ... target_link_libraries(app flashkv::client)
include(GNUInstallDirs)
include(CMakePackageConfigHelpers)

set(FLASHKV_INSTALL_CMAKEDIR "${CMAKE_INSTALL_LIBDIR}/cmake/flashkv")

# A target's public headers are whatever directories its BUILD_INTERFACE include paths name
# (source include/ trees and generated-code directories alike); they install under include/,
# which is every target's INSTALL_INTERFACE include path.
function(flashkv_install_public_headers target)
  get_target_property(dirs ${target} INTERFACE_INCLUDE_DIRECTORIES)
  foreach(entry IN LISTS dirs)
    if(entry MATCHES "^\\$<BUILD_INTERFACE:(.+)>$")
      install(DIRECTORY "${CMAKE_MATCH_1}/" DESTINATION "${CMAKE_INSTALL_INCLUDEDIR}"
              COMPONENT client FILES_MATCHING PATTERN "*.h" PATTERN "*.hpp" PATTERN "*.inc")
    endif()
  endforeach()
endfunction()

set_target_properties(flashkv_kernels PROPERTIES EXPORT_NAME kernels)
set_target_properties(flashkv_proto PROPERTIES EXPORT_NAME proto)
install(TARGETS flashkv_client flashkv_proto flashkv_kernels
        EXPORT flashkvTargets
        ARCHIVE DESTINATION "${CMAKE_INSTALL_LIBDIR}" COMPONENT client
        LIBRARY DESTINATION "${CMAKE_INSTALL_LIBDIR}" COMPONENT client
        INCLUDES DESTINATION "${CMAKE_INSTALL_INCLUDEDIR}")
foreach(target flashkv_client flashkv_proto flashkv_kernels)
  flashkv_install_public_headers(${target})
endforeach()
install(EXPORT flashkvTargets NAMESPACE flashkv:: DESTINATION "${FLASHKV_INSTALL_CMAKEDIR}"
        COMPONENT client)

set(FLASHKV_CONFIG_WITH_CUDA ${FLASHKV_CUDA_ENABLED})
configure_package_config_file(cmake/flashkvConfig.cmake.in
  "${CMAKE_CURRENT_BINARY_DIR}/flashkvConfig.cmake"
  INSTALL_DESTINATION "${FLASHKV_INSTALL_CMAKEDIR}")
write_basic_package_version_file("${CMAKE_CURRENT_BINARY_DIR}/flashkvConfigVersion.cmake"
  VERSION ${PROJECT_VERSION} COMPATIBILITY SameMinorVersion)
install(FILES "${CMAKE_CURRENT_BINARY_DIR}/flashkvConfig.cmake"
              "${CMAKE_CURRENT_BINARY_DIR}/flashkvConfigVersion.cmake"
        DESTINATION "${FLASHKV_INSTALL_CMAKEDIR}" COMPONENT client)

install(TARGETS flashkv_cli flashkv_loadgen RUNTIME DESTINATION "${CMAKE_INSTALL_BINDIR}"
        COMPONENT tools)

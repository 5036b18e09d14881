# The install and consumer tests, run by ctest as `cmake -D... -P consumer_test.cmake`.
#
#   MODE=install       cmake --install BUILD_DIR --prefix STAGE (a fresh STAGE)
#   MODE=cmake         find_package(asock) from STAGE, link asock::asock, run
#   MODE=cmake-static  the same with asock::asock_static, run without the stage
#   MODE=pkg-config    cc main.c $(pkg-config --cflags --libs asock), run
#
# Inputs: MODE BUILD_DIR STAGE WORK_DIR SOURCE_DIR (the repository)
#         GENERATOR MAKE_PROGRAM C_COMPILER CONFIG LIBDIR PKG_CONFIG READELF
cmake_minimum_required(VERSION 3.16)

foreach(_var MODE BUILD_DIR STAGE SOURCE_DIR)
  if(NOT DEFINED ${_var} OR "${${_var}}" STREQUAL "")
    message(FATAL_ERROR "consumer_test.cmake: -D${_var}=... is required")
  endif()
endforeach()
if(NOT CONFIG)
  set(CONFIG Release)
endif()
if(NOT LIBDIR)
  set(LIBDIR lib)
endif()

# Runs a command, echoing it; fails the test with its output on error.
function(run)
  string(REPLACE ";" " " _shown "${ARGN}")
  message(STATUS "+ ${_shown}")
  execute_process(COMMAND ${ARGN} RESULT_VARIABLE _rc)
  if(NOT _rc EQUAL 0)
    message(FATAL_ERROR "command failed (${_rc}): ${_shown}")
  endif()
endfunction()

function(check_stage)
  foreach(_f "${STAGE}/${LIBDIR}/cmake/asock/asockConfig.cmake" "${STAGE}/include/asock.h")
    if(NOT EXISTS "${_f}")
      message(FATAL_ERROR "${_f} is missing: the install test (consumer.install) must run first")
    endif()
  endforeach()
endfunction()

if(MODE STREQUAL "install")
  file(REMOVE_RECURSE "${STAGE}")
  run("${CMAKE_COMMAND}" --install "${BUILD_DIR}" --prefix "${STAGE}" --config "${CONFIG}")
  set(_lib "${STAGE}/${LIBDIR}")
  foreach(_f
      "${_lib}/libasock.so.${VERSION}" "${_lib}/libasock.so.${VERSION_MAJOR}" "${_lib}/libasock.so"
      "${_lib}/libasock.a" "${STAGE}/include/asock.h"
      "${_lib}/cmake/asock/asockConfig.cmake" "${_lib}/cmake/asock/asockConfigVersion.cmake"
      "${_lib}/pkgconfig/asock.pc")
    if(NOT EXISTS "${_f}")
      message(FATAL_ERROR "not installed: ${_f}")
    endif()
  endforeach()
  # The two development names are links, as a distribution would ship them.
  foreach(_link "libasock.so.${VERSION_MAJOR}" "libasock.so")
    if(NOT IS_SYMLINK "${_lib}/${_link}")
      message(FATAL_ERROR "${_lib}/${_link} should be a symbolic link")
    endif()
  endforeach()
  file(READ "${_lib}/pkgconfig/asock.pc" _pc)
  if(NOT _pc MATCHES "prefix=${STAGE}\n")
    message(FATAL_ERROR "asock.pc does not name the install prefix ${STAGE}:\n${_pc}")
  endif()
  message(STATUS "installed to ${STAGE}")

elseif(MODE STREQUAL "cmake" OR MODE STREQUAL "cmake-static")
  check_stage()
  if(MODE STREQUAL "cmake-static")
    set(_static ON)
  else()
    set(_static OFF)
  endif()
  file(REMOVE_RECURSE "${WORK_DIR}")
  set(_gen_args)
  if(GENERATOR)
    list(APPEND _gen_args -G "${GENERATOR}")
  endif()
  if(MAKE_PROGRAM)
    list(APPEND _gen_args "-DCMAKE_MAKE_PROGRAM=${MAKE_PROGRAM}")
  endif()
  if(C_COMPILER)
    list(APPEND _gen_args "-DCMAKE_C_COMPILER=${C_COMPILER}")
  endif()
  run("${CMAKE_COMMAND}" -S "${SOURCE_DIR}/cmake/consumer" -B "${WORK_DIR}" ${_gen_args}
      "-DCMAKE_BUILD_TYPE=${CONFIG}" "-DCMAKE_PREFIX_PATH=${STAGE}"
      "-DASOCK_CONSUMER_STATIC=${_static}")
  run("${CMAKE_COMMAND}" --build "${WORK_DIR}" --config "${CONFIG}")
  set(_exe "${WORK_DIR}/consumer")
  if(NOT EXISTS "${_exe}")
    set(_exe "${WORK_DIR}/${CONFIG}/consumer")
  endif()
  if(_static)
    # Statically linked: it must not need libasock.so at all.
    if(READELF)
      execute_process(COMMAND "${READELF}" -d "${_exe}" OUTPUT_VARIABLE _dyn RESULT_VARIABLE _rc)
      if(NOT _rc EQUAL 0)
        message(FATAL_ERROR "${READELF} -d ${_exe} failed")
      endif()
      if(_dyn MATCHES "libasock")
        message(FATAL_ERROR "the static consumer still needs libasock:\n${_dyn}")
      endif()
    endif()
    run("${CMAKE_COMMAND}" -E env --unset=LD_LIBRARY_PATH "${_exe}")
  else()
    # Found through the RUNPATH CMake gives build trees.
    run("${CMAKE_COMMAND}" -E env --unset=LD_LIBRARY_PATH "${_exe}")
  endif()

elseif(MODE STREQUAL "pkg-config")
  check_stage()
  if(NOT PKG_CONFIG)
    message(FATAL_ERROR "pkg-config (or pkgconf) was not found when configuring")
  endif()
  if(NOT C_COMPILER)
    set(C_COMPILER cc)
  endif()
  file(REMOVE_RECURSE "${WORK_DIR}")
  file(MAKE_DIRECTORY "${WORK_DIR}")
  set(ENV{PKG_CONFIG_PATH} "${STAGE}/${LIBDIR}/pkgconfig")
  unset(ENV{PKG_CONFIG_LIBDIR})
  execute_process(COMMAND "${PKG_CONFIG}" --cflags --libs asock
                  OUTPUT_VARIABLE _flags OUTPUT_STRIP_TRAILING_WHITESPACE RESULT_VARIABLE _rc)
  if(NOT _rc EQUAL 0)
    message(FATAL_ERROR "pkg-config --cflags --libs asock failed (PKG_CONFIG_PATH=$ENV{PKG_CONFIG_PATH})")
  endif()
  execute_process(COMMAND "${PKG_CONFIG}" --modversion asock
                  OUTPUT_VARIABLE _version OUTPUT_STRIP_TRAILING_WHITESPACE RESULT_VARIABLE _rc)
  if(NOT _rc EQUAL 0 OR NOT _version STREQUAL VERSION)
    message(FATAL_ERROR "pkg-config --modversion asock gave '${_version}', want '${VERSION}'")
  endif()
  message(STATUS "pkg-config --cflags --libs asock: ${_flags}")
  separate_arguments(_flags UNIX_COMMAND "${_flags}")
  run("${C_COMPILER}" -std=c11 -Wall -Wextra -Werror -pedantic
      "-DASOCK_EXPECTED_VERSION=\"${_version}\""
      "${SOURCE_DIR}/cmake/consumer/main.c" -o "${WORK_DIR}/consumer" ${_flags})
  run("${CMAKE_COMMAND}" -E env "LD_LIBRARY_PATH=${STAGE}/${LIBDIR}" "${WORK_DIR}/consumer")

else()
  message(FATAL_ERROR "consumer_test.cmake: unknown MODE '${MODE}'")
endif()

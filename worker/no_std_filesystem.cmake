# cmake -DROOT=<worker dir> -P no_std_filesystem.cmake
# Fails when a source compiled into a LibTorch-linked binary uses std::filesystem (see
# proto/common/gptq/posix_fs.h for why). Test files are exempt: none of the tests that use it
# links Torch.
file(GLOB_RECURSE sources "${ROOT}/*.cc" "${ROOT}/*.h")
set(offenders "")
foreach(f ${sources})
  if(f MATCHES "_test\\.cc$")
    continue()
  endif()
  file(STRINGS "${f}" hits REGEX "std::filesystem|#include <filesystem>")
  if(hits)
    list(APPEND offenders "${f}")
  endif()
endforeach()
if(offenders)
  string(REPLACE ";" "\n  " list "${offenders}")
  message(FATAL_ERROR "std::filesystem in worker sources (use gptq/posix_fs.h):\n  ${list}")
endif()
list(LENGTH sources n)
message(STATUS "no std::filesystem in ${n} worker sources")

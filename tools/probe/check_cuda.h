// The probes' checks of a library call: on a status other than `ok`, where and what
// (`describe(status)`), then exit.
#pragma once

#include <cuda_runtime.h>

#include <cstdio>
#include <cstdlib>

#define CHECK_STATUS(x, ok, describe)                                       \
  do {                                                                      \
    const auto s_ = (x);                                                    \
    if (s_ != (ok)) {                                                       \
      std::fprintf(stderr, "%s:%d %s\n", __FILE__, __LINE__, describe(s_)); \
      std::exit(1);                                                         \
    }                                                                       \
  } while (0)

#define CHECK_CUDA(x) CHECK_STATUS(x, cudaSuccess, cudaGetErrorString)

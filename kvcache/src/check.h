#pragma once

// Broken invariants crash loudly: these are programming errors inside kvcache (or a LayerBatch
// handed to the wrong cache), never reachable through bad input, which is answered with a status.

#include <cstdio>
#include <cstdlib>

#define FLASHKV_CHECK(cond)                                                                 \
  do {                                                                                      \
    if (!(cond)) {                                                                          \
      std::fprintf(stderr, "%s:%d: flashkv kvcache invariant failed: %s\n", __FILE__, __LINE__, \
                   #cond);                                                                  \
      std::abort();                                                                         \
    }                                                                                       \
  } while (0)

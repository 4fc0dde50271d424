#pragma once

// FUZZ_CHECK(cond) << "context": a property of the code under test that must hold for every
// input. On failure it prints the condition, the place and the context, then aborts, which
// libFuzzer reports as a crash (and saves the input), and the corpus replay test as a failure.

#include <cstdlib>
#include <iostream>
#include <sstream>

namespace flashkv::fuzz {

class CheckFailure {
 public:
  CheckFailure(const char* condition, const char* file, int line) {
    stream_ << file << ":" << line << ": FUZZ_CHECK(" << condition << ") failed: ";
  }
  ~CheckFailure() {
    std::cerr << stream_.str() << std::endl;
    std::abort();
  }
  std::ostream& stream() { return stream_; }

 private:
  std::ostringstream stream_;
};

// Turns the streamed expression into void, so that FUZZ_CHECK is one expression (safe inside an
// unbraced if/else); `&` binds looser than `<<`, so every `<<` applies first.
struct Voidify {
  void operator&(std::ostream&) {}
};

}  // namespace flashkv::fuzz

#define FUZZ_CHECK(condition)      \
  (condition) ? static_cast<void>(0) \
              : ::flashkv::fuzz::Voidify() &  \
                    ::flashkv::fuzz::CheckFailure(#condition, __FILE__, __LINE__).stream()

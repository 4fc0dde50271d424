#include "testing/temp_dir.h"

#include <stdlib.h>

#include <filesystem>
#include <system_error>

namespace flashkv::testing {

TempDir::TempDir(const std::string& name) {
  const char* tmp = getenv("TMPDIR");
  std::string pattern =
      std::string(tmp != nullptr && *tmp != '\0' ? tmp : "/tmp") + "/" + name + ".XXXXXX";
  if (mkdtemp(pattern.data()) != nullptr) path_ = pattern;
}

TempDir::~TempDir() {
  if (path_.empty()) return;
  std::error_code ignored;
  std::filesystem::remove_all(path_, ignored);
}

}  // namespace flashkv::testing

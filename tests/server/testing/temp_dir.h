#pragma once

// A fresh directory under TMPDIR (or /tmp) for files a test writes (token files, certificates),
// removed with everything in it when the object is destroyed.

#include <string>

namespace flashkv::testing {

class TempDir {
 public:
  // `name` prefixes the directory's name; path() is empty when it could not be made.
  explicit TempDir(const std::string& name);
  ~TempDir();
  TempDir(const TempDir&) = delete;
  TempDir& operator=(const TempDir&) = delete;

  const std::string& path() const { return path_; }
  // path() + "/" + file.
  std::string File(const std::string& file) const { return path_ + "/" + file; }

 private:
  std::string path_;
};

}  // namespace flashkv::testing

#include "testing/certificates.h"

#include <cstdio>
#include <fstream>
#include <sstream>

#include "absl/strings/str_cat.h"

namespace flashkv::testing {
namespace {

// Runs a shell command; its output goes into the error when it fails.
absl::Status Run(const std::string& command) {
  const std::string full = command + " 2>&1";
  FILE* pipe = popen(full.c_str(), "r");
  if (pipe == nullptr) return absl::InternalError("popen failed: " + command);
  std::string output;
  char buffer[512];
  while (fgets(buffer, sizeof buffer, pipe) != nullptr) output += buffer;
  const int status = pclose(pipe);
  if (status != 0) {
    return absl::InternalError(absl::StrCat("`", command, "` failed (", status, "): ", output));
  }
  return absl::OkStatus();
}

absl::Status MakeCa(const std::string& dir, const std::string& name) {
  return Run(absl::StrCat("cd '", dir, "' && openssl req -x509 -newkey ec -pkeyopt ",
                          "ec_paramgen_curve:prime256v1 -nodes -days 2 -keyout ", name,
                          ".key -out ", name, ".pem -subj '/CN=flashkv test ", name, "'"));
}

// A key and a certificate for `cn`, signed by CA `ca`, with `extensions` (an x509v3 line).
absl::Status MakeLeaf(const std::string& dir, const std::string& name, const std::string& ca,
                      const std::string& cn, const std::string& extensions) {
  // printf interprets the "\\n" between extension lines (the lines hold no '%').
  if (auto s = Run(absl::StrCat("cd '", dir, "' && printf '", extensions, "\\n' > ", name, ".ext"));
      !s.ok()) {
    return s;
  }
  return Run(absl::StrCat(
      "cd '", dir, "' && openssl req -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes ",
      "-keyout ", name, ".key -out ", name, ".csr -subj '/CN=", cn, "' && openssl x509 -req -in ",
      name, ".csr -CA ", ca, ".pem -CAkey ", ca, ".key -CAcreateserial -days 2 -out ", name,
      ".pem -extfile ", name, ".ext"));
}

}  // namespace

absl::StatusOr<TestCertificates> MakeTestCertificates() {
  TestCertificates c;
  c.owner = std::make_shared<TempDir>("flashkv-tls");
  if (c.owner->path().empty()) return absl::InternalError("mkdtemp failed");
  c.dir = c.owner->path();
  if (auto s = MakeCa(c.dir, "ca"); !s.ok()) return s;
  if (auto s = MakeCa(c.dir, "other-ca"); !s.ok()) return s;
  if (auto s = MakeLeaf(c.dir, "server", "ca", "localhost",
                        "subjectAltName=DNS:localhost,IP:127.0.0.1\\nextendedKeyUsage=serverAuth");
      !s.ok()) {
    return s;
  }
  if (auto s =
          MakeLeaf(c.dir, "client", "ca", "flashkv test client", "extendedKeyUsage=clientAuth");
      !s.ok()) {
    return s;
  }
  if (auto s = MakeLeaf(c.dir, "stranger", "other-ca", "stranger", "extendedKeyUsage=clientAuth");
      !s.ok()) {
    return s;
  }
  c.ca = c.dir + "/ca.pem";
  c.server_cert = c.dir + "/server.pem";
  c.server_key = c.dir + "/server.key";
  c.client_cert = c.dir + "/client.pem";
  c.client_key = c.dir + "/client.key";
  c.stranger_cert = c.dir + "/stranger.pem";
  c.stranger_key = c.dir + "/stranger.key";
  return c;
}

std::string ReadTextFile(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  std::ostringstream out;
  out << in.rdbuf();
  return out.str();
}

}  // namespace flashkv::testing

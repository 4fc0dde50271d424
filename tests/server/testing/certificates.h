#pragma once

// Certificates made at test time with the openssl CLI (scripts/setup.sh installs it): a test CA,
// a server certificate for localhost / 127.0.0.1 and a client certificate signed by it, and a
// client certificate signed by a second CA the server does not trust. Short-lived (2 days),
// EC P-256 keys, so making them takes milliseconds.

#include <memory>
#include <string>

#include "absl/status/statusor.h"
#include "testing/temp_dir.h"

namespace flashkv::testing {

struct TestCertificates {
  std::shared_ptr<TempDir> owner;  // removes the directory with the last copy
  std::string dir;
  std::string ca;  // PEM of the CA that signs server.pem and client.pem
  std::string server_cert, server_key;
  std::string client_cert, client_key;
  std::string stranger_cert, stranger_key;  // signed by another CA
};

// Makes them in a fresh directory (under TMPDIR). INTERNAL with openssl's output when a command
// fails.
absl::StatusOr<TestCertificates> MakeTestCertificates();

// Reads a whole file; empty when it cannot be read.
std::string ReadTextFile(const std::string& path);

}  // namespace flashkv::testing

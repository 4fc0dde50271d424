#pragma once

#include <string>

#include "absl/status/statusor.h"

namespace flashkv::testing {

// GET http://<host:port><path> over a plain socket (HTTP/1.0, so the server closes when done);
// returns the body. Enough for reading a Prometheus endpoint in tests. Gives up (an error, never
// a hang) when the server sends nothing for 10 s.
absl::StatusOr<std::string> HttpGet(const std::string& host_port, const std::string& path);

}  // namespace flashkv::testing

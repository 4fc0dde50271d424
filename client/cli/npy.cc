#include "npy.h"

#include <cstring>
#include <fstream>
#include <sstream>

#include "absl/strings/ascii.h"
#include "absl/strings/match.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "absl/strings/strip.h"

namespace flashkv::cli {
namespace {

constexpr char kMagic[] = "\x93NUMPY";

absl::StatusOr<std::string> Slurp(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) return absl::InvalidArgumentError(absl::StrCat("cannot read '", path, "'"));
  std::ostringstream contents;
  contents << in.rdbuf();
  return contents.str();
}

// The value of `key` in the header dict, e.g. 'descr': '<f2' -> "'<f2'".
absl::StatusOr<std::string> HeaderValue(const std::string& header, const std::string& key,
                                        const std::string& path) {
  const std::string quoted = "'" + key + "'";
  size_t at = header.find(quoted);
  if (at == std::string::npos) {
    return absl::InvalidArgumentError(absl::StrCat(path, ": .npy header lacks ", quoted));
  }
  at = header.find(':', at) + 1;
  size_t end = header[header.find_first_not_of(' ', at)] == '(' ? header.find(')', at) + 1
                                                                : header.find_first_of(",}", at);
  return std::string(absl::StripAsciiWhitespace(header.substr(at, end - at)));
}

absl::StatusOr<HostTensor> ParseNpy(const std::string& path, std::string bytes, DType dtype) {
  if (bytes.size() < 10 || bytes.compare(0, 6, kMagic, 6) != 0) {
    return absl::InvalidArgumentError(absl::StrCat(path, ": not a .npy file"));
  }
  const int major = static_cast<unsigned char>(bytes[6]);
  size_t header_len, header_at;
  if (major == 1) {
    header_len = static_cast<unsigned char>(bytes[8]) | static_cast<unsigned char>(bytes[9]) << 8;
    header_at = 10;
  } else {
    if (bytes.size() < 12) return absl::InvalidArgumentError(absl::StrCat(path, ": truncated"));
    uint32_t len;
    std::memcpy(&len, bytes.data() + 8, 4);
    header_len = len;
    header_at = 12;
  }
  if (header_at + header_len > bytes.size()) {
    return absl::InvalidArgumentError(absl::StrCat(path, ": truncated .npy header"));
  }
  const std::string header = bytes.substr(header_at, header_len);
  absl::StatusOr<std::string> descr = HeaderValue(header, "descr", path);
  absl::StatusOr<std::string> fortran = HeaderValue(header, "fortran_order", path);
  absl::StatusOr<std::string> shape_text = HeaderValue(header, "shape", path);
  for (const auto* s : {&descr, &fortran, &shape_text}) {
    if (!s->ok()) return s->status();
  }
  if (*fortran != "False") {
    return absl::InvalidArgumentError(
        absl::StrCat(path, ": Fortran-order arrays are not supported"));
  }
  DType file_dtype;
  if (*descr == "'<f2'") {
    file_dtype = DType::kFloat16;
  } else if (*descr == "'<f4'") {
    file_dtype = DType::kFloat32;
  } else if (dtype == DType::kBFloat16 &&
             (*descr == "'<u2'" || *descr == "'<i2'" || *descr == "'|V2'" || *descr == "'<V2'")) {
    file_dtype = DType::kBFloat16;
  } else {
    return absl::InvalidArgumentError(absl::StrCat(path, ": .npy dtype ", *descr,
                                                   " is not float16, float32 or (with --dtype "
                                                   "bf16) a 2-byte type"));
  }
  if (file_dtype != dtype) {
    return absl::InvalidArgumentError(
        absl::StrCat(path, " holds ", DTypeName(file_dtype), " but --dtype is ", DTypeName(dtype)));
  }
  Shape shape;
  const std::string inner(absl::StripSuffix(absl::StripPrefix(*shape_text, "("), ")"));
  for (absl::string_view part : absl::StrSplit(inner, ',', absl::SkipWhitespace())) {
    int64_t d;
    if (!absl::SimpleAtoi(absl::StripAsciiWhitespace(part), &d) || d < 0) {
      return absl::InvalidArgumentError(absl::StrCat(path, ": bad .npy shape ", *shape_text));
    }
    shape.push_back(d);
  }
  return HostTensor::FromBytes(dtype, std::move(shape), bytes.substr(header_at + header_len));
}

}  // namespace

absl::StatusOr<HostTensor> ReadTensorFile(const std::string& path, DType dtype,
                                          const Shape& expected_shape) {
  absl::StatusOr<std::string> bytes = Slurp(path);
  if (!bytes.ok()) return bytes.status();
  absl::StatusOr<HostTensor> tensor =
      absl::EndsWith(path, ".npy")
          ? ParseNpy(path, *std::move(bytes), dtype)
          : HostTensor::FromBytes(dtype, expected_shape, *std::move(bytes));
  if (!tensor.ok()) {
    return absl::InvalidArgumentError(absl::StrCat(path, ": ", tensor.status().message()));
  }
  if (tensor->shape() != absl::Span<const int64_t>(expected_shape)) {
    return absl::InvalidArgumentError(absl::StrCat(path, " has shape ",
                                                   ShapeString(tensor->shape()), ", expected ",
                                                   ShapeString(expected_shape)));
  }
  return tensor;
}

absl::Status WriteTensorFile(const std::string& path, const HostTensor& tensor) {
  std::ofstream out(path, std::ios::binary | std::ios::trunc);
  if (!out) return absl::InvalidArgumentError(absl::StrCat("cannot write '", path, "'"));
  if (absl::EndsWith(path, ".npy")) {
    const char* descr = tensor.dtype() == DType::kFloat32   ? "<f4"
                        : tensor.dtype() == DType::kFloat16 ? "<f2"
                                                            : "<u2";
    std::string shape;
    for (int64_t d : tensor.shape()) absl::StrAppend(&shape, d, ", ");
    // "(2, 3,)" and "(4,)": a trailing comma is valid in a Python tuple and required for one item.
    std::string header = absl::StrCat("{'descr': '", descr, "', 'fortran_order': False, 'shape': (",
                                      absl::StripSuffix(shape, " "), "), }");
    // Pad with spaces so the data starts 64-byte aligned, ending in '\n' (the format's rule).
    const size_t total = 10 + header.size() + 1;
    header.append((64 - total % 64) % 64, ' ');
    header.push_back('\n');
    out.write(kMagic, 6);
    out.put(1);
    out.put(0);
    out.put(static_cast<char>(header.size() & 0xff));
    out.put(static_cast<char>(header.size() >> 8));
    out << header;
  }
  out.write(reinterpret_cast<const char*>(tensor.data()),
            static_cast<std::streamsize>(tensor.num_bytes()));
  if (!out) return absl::InternalError(absl::StrCat("writing '", path, "' failed"));
  return absl::OkStatus();
}

}  // namespace flashkv::cli

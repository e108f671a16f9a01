#include "openmoe/io/safetensors.h"

#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstdio>
#include <cstring>
#include <fstream>
#include <set>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "nlohmann/json.hpp"

namespace openmoe::io {
namespace {

using nlohmann::json;

constexpr uint64_t kMaxHeaderBytes = 100ull << 20;  // the format's own limit (100 MB)
constexpr int64_t kChunkElements   = 1 << 20;

absl::Status FileError(const std::string& path, const std::string& what) {
  return absl::InvalidArgumentError(absl::StrCat("safetensors file '", path, "': ", what));
}

absl::StatusOr<TensorInfo> ParseEntry(const std::string& path, const std::string& name,
                                      const json& entry, uint64_t data_size) {
  auto tensor_error = [&](const std::string& what) {
    return FileError(path, absl::StrCat("tensor '", name, "': ", what));
  };
  if (!entry.is_object()) return tensor_error("header entry is not an object");
  if (!entry.contains("dtype") || !entry["dtype"].is_string())
    return tensor_error("missing string field 'dtype'");
  if (!entry.contains("shape") || !entry["shape"].is_array())
    return tensor_error("missing array field 'shape'");
  if (!entry.contains("data_offsets") || !entry["data_offsets"].is_array() ||
      entry["data_offsets"].size() != 2)
    return tensor_error("missing field 'data_offsets' [begin, end]");
  TensorInfo info;
  absl::StatusOr<DType> dtype = ParseSafetensorsDType(entry["dtype"].get<std::string>());
  if (!dtype.ok()) return tensor_error(std::string(dtype.status().message()));
  info.dtype = *dtype;
  uint64_t numel = 1;
  for (const json& d : entry["shape"]) {
    if (!d.is_number_integer() || d.get<int64_t>() < 0)
      return tensor_error("shape entries must be non-negative integers");
    info.shape.push_back(d.get<int64_t>());
    if (info.shape.back() != 0 && numel > (uint64_t(1) << 62) / uint64_t(info.shape.back()))
      return tensor_error("shape is too large");
    numel *= uint64_t(info.shape.back());
  }
  for (const json& o : entry["data_offsets"]) {
    if (!o.is_number_unsigned()) return tensor_error("data_offsets must be non-negative integers");
  }
  info.begin = entry["data_offsets"][0].get<uint64_t>();
  info.end   = entry["data_offsets"][1].get<uint64_t>();
  if (info.begin > info.end || info.end > data_size) {
    return tensor_error(absl::StrCat("data_offsets [", info.begin, ", ", info.end,
                                     "] lie outside the data section of ", data_size, " bytes"));
  }
  if (info.end - info.begin != numel * DTypeSize(info.dtype)) {
    return tensor_error(absl::StrCat("data_offsets span ", info.end - info.begin,
                                     " bytes but shape ", info.ShapeString(), " of ",
                                     SafetensorsDTypeName(info.dtype), " needs ",
                                     numel * DTypeSize(info.dtype)));
  }
  return info;
}

}  // namespace

int64_t TensorInfo::num_elements() const {
  int64_t n = 1;
  for (int64_t d : shape) n *= d;
  return n;
}

std::string TensorInfo::ShapeString() const { return absl::StrCat("[", absl::StrJoin(shape, ", "), "]"); }

absl::StatusOr<SafetensorsFile> SafetensorsFile::Open(const std::string& path) {
  std::ifstream in(path, std::ios::binary | std::ios::ate);
  if (!in) return absl::NotFoundError(absl::StrCat("cannot open safetensors file '", path, "'"));
  const uint64_t file_size = uint64_t(in.tellg());
  if (file_size < 8) return FileError(path, absl::StrCat("truncated: ", file_size, " bytes, no header"));
  in.seekg(0);
  unsigned char size_bytes[8];
  in.read(reinterpret_cast<char*>(size_bytes), 8);
  uint64_t header_size = 0;
  for (int i = 7; i >= 0; --i) header_size = (header_size << 8) | size_bytes[i];
  if (header_size > kMaxHeaderBytes || header_size > file_size - 8) {
    return FileError(path, absl::StrCat("header size ", header_size, " exceeds the file (",
                                        file_size, " bytes): truncated or not a safetensors file"));
  }
  std::string header(header_size, '\0');
  in.read(header.data(), std::streamsize(header_size));
  if (!in) return FileError(path, "could not read the header");

  // Duplicate names are invalid; nlohmann would silently keep the last one, so watch keys.
  std::set<std::string> seen;
  std::string duplicate;
  json::parser_callback_t watch_keys = [&](int depth, json::parse_event_t event, json& parsed) {
    if (depth == 1 && event == json::parse_event_t::key) {
      const std::string key = parsed.get<std::string>();
      if (!seen.insert(key).second && duplicate.empty()) duplicate = key;
    }
    return true;
  };
  json root = json::parse(header, watch_keys, /*allow_exceptions=*/false);
  if (root.is_discarded() || !root.is_object()) {
    return FileError(path, "header is not a valid JSON object (corrupt file?)");
  }
  if (!duplicate.empty()) return FileError(path, absl::StrCat("duplicate tensor name '", duplicate, "'"));

  SafetensorsFile file;
  file.path_       = path;
  file.data_start_ = 8 + header_size;
  const uint64_t data_size = file_size - file.data_start_;
  for (auto it = root.begin(); it != root.end(); ++it) {
    if (it.key() == "__metadata__") {
      if (!it.value().is_object()) return FileError(path, "__metadata__ is not an object");
      for (auto m = it.value().begin(); m != it.value().end(); ++m) {
        if (m.value().is_string()) file.metadata_[m.key()] = m.value().get<std::string>();
      }
      continue;
    }
    absl::StatusOr<TensorInfo> info = ParseEntry(path, it.key(), it.value(), data_size);
    if (!info.ok()) return info.status();
    file.tensors_.emplace(it.key(), *std::move(info));
  }
  return file;
}

const TensorInfo* SafetensorsFile::Find(const std::string& name) const {
  auto it = tensors_.find(name);
  return it == tensors_.end() ? nullptr : &it->second;
}

namespace {

template <class Out, class Convert>
absl::Status StreamConvert(const std::string& path, uint64_t offset, int64_t count,
                           size_t element_size, Out* out, Convert convert) {
  std::ifstream in(path, std::ios::binary);
  if (!in) return absl::NotFoundError(absl::StrCat("cannot open safetensors file '", path, "'"));
  in.seekg(std::streamoff(offset));
  std::vector<unsigned char> buffer;
  for (int64_t done = 0; done < count;) {
    const int64_t n = std::min(kChunkElements, count - done);
    buffer.resize(size_t(n) * element_size);
    in.read(reinterpret_cast<char*>(buffer.data()), std::streamsize(buffer.size()));
    if (!in) return FileError(path, "file ended while reading tensor data (truncated?)");
    for (int64_t i = 0; i < n; ++i) out[done + i] = convert(buffer.data() + size_t(i) * element_size);
    done += n;
  }
  return absl::OkStatus();
}

template <class T>
T LoadLE(const unsigned char* p) {
  T value;
  std::memcpy(&value, p, sizeof(T));  // x86-64 and aarch64 Linux are little-endian
  return value;
}

}  // namespace

absl::StatusOr<const TensorInfo*> SafetensorsFile::FindWithCount(const std::string& name, int64_t count) const {
  const TensorInfo* info = Find(name);
  if (info == nullptr) return FileError(path_, absl::StrCat("no tensor named '", name, "'"));
  if (info->num_elements() != count) {
    return FileError(path_, absl::StrCat("tensor '", name, "' has ", info->num_elements(),
                                         " elements ", info->ShapeString(), ", expected ", count));
  }
  return info;
}

absl::Status SafetensorsFile::ReadAsFloat(const std::string& name, float* out, int64_t count) const {
  absl::StatusOr<const TensorInfo*> found = FindWithCount(name, count);
  if (!found.ok()) return found.status();
  const TensorInfo* info = *found;
  const uint64_t offset = data_start_ + info->begin;
  const size_t size     = DTypeSize(info->dtype);
  switch (info->dtype) {
    case DType::kF32:
      return StreamConvert(path_, offset, count, size, out, LoadLE<float>);
    case DType::kF64:
      return StreamConvert(path_, offset, count, size, out,
                           [](const unsigned char* p) { return float(LoadLE<double>(p)); });
    case DType::kBF16:
      return StreamConvert(path_, offset, count, size, out, [](const unsigned char* p) {
        return Bf16BitsToFloat(LoadLE<uint16_t>(p));
      });
    case DType::kF16:
      return StreamConvert(path_, offset, count, size, out, [](const unsigned char* p) {
        return Fp16BitsToFloat(LoadLE<uint16_t>(p));
      });
    default:
      return FileError(path_, absl::StrCat("tensor '", name, "' has dtype ",
                                           SafetensorsDTypeName(info->dtype),
                                           ", expected a float type (F32, BF16, F16, F64)"));
  }
}

absl::Status SafetensorsFile::ReadAsInt64(const std::string& name, int64_t* out, int64_t count) const {
  absl::StatusOr<const TensorInfo*> found = FindWithCount(name, count);
  if (!found.ok()) return found.status();
  const TensorInfo* info = *found;
  const uint64_t offset = data_start_ + info->begin;
  if (info->dtype == DType::kI64) return StreamConvert(path_, offset, count, 8, out, LoadLE<int64_t>);
  if (info->dtype == DType::kI32) {
    return StreamConvert(path_, offset, count, 4, out,
                         [](const unsigned char* p) { return int64_t(LoadLE<int32_t>(p)); });
  }
  return FileError(path_, absl::StrCat("tensor '", name, "' has dtype ",
                                       SafetensorsDTypeName(info->dtype), ", expected I64 or I32"));
}

absl::Status WriteSafetensors(const std::string& path, const std::vector<TensorToWrite>& tensors,
                              const std::map<std::string, std::string>& metadata) {
  json header = json::object();
  if (!metadata.empty()) header["__metadata__"] = metadata;
  uint64_t offset = 0;
  std::set<std::string> names;
  for (const TensorToWrite& t : tensors) {
    if (!names.insert(t.name).second)
      return absl::InvalidArgumentError(absl::StrCat("WriteSafetensors: duplicate tensor '", t.name, "'"));
    uint64_t bytes = DTypeSize(t.dtype);
    for (int64_t d : t.shape) bytes *= uint64_t(d);
    header[t.name] = {{"dtype", SafetensorsDTypeName(t.dtype)},
                      {"shape", t.shape},
                      {"data_offsets", {offset, offset + bytes}}};
    offset += bytes;
  }
  std::string header_text = header.dump();
  header_text.append((8 - header_text.size() % 8) % 8, ' ');  // align the data section to 8

  const std::string temp = absl::StrCat(path, ".tmp.", getpid());
  {
    std::ofstream out(temp, std::ios::binary | std::ios::trunc);
    if (!out) return absl::PermissionDeniedError(absl::StrCat("cannot write '", temp, "': ", std::strerror(errno)));
    unsigned char size_bytes[8];
    for (int i = 0; i < 8; ++i) size_bytes[i] = (uint64_t(header_text.size()) >> (8 * i)) & 0xff;
    out.write(reinterpret_cast<const char*>(size_bytes), 8);
    out.write(header_text.data(), std::streamsize(header_text.size()));
    for (const TensorToWrite& t : tensors) {
      uint64_t bytes = DTypeSize(t.dtype);
      for (int64_t d : t.shape) bytes *= uint64_t(d);
      out.write(static_cast<const char*>(t.data), std::streamsize(bytes));
    }
    out.flush();
    if (!out) {
      std::remove(temp.c_str());
      return absl::DataLossError(absl::StrCat("writing '", temp, "' failed (disk full?)"));
    }
  }
  if (std::rename(temp.c_str(), path.c_str()) != 0) {
    const std::string reason = std::strerror(errno);
    std::remove(temp.c_str());
    return absl::PermissionDeniedError(absl::StrCat("cannot rename '", temp, "' to '", path, "': ", reason));
  }
  return absl::OkStatus();
}

}  // namespace openmoe::io

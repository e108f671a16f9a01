#include "openmoe/io/torch_pickle.h"

#include <cstring>
#include <fstream>
#include <memory>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"

namespace openmoe::io {
namespace {

absl::Status Error(const std::string& source, const std::string& what) {
  return absl::InvalidArgumentError(absl::StrCat("PyTorch checkpoint '", source, "': ", what));
}

// ---------------------------------------------------------------------------------------------
// Pickle values: just what state dicts are made of.
struct PyObject;
using Py = std::shared_ptr<PyObject>;

struct StorageRef {
  DType dtype;
  std::string key;
};
struct TensorRef {
  StorageRef storage;
  int64_t offset;
  std::vector<int64_t> shape, stride;
};
struct Global {
  std::string name;  // "module.name"
};

struct PyObject {
  enum class Kind { kNone, kBool, kInt, kFloat, kString, kTuple, kList, kDict, kGlobal, kStorageType, kStorage, kTensor, kMark };
  Kind kind = Kind::kNone;
  int64_t i = 0;
  double f = 0;
  std::string s;
  std::vector<Py> items;                      // tuple / list
  std::vector<std::pair<Py, Py>> dict;        // dict (insertion order)
  DType dtype = DType::kF32;                  // storage type / storage
  std::shared_ptr<TensorRef> tensor;
};

Py Make(PyObject::Kind kind) {
  auto p  = std::make_shared<PyObject>();
  p->kind = kind;
  return p;
}

const std::map<std::string, DType>& StorageTypes() {
  static const auto* types = new std::map<std::string, DType>{
      {"torch.FloatStorage", DType::kF32},  {"torch.BFloat16Storage", DType::kBF16},
      {"torch.HalfStorage", DType::kF16},   {"torch.DoubleStorage", DType::kF64},
      {"torch.LongStorage", DType::kI64},   {"torch.IntStorage", DType::kI32},
  };
  return *types;
}

class Unpickler {
 public:
  Unpickler(const std::string& data, const std::string& source) : data_(data), source_(source) {}

  absl::StatusOr<Py> Run() {
    while (true) {
      if (pos_ >= data_.size()) return Error(source_, "data.pkl ended without STOP (truncated?)");
      const unsigned char op = data_[pos_++];
      absl::Status status = Step(op);
      if (!status.ok()) return status;
      if (stopped_) break;
    }
    if (stack_.size() != 1) return Error(source_, "data.pkl left a malformed stack");
    return stack_.back();
  }

 private:
  absl::Status Need(size_t n) {
    if (pos_ + n > data_.size()) return Error(source_, "data.pkl is truncated");
    return absl::OkStatus();
  }
  template <class T>
  absl::StatusOr<T> ReadLE() {
    if (auto s = Need(sizeof(T)); !s.ok()) return s;
    T v;
    std::memcpy(&v, data_.data() + pos_, sizeof(T));
    pos_ += sizeof(T);
    return v;
  }
  absl::StatusOr<std::string> ReadBytes(size_t n) {
    if (auto s = Need(n); !s.ok()) return s;
    std::string out = data_.substr(pos_, n);
    pos_ += n;
    return out;
  }
  absl::StatusOr<std::string> ReadLine() {
    const size_t end = data_.find('\n', pos_);
    if (end == std::string::npos) return Error(source_, "data.pkl is truncated");
    std::string out = data_.substr(pos_, end - pos_);
    pos_            = end + 1;
    return out;
  }
  absl::StatusOr<Py> Pop() {
    if (stack_.empty()) return Error(source_, "data.pkl pops an empty stack");
    Py top = stack_.back();
    stack_.pop_back();
    return top;
  }
  absl::StatusOr<std::vector<Py>> PopToMark() {
    std::vector<Py> items;
    while (true) {
      if (stack_.empty()) return Error(source_, "data.pkl has no MARK");
      Py top = stack_.back();
      stack_.pop_back();
      if (top->kind == PyObject::Kind::kMark) break;
      items.push_back(top);
    }
    return std::vector<Py>(items.rbegin(), items.rend());
  }
  void PushInt(int64_t v) {
    Py p = Make(PyObject::Kind::kInt);
    p->i = v;
    stack_.push_back(p);
  }
  void PushString(std::string s) {
    Py p = Make(PyObject::Kind::kString);
    p->s = std::move(s);
    stack_.push_back(p);
  }
  absl::Status PushTuple(std::vector<Py> items) {
    Py p     = Make(PyObject::Kind::kTuple);
    p->items = std::move(items);
    stack_.push_back(p);
    return absl::OkStatus();
  }
  absl::Status Memo(uint32_t index) {
    if (stack_.empty()) return Error(source_, "data.pkl memoizes an empty stack");
    memo_[index] = stack_.back();
    return absl::OkStatus();
  }
  absl::Status Get(uint32_t index) {
    auto it = memo_.find(index);
    if (it == memo_.end()) return Error(source_, absl::StrCat("data.pkl refers to unknown memo ", index));
    stack_.push_back(it->second);
    return absl::OkStatus();
  }
  absl::Status PushGlobal(const std::string& module, const std::string& name) {
    const std::string full = module + "." + name;
    if (StorageTypes().count(full)) {
      Py p     = Make(PyObject::Kind::kStorageType);
      p->dtype = StorageTypes().at(full);
      stack_.push_back(p);
      return absl::OkStatus();
    }
    if (full == "collections.OrderedDict" || full == "torch._utils._rebuild_tensor_v2") {
      Py p = Make(PyObject::Kind::kGlobal);
      p->s = full;
      stack_.push_back(p);
      return absl::OkStatus();
    }
    return Error(source_, absl::StrCat("unsupported pickle content: global '", full,
                                       "' (only state dicts of tensors are accepted)"));
  }
  absl::Status SetItems(std::vector<Py> kv) {
    if (kv.size() % 2) return Error(source_, "data.pkl SETITEMS with an odd count");
    absl::StatusOr<Py> dict = Pop();
    if (!dict.ok()) return dict.status();
    if ((*dict)->kind != PyObject::Kind::kDict) return Error(source_, "data.pkl SETITEMS on a non-dict");
    for (size_t i = 0; i < kv.size(); i += 2) (*dict)->dict.emplace_back(kv[i], kv[i + 1]);
    stack_.push_back(*dict);
    return absl::OkStatus();
  }
  absl::StatusOr<std::vector<int64_t>> IntTuple(const Py& p, const char* what) {
    if (p->kind != PyObject::Kind::kTuple) return Error(source_, absl::StrCat("tensor ", what, " is not a tuple"));
    std::vector<int64_t> out;
    for (const Py& item : p->items) {
      if (item->kind != PyObject::Kind::kInt) return Error(source_, absl::StrCat("tensor ", what, " holds a non-integer"));
      out.push_back(item->i);
    }
    return out;
  }
  absl::Status Reduce() {
    absl::StatusOr<Py> args = Pop();
    if (!args.ok()) return args.status();
    absl::StatusOr<Py> callable = Pop();
    if (!callable.ok()) return callable.status();
    if ((*callable)->kind != PyObject::Kind::kGlobal || (*args)->kind != PyObject::Kind::kTuple) {
      return Error(source_, "unsupported pickle content: REDUCE of something other than an allowed global");
    }
    if ((*callable)->s == "collections.OrderedDict") {
      stack_.push_back(Make(PyObject::Kind::kDict));
      return absl::OkStatus();
    }
    // torch._utils._rebuild_tensor_v2(storage, offset, size, stride, requires_grad, hooks[, meta])
    const std::vector<Py>& a = (*args)->items;
    if (a.size() < 4 || a[0]->kind != PyObject::Kind::kStorage || a[1]->kind != PyObject::Kind::kInt) {
      return Error(source_, "malformed _rebuild_tensor_v2 arguments");
    }
    auto tensor     = std::make_shared<TensorRef>();
    tensor->storage = {a[0]->dtype, a[0]->s};
    tensor->offset  = a[1]->i;
    absl::StatusOr<std::vector<int64_t>> shape = IntTuple(a[2], "size");
    if (!shape.ok()) return shape.status();
    absl::StatusOr<std::vector<int64_t>> stride = IntTuple(a[3], "stride");
    if (!stride.ok()) return stride.status();
    tensor->shape  = *shape;
    tensor->stride = *stride;
    Py p      = Make(PyObject::Kind::kTensor);
    p->tensor = tensor;
    stack_.push_back(p);
    return absl::OkStatus();
  }

  absl::Status Step(unsigned char op) {
    switch (op) {
      case 0x80: return Need(1).ok() ? (pos_++, absl::OkStatus()) : Need(1);  // PROTO
      case 0x95: return ReadLE<uint64_t>().status();                           // FRAME
      case '}': stack_.push_back(Make(PyObject::Kind::kDict)); return absl::OkStatus();
      case ']': stack_.push_back(Make(PyObject::Kind::kList)); return absl::OkStatus();
      case ')': return PushTuple({});
      case '(': stack_.push_back(Make(PyObject::Kind::kMark)); return absl::OkStatus();
      case 'N': stack_.push_back(Make(PyObject::Kind::kNone)); return absl::OkStatus();
      case 0x88: case 0x89: {
        Py p = Make(PyObject::Kind::kBool);
        p->i = op == 0x88;
        stack_.push_back(p);
        return absl::OkStatus();
      }
      case 'K': { auto v = ReadLE<uint8_t>(); if (!v.ok()) return v.status(); PushInt(*v); return absl::OkStatus(); }
      case 'M': { auto v = ReadLE<uint16_t>(); if (!v.ok()) return v.status(); PushInt(*v); return absl::OkStatus(); }
      case 'J': { auto v = ReadLE<int32_t>(); if (!v.ok()) return v.status(); PushInt(*v); return absl::OkStatus(); }
      case 0x8a: {  // LONG1: little-endian two's complement of n bytes
        auto n = ReadLE<uint8_t>();
        if (!n.ok()) return n.status();
        if (*n > 8) return Error(source_, "integer too large in data.pkl");
        auto bytes = ReadBytes(*n);
        if (!bytes.ok()) return bytes.status();
        uint64_t v = 0;
        for (int i = int(*n) - 1; i >= 0; --i) v = (v << 8) | uint8_t((*bytes)[i]);
        if (*n > 0 && *n < 8 && (uint8_t((*bytes)[*n - 1]) & 0x80)) v |= ~uint64_t(0) << (8 * *n);
        PushInt(int64_t(v));
        return absl::OkStatus();
      }
      case 'G': {
        auto bytes = ReadBytes(8);
        if (!bytes.ok()) return bytes.status();
        uint64_t bits = 0;
        for (int i = 0; i < 8; ++i) bits = (bits << 8) | uint8_t((*bytes)[i]);  // big-endian
        Py p = Make(PyObject::Kind::kFloat);
        std::memcpy(&p->f, &bits, 8);
        stack_.push_back(p);
        return absl::OkStatus();
      }
      case 'X': { auto n = ReadLE<uint32_t>(); if (!n.ok()) return n.status(); auto s = ReadBytes(*n); if (!s.ok()) return s.status(); PushString(*s); return absl::OkStatus(); }
      case 0x8c: case 'U': { auto n = ReadLE<uint8_t>(); if (!n.ok()) return n.status(); auto s = ReadBytes(*n); if (!s.ok()) return s.status(); PushString(*s); return absl::OkStatus(); }
      case 'c': {
        auto module = ReadLine();
        if (!module.ok()) return module.status();
        auto name = ReadLine();
        if (!name.ok()) return name.status();
        return PushGlobal(*module, *name);
      }
      case 0x93: {  // STACK_GLOBAL
        auto name = Pop();
        if (!name.ok()) return name.status();
        auto module = Pop();
        if (!module.ok()) return module.status();
        return PushGlobal((*module)->s, (*name)->s);
      }
      case 0x85: case 0x86: case 0x87: {
        const size_t n = op - 0x84;
        if (stack_.size() < n) return Error(source_, "data.pkl tuple of a short stack");
        std::vector<Py> items(stack_.end() - n, stack_.end());
        stack_.resize(stack_.size() - n);
        return PushTuple(std::move(items));
      }
      case 't': { auto items = PopToMark(); if (!items.ok()) return items.status(); return PushTuple(*std::move(items)); }
      case 'q': { auto i = ReadLE<uint8_t>(); if (!i.ok()) return i.status(); return Memo(*i); }
      case 'r': { auto i = ReadLE<uint32_t>(); if (!i.ok()) return i.status(); return Memo(*i); }
      case 0x94: return Memo(uint32_t(memo_.size()));
      case 'h': { auto i = ReadLE<uint8_t>(); if (!i.ok()) return i.status(); return Get(*i); }
      case 'j': { auto i = ReadLE<uint32_t>(); if (!i.ok()) return i.status(); return Get(*i); }
      case 'Q': {  // BINPERSID: ('storage', storage_type, key, location, numel)
        auto pid = Pop();
        if (!pid.ok()) return pid.status();
        const std::vector<Py>& a = (*pid)->items;
        if ((*pid)->kind != PyObject::Kind::kTuple || a.size() < 5 || a[0]->s != "storage" ||
            a[1]->kind != PyObject::Kind::kStorageType || a[2]->kind != PyObject::Kind::kString) {
          return Error(source_, "unsupported persistent id in data.pkl (not a typed storage)");
        }
        Py p     = Make(PyObject::Kind::kStorage);
        p->dtype = a[1]->dtype;
        p->s     = a[2]->s;
        stack_.push_back(p);
        return absl::OkStatus();
      }
      case 'R': return Reduce();
      case 'b': {  // BUILD: state of an OrderedDict (its _metadata) is not needed
        auto state = Pop();
        return state.status();
      }
      case 's': {
        if (stack_.size() < 3) return Error(source_, "data.pkl SETITEM of a short stack");
        Py value = stack_.back(); stack_.pop_back();
        Py key = stack_.back(); stack_.pop_back();
        return SetItems({key, value});
      }
      case 'u': { auto kv = PopToMark(); if (!kv.ok()) return kv.status(); return SetItems(*std::move(kv)); }
      case 'a': case 'e': {
        std::vector<Py> items;
        if (op == 'a') {
          auto item = Pop();
          if (!item.ok()) return item.status();
          items.push_back(*item);
        } else {
          auto popped = PopToMark();
          if (!popped.ok()) return popped.status();
          items = *std::move(popped);
        }
        if (stack_.empty() || stack_.back()->kind != PyObject::Kind::kList) return Error(source_, "data.pkl APPEND to a non-list");
        for (Py& item : items) stack_.back()->items.push_back(item);
        return absl::OkStatus();
      }
      case '.': stopped_ = true; return absl::OkStatus();
      default:
        return Error(source_, absl::StrFormat("unsupported pickle opcode 0x%02x at byte %d of data.pkl", op, pos_ - 1));
    }
  }

  const std::string& data_;
  const std::string& source_;
  size_t pos_ = 0;
  bool stopped_ = false;
  std::vector<Py> stack_;
  std::map<uint32_t, Py> memo_;
};

// ---------------------------------------------------------------------------------------------
// Zip (stored entries, zip64) central directory.
struct ZipEntry {
  uint64_t data_offset;
  uint64_t size;
};

template <class T>
T Le(const unsigned char* p) {
  T v;
  std::memcpy(&v, p, sizeof(T));
  return v;
}

absl::StatusOr<std::map<std::string, ZipEntry>> ReadZipDirectory(std::ifstream& in, uint64_t file_size,
                                                                 const std::string& path) {
  const uint64_t tail_size = std::min<uint64_t>(file_size, 65536 + 22);
  std::vector<unsigned char> tail(tail_size);
  in.seekg(std::streamoff(file_size - tail_size));
  in.read(reinterpret_cast<char*>(tail.data()), std::streamsize(tail_size));
  int64_t eocd = -1;
  for (int64_t i = int64_t(tail_size) - 22; i >= 0; --i) {
    if (Le<uint32_t>(&tail[i]) == 0x06054b50) { eocd = i; break; }
  }
  if (eocd < 0) return Error(path, "not a zip archive (torch.save format) or truncated: no end-of-directory record");
  uint64_t entries = Le<uint16_t>(&tail[eocd + 10]);
  uint64_t cd_size = Le<uint32_t>(&tail[eocd + 12]);
  uint64_t cd_offset = Le<uint32_t>(&tail[eocd + 16]);
  if (cd_offset == 0xffffffffu || entries == 0xffff) {  // zip64
    if (eocd < 20 || Le<uint32_t>(&tail[eocd - 20]) != 0x07064b50) return Error(path, "zip64 locator missing");
    const uint64_t record = Le<uint64_t>(&tail[eocd - 20 + 8]);
    unsigned char z64[56];
    in.seekg(std::streamoff(record));
    in.read(reinterpret_cast<char*>(z64), 56);
    if (!in || Le<uint32_t>(z64) != 0x06064b50) return Error(path, "zip64 end-of-directory record missing");
    entries = Le<uint64_t>(z64 + 32), cd_size = Le<uint64_t>(z64 + 40), cd_offset = Le<uint64_t>(z64 + 48);
  }
  if (cd_offset + cd_size > file_size) return Error(path, "zip directory lies outside the file (truncated?)");
  std::vector<unsigned char> cd(cd_size);
  in.seekg(std::streamoff(cd_offset));
  in.read(reinterpret_cast<char*>(cd.data()), std::streamsize(cd_size));
  if (!in) return Error(path, "could not read the zip directory");
  std::map<std::string, ZipEntry> result;
  size_t p = 0;
  for (uint64_t e = 0; e < entries; ++e) {
    if (p + 46 > cd.size() || Le<uint32_t>(&cd[p]) != 0x02014b50) return Error(path, "corrupt zip directory");
    const uint16_t method = Le<uint16_t>(&cd[p + 10]);
    uint64_t size = Le<uint32_t>(&cd[p + 20]);
    uint64_t local = Le<uint32_t>(&cd[p + 42]);
    const uint16_t name_len = Le<uint16_t>(&cd[p + 28]), extra_len = Le<uint16_t>(&cd[p + 30]),
                   comment_len = Le<uint16_t>(&cd[p + 32]);
    if (p + 46 + name_len + extra_len > cd.size()) return Error(path, "corrupt zip directory");
    const std::string name(reinterpret_cast<const char*>(&cd[p + 46]), name_len);
    // zip64 extra field: 64-bit values replace the 0xffffffff ones, in order.
    for (size_t x = p + 46 + name_len; x + 4 <= p + 46 + name_len + extra_len;) {
      const uint16_t id = Le<uint16_t>(&cd[x]), len = Le<uint16_t>(&cd[x + 2]);
      if (id == 0x0001) {
        size_t v = x + 4;
        if (Le<uint32_t>(&cd[p + 24]) == 0xffffffffu) { size = Le<uint64_t>(&cd[v]); v += 8; }  // uncompressed
        if (Le<uint32_t>(&cd[p + 20]) == 0xffffffffu) { size = Le<uint64_t>(&cd[v]); v += 8; }  // compressed
        if (Le<uint32_t>(&cd[p + 42]) == 0xffffffffu) { local = Le<uint64_t>(&cd[v]); }
      }
      x += 4 + len;
    }
    if (method != 0) return Error(path, absl::StrCat("zip entry '", name, "' is compressed; torch.save writes stored entries"));
    unsigned char header[30];
    in.seekg(std::streamoff(local));
    in.read(reinterpret_cast<char*>(header), 30);
    if (!in || Le<uint32_t>(header) != 0x04034b50) return Error(path, absl::StrCat("corrupt local header of '", name, "'"));
    const uint64_t data_offset = local + 30 + Le<uint16_t>(header + 26) + Le<uint16_t>(header + 28);
    if (data_offset + size > file_size) {
      return Error(path, absl::StrCat("zip entry '", name, "' extends past the end of the file (truncated?)"));
    }
    result[name] = {data_offset, size};
    p += 46 + name_len + extra_len + comment_len;
  }
  return result;
}

}  // namespace

absl::StatusOr<std::map<std::string, TorchTensorInfo>> ParseStateDictPickle(const std::string& pickle,
                                                                          const std::string& source) {
  Unpickler unpickler(pickle, source);
  absl::StatusOr<Py> root = unpickler.Run();
  if (!root.ok()) return root.status();
  if ((*root)->kind != PyObject::Kind::kDict) return Error(source, "data.pkl does not hold a dict (state dict)");
  std::map<std::string, TorchTensorInfo> tensors;
  for (const auto& [key, value] : (*root)->dict) {
    if (key->kind != PyObject::Kind::kString) return Error(source, "state dict has a non-string key");
    if (value->kind != PyObject::Kind::kTensor) {
      return Error(source, absl::StrCat("state dict entry '", key->s, "' is not a tensor"));
    }
    const TensorRef& t = *value->tensor;
    if (t.shape.size() != t.stride.size()) return Error(source, absl::StrCat("tensor '", key->s, "': size/stride rank differ"));
    int64_t expected_stride = 1;
    for (int64_t d = int64_t(t.shape.size()) - 1; d >= 0; --d) {
      if (t.shape[d] != 1 && t.stride[d] != expected_stride) {
        return Error(source, absl::StrCat("tensor '", key->s, "' is not contiguous (row-major); re-save it contiguous"));
      }
      expected_stride *= t.shape[d];
    }
    TorchTensorInfo info;
    info.dtype          = t.storage.dtype;
    info.shape          = t.shape;
    info.storage_key    = t.storage.key;
    info.storage_offset = t.offset;
    if (!tensors.emplace(key->s, info).second) return Error(source, absl::StrCat("duplicate tensor '", key->s, "'"));
  }
  return tensors;
}

absl::StatusOr<TorchCheckpoint> TorchCheckpoint::Open(const std::string& path) {
  std::ifstream in(path, std::ios::binary | std::ios::ate);
  if (!in) return absl::NotFoundError(absl::StrCat("cannot open PyTorch checkpoint '", path, "'"));
  const uint64_t file_size = uint64_t(in.tellg());
  absl::StatusOr<std::map<std::string, ZipEntry>> entries = ReadZipDirectory(in, file_size, path);
  if (!entries.ok()) return entries.status();
  std::string prefix;
  const ZipEntry* pkl = nullptr;
  for (const auto& [name, entry] : *entries) {
    if (name.size() >= 8 && name.substr(name.size() - 8) == "data.pkl") {
      prefix = name.substr(0, name.size() - 8);
      pkl    = &entry;
    }
  }
  if (pkl == nullptr) return Error(path, "archive has no data.pkl");
  std::string pickle(pkl->size, '\0');
  in.seekg(std::streamoff(pkl->data_offset));
  in.read(pickle.data(), std::streamsize(pkl->size));
  if (!in) return Error(path, "could not read data.pkl");
  absl::StatusOr<std::map<std::string, TorchTensorInfo>> tensors = ParseStateDictPickle(pickle, path);
  if (!tensors.ok()) return tensors.status();
  for (auto& [name, info] : *tensors) {
    auto storage = entries->find(prefix + "data/" + info.storage_key);
    if (storage == entries->end()) {
      return Error(path, absl::StrCat("tensor '", name, "': storage data/", info.storage_key, " is missing"));
    }
    int64_t numel = 1;
    for (int64_t d : info.shape) numel *= d;
    const uint64_t element = DTypeSize(info.dtype);
    if (uint64_t(info.storage_offset + numel) * element > storage->second.size) {
      return Error(path, absl::StrCat("tensor '", name, "' needs ", (info.storage_offset + numel) * element,
                                      " bytes but its storage holds ", storage->second.size));
    }
    info.data_offset   = storage->second.data_offset + uint64_t(info.storage_offset) * element;
    info.storage_bytes = storage->second.size;
  }
  TorchCheckpoint checkpoint;
  checkpoint.path_    = path;
  checkpoint.tensors_ = *std::move(tensors);
  return checkpoint;
}

absl::Status TorchCheckpoint::ReadAsFloat(const std::string& name, float* out, int64_t count) const {
  auto it = tensors_.find(name);
  if (it == tensors_.end()) return Error(path_, absl::StrCat("no tensor named '", name, "'"));
  const TorchTensorInfo& info = it->second;
  int64_t numel = 1;
  for (int64_t d : info.shape) numel *= d;
  if (numel != count) return Error(path_, absl::StrCat("tensor '", name, "' has ", numel, " elements, expected ", count));
  std::ifstream in(path_, std::ios::binary);
  in.seekg(std::streamoff(info.data_offset));
  const size_t element = DTypeSize(info.dtype);
  std::vector<unsigned char> buffer;
  constexpr int64_t kChunk = 1 << 20;
  for (int64_t done = 0; done < count;) {
    const int64_t n = std::min(kChunk, count - done);
    buffer.resize(size_t(n) * element);
    in.read(reinterpret_cast<char*>(buffer.data()), std::streamsize(buffer.size()));
    if (!in) return Error(path_, absl::StrCat("file ended while reading tensor '", name, "'"));
    for (int64_t i = 0; i < n; ++i) {
      const unsigned char* p = buffer.data() + size_t(i) * element;
      switch (info.dtype) {
        case DType::kF32: out[done + i] = Le<float>(p); break;
        case DType::kF64: out[done + i] = float(Le<double>(p)); break;
        case DType::kBF16: out[done + i] = Bf16BitsToFloat(Le<uint16_t>(p)); break;
        case DType::kF16: out[done + i] = Fp16BitsToFloat(Le<uint16_t>(p)); break;
        default:
          return Error(path_, absl::StrCat("tensor '", name, "' has dtype ", SafetensorsDTypeName(info.dtype),
                                           ", expected a float type"));
      }
    }
    done += n;
  }
  return absl::OkStatus();
}

}  // namespace openmoe::io

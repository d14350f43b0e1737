// safetensors — see safetensors.h. Validation order follows what a corrupt file usually gets
// wrong first: size of the file, header length, header JSON, then each tensor's dtype, shape,
// byte count and bounds, then overlaps between tensors.
#include "core/safetensors.h"

#include <algorithm>
#include <cerrno>
#include <cstring>
#include <fstream>
#include <sstream>
#include <sys/stat.h>

#ifndef _WIN32
#include <fcntl.h>
#include <sys/mman.h>
#include <unistd.h>
#endif

#include "core/error.h"
#include "core/json.h"

namespace mimic {

const char* dtype_name(DType d) {
  switch (d) {
    case DType::F32: return "F32";
    case DType::BF16: return "BF16";
    default: return "F16";
  }
}
size_t dtype_size(DType d) { return d == DType::F32 ? 4 : 2; }

int64_t TensorView::numel() const {
  int64_t n = 1;
  for (auto s : shape) n *= s;
  return n;
}

std::string TensorView::shape_str() const {
  std::ostringstream os;
  os << "[";
  for (size_t i = 0; i < shape.size(); ++i) os << (i ? ", " : "") << shape[i];
  os << "]";
  return os.str();
}

static float bf16_to_f32(uint16_t h) {
  uint32_t u = (uint32_t)h << 16;
  float f;
  std::memcpy(&f, &u, 4);
  return f;
}

static float f16_to_f32(uint16_t h) {
  uint32_t sign = (uint32_t)(h & 0x8000) << 16, exp = (h >> 10) & 0x1F, man = h & 0x3FF, u;
  if (exp == 0) {
    if (man == 0) {
      u = sign;
    } else {  // subnormal: renormalize
      int e = -1;
      do { ++e; man <<= 1; } while (!(man & 0x400));
      u = sign | ((uint32_t)(127 - 15 - e) << 23) | ((man & 0x3FF) << 13);
    }
  } else if (exp == 31) {
    u = sign | 0x7F800000u | (man << 13);
  } else {
    u = sign | ((exp + 127 - 15) << 23) | (man << 13);
  }
  float f;
  std::memcpy(&f, &u, 4);
  return f;
}

void to_f32(float* dst, const TensorView& t) {
  int64_t n = t.numel();
  if (t.dtype == DType::F32) {
    std::memcpy(dst, t.data, (size_t)n * 4);  // the data may be unaligned in the mapping
    return;
  }
  for (int64_t i = 0; i < n; ++i) {
    uint16_t h;
    std::memcpy(&h, t.data + 2 * i, 2);
    dst[i] = t.dtype == DType::BF16 ? bf16_to_f32(h) : f16_to_f32(h);
  }
}

std::vector<float> to_f32(const TensorView& t) {
  std::vector<float> out((size_t)t.numel());
  to_f32(out.data(), t);
  return out;
}

// ---- one file ------------------------------------------------------------------------------

static bool parse_dtype(const std::string& s, DType* d) {
  if (s == "F32") *d = DType::F32;
  else if (s == "BF16") *d = DType::BF16;
  else if (s == "F16") *d = DType::F16;
  else return false;
  return true;
}

static int64_t as_index(const json::Value& v, const std::string& path, const std::string& name, const char* field) {
  MIMIC_CHECK(v.is_number() && v.num >= 0 && v.num == (double)(int64_t)v.num && v.num < 9.0e15, "EBADFILE",
              path, ": tensor \"", name, "\" has a bad ", field, " entry (expected a non-negative integer). ",
              "The file is corrupt: re-download it.");
  return (int64_t)v.num;
}

SafetensorsFile::~SafetensorsFile() {
#ifndef _WIN32
  if (mapped_ && base_) munmap((void*)base_, size_);
#endif
}

std::unique_ptr<SafetensorsFile> SafetensorsFile::open(const std::string& path) {
  std::unique_ptr<SafetensorsFile> f(new SafetensorsFile());
  f->path_ = path;
  struct stat st;
  if (stat(path.c_str(), &st) != 0)
    fail("ENOENT", "cannot open ", path, ": ", std::strerror(errno), ". Check the path, or re-download the checkpoint.");
  MIMIC_CHECK(S_ISREG(st.st_mode), "EBADFILE", path, " is not a regular file");
  f->size_ = (size_t)st.st_size;
  MIMIC_CHECK(f->size_ >= 8, "EBADFILE", path, " is truncated (", f->size_,
              " bytes; a safetensors file starts with an 8-byte header length). Re-download it.");
#ifndef _WIN32
  int fd = ::open(path.c_str(), O_RDONLY);
  if (fd < 0) fail("ENOENT", "cannot open ", path, ": ", std::strerror(errno));
  void* p = mmap(nullptr, f->size_, PROT_READ, MAP_PRIVATE, fd, 0);
  ::close(fd);
  if (p == MAP_FAILED) fail("EBADFILE", "cannot map ", path, ": ", std::strerror(errno));
  f->base_ = (const uint8_t*)p;
  f->mapped_ = true;
#else
  std::ifstream in(path, std::ios::binary);
  if (!in) fail("ENOENT", "cannot open ", path);
  f->fallback_.resize(f->size_);
  in.read((char*)f->fallback_.data(), (std::streamsize)f->size_);
  MIMIC_CHECK((size_t)in.gcount() == f->size_, "EBADFILE", "short read on ", path);
  f->base_ = f->fallback_.data();
#endif

  uint64_t hlen = 0;
  for (int i = 7; i >= 0; --i) hlen = (hlen << 8) | f->base_[i];  // little-endian on any host
  MIMIC_CHECK(hlen <= 100ull * 1024 * 1024, "EBADFILE", path, ": header length ", hlen,
              " bytes is not plausible (over 100 MB): not a safetensors file, or corrupt.");
  MIMIC_CHECK(hlen <= f->size_ - 8, "EBADFILE", path, " is truncated: its header claims ", hlen,
              " bytes but the file has only ", f->size_ - 8, " after the length. Re-download it.");
  const size_t data_start = 8 + (size_t)hlen, data_size = f->size_ - data_start;

  json::Value h = json::parse((const char*)f->base_ + 8, (size_t)hlen, path + " (safetensors header)");
  MIMIC_CHECK(h.is_object(), "EBADFILE", path, ": the header is a JSON ", h.type_name(), ", expected an object");

  struct Span { size_t b, e; size_t idx; };
  std::vector<Span> spans;
  for (auto& kv : h.obj) {
    const std::string& name = kv.first;
    const json::Value& v = kv.second;
    if (name == "__metadata__") {
      MIMIC_CHECK(v.is_object(), "EBADFILE", path, ": __metadata__ must be an object");
      for (auto& m : v.obj)
        if (m.second.is_string()) f->metadata_[m.first] = m.second.str;
      continue;
    }
    MIMIC_CHECK(v.is_object(), "EBADFILE", path, ": entry \"", name, "\" is not an object");
    const json::Value* dt = v.find("dtype");
    const json::Value* shape = v.find("shape");
    const json::Value* offs = v.find("data_offsets");
    MIMIC_CHECK(dt && dt->is_string() && shape && shape->is_array() && offs && offs->is_array() && offs->arr.size() == 2,
                "EBADFILE", path, ": tensor \"", name, "\" needs dtype, shape and data_offsets [begin, end]");
    TensorView t;
    t.name = name;
    t.file = path;
    if (!parse_dtype(dt->str, &t.dtype))
      fail("EDTYPE", path, ": tensor \"", name, "\" has dtype ", dt->str,
           ", which mimic cannot load (supported: F32, BF16, F16). Convert the checkpoint to one of those, "
           "e.g. with transformers: model.to(torch.bfloat16).save_pretrained(dir).");
    int64_t numel = 1;
    for (auto& d : shape->arr) {
      int64_t s = as_index(d, path, name, "shape");
      MIMIC_CHECK(s == 0 || numel <= (int64_t)(1ll << 50) / s, "EBADFILE", path, ": tensor \"", name, "\" shape is absurdly large");
      numel *= s;
      t.shape.push_back(s);
    }
    int64_t b = as_index(offs->arr[0], path, name, "data_offsets");
    int64_t e = as_index(offs->arr[1], path, name, "data_offsets");
    MIMIC_CHECK(b <= e, "EBADFILE", path, ": tensor \"", name, "\" has data_offsets [", b, ", ", e, "] with begin > end. The file is corrupt.");
    size_t want = (size_t)numel * dtype_size(t.dtype);
    MIMIC_CHECK((size_t)(e - b) == want, "EBADFILE", path, ": tensor \"", name, "\" is ", dt->str, " ", t.shape_str(),
                " = ", want, " bytes but its data_offsets [", b, ", ", e, "] span ", e - b, " bytes. The file is corrupt.");
    MIMIC_CHECK((size_t)e <= data_size, "EBADFILE", path, " is truncated or its header lies: tensor \"", name,
                "\" ends at data byte ", e, " but the file holds only ", data_size, " data bytes. Re-download it.");
    t.data = f->base_ + data_start + b;
    t.nbytes = want;
    spans.push_back({(size_t)b, (size_t)e, f->tensors_.size()});
    f->index_[name] = f->tensors_.size();
    f->tensors_.push_back(std::move(t));
  }
  std::sort(spans.begin(), spans.end(), [](const Span& a, const Span& b) { return a.b < b.b; });
  for (size_t i = 1; i < spans.size(); ++i)
    MIMIC_CHECK(spans[i].b >= spans[i - 1].e || spans[i].b == spans[i].e, "EBADFILE", path, ": tensors \"",
                f->tensors_[spans[i - 1].idx].name, "\" and \"", f->tensors_[spans[i].idx].name,
                "\" overlap in the data section. The file is corrupt.");
  return f;
}

const TensorView* SafetensorsFile::find(const std::string& name) const {
  auto it = index_.find(name);
  return it == index_.end() ? nullptr : &tensors_[it->second];
}

// ---- a checkpoint directory ------------------------------------------------------------------

static bool file_exists(const std::string& p) {
  struct stat st;
  return stat(p.c_str(), &st) == 0 && S_ISREG(st.st_mode);
}

Checkpoint Checkpoint::open_dir(const std::string& dir) {
  struct stat st;
  if (stat(dir.c_str(), &st) != 0 || !S_ISDIR(st.st_mode))
    fail("ENOENT", "model directory ", dir, " does not exist (or is not a directory). "
         "Pass the folder that holds config.json and the .safetensors files.");
  Checkpoint c;
  c.dir_ = dir;
  const std::string index = dir + "/model.safetensors.index.json";
  const std::string single = dir + "/model.safetensors";
  if (file_exists(index)) {
    json::Value idx = json::parse_file(index);
    const json::Value* map = idx.find("weight_map");
    MIMIC_CHECK(map && map->is_object(), "EBADFILE", index, " has no \"weight_map\" object. Re-download it.");
    std::map<std::string, SafetensorsFile*> shards;
    for (auto& kv : map->obj) {
      MIMIC_CHECK(kv.second.is_string(), "EBADFILE", index, ": weight_map[\"", kv.first, "\"] is not a file name");
      const std::string& shard = kv.second.str;
      MIMIC_CHECK(shard.find('/') == std::string::npos && shard.find('\\') == std::string::npos && shard != ".." ,
                  "EBADFILE", index, ": shard name \"", shard, "\" must be a plain file name in the model directory");
      if (!shards.count(shard)) {
        const std::string p = dir + "/" + shard;
        if (!file_exists(p))
          fail("ENOENT", "shard ", shard, " listed in ", index, " is missing from ", dir,
               ". Download the complete checkpoint (every model-*.safetensors file).");
        c.files_.push_back(SafetensorsFile::open(p));
        shards[shard] = c.files_.back().get();
      }
      const TensorView* t = shards[shard]->find(kv.first);
      MIMIC_CHECK(t, "EBADFILE", index, " places tensor \"", kv.first, "\" in ", shard, ", but that shard does not contain it. "
                  "The checkpoint is inconsistent: re-download it.");
      c.by_name_[kv.first] = t;
    }
  } else if (file_exists(single)) {
    c.files_.push_back(SafetensorsFile::open(single));
    for (auto& t : c.files_.back()->tensors()) c.by_name_[t.name] = &t;
  } else {
    fail("ENOENT", "no weights in ", dir, ": expected model.safetensors or model.safetensors.index.json "
         "(mimic reads safetensors checkpoints as saved by transformers' save_pretrained).");
  }
  return c;
}

const TensorView* Checkpoint::find(const std::string& name) const {
  auto it = by_name_.find(name);
  return it == by_name_.end() ? nullptr : it->second;
}

const TensorView& Checkpoint::get(const std::string& name) const {
  const TensorView* t = find(name);
  if (!t) fail("EBADFILE", "the checkpoint in ", dir_, " has no tensor \"", name, "\". Is it a complete Llama checkpoint?");
  return *t;
}

std::vector<std::string> Checkpoint::names() const {
  std::vector<std::string> out;
  for (auto& kv : by_name_) out.push_back(kv.first);
  return out;
}

}  // namespace mimic

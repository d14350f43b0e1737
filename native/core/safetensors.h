// safetensors — memory-mapped, fully validated reader for Hugging Face .safetensors files and
// sharded checkpoints (model.safetensors.index.json + shards).
//
// File layout: u64 little-endian header length N, N bytes of JSON
//   { "name": {"dtype": "F32", "shape": [..], "data_offsets": [begin, end]}, ..., "__metadata__": {..} }
// then the data; offsets are relative to the start of the data. Everything the header claims is
// checked against the file before any tensor is handed out (sizes, bounds, overlap), so a
// corrupt or truncated file is an Error (code EBADFILE / ENOENT / EDTYPE), never a crash.
#pragma once
#include <cstddef>
#include <cstdint>
#include <map>
#include <memory>
#include <string>
#include <vector>

namespace mimic {

enum class DType { F32, BF16, F16 };
const char* dtype_name(DType d);
size_t dtype_size(DType d);

struct TensorView {
  std::string name;
  DType dtype = DType::F32;
  std::vector<int64_t> shape;
  const uint8_t* data = nullptr;  // points into the mapping; valid while the file is open
  size_t nbytes = 0;
  std::string file;               // path of the file holding it (for error messages)
  int64_t numel() const;
  std::string shape_str() const;  // "[64, 160]"
};

// Converts any supported dtype to fp32 (dst has numel() floats).
void to_f32(float* dst, const TensorView& t);
std::vector<float> to_f32(const TensorView& t);

// One .safetensors file, mapped read-only.
class SafetensorsFile {
 public:
  static std::unique_ptr<SafetensorsFile> open(const std::string& path);
  ~SafetensorsFile();
  SafetensorsFile(const SafetensorsFile&) = delete;
  SafetensorsFile& operator=(const SafetensorsFile&) = delete;

  const std::string& path() const { return path_; }
  const std::vector<TensorView>& tensors() const { return tensors_; }
  const TensorView* find(const std::string& name) const;
  const std::map<std::string, std::string>& metadata() const { return metadata_; }

 private:
  SafetensorsFile() = default;
  std::string path_;
  const uint8_t* base_ = nullptr;
  size_t size_ = 0;
  bool mapped_ = false;
  std::vector<uint8_t> fallback_;  // when mmap is unavailable
  std::vector<TensorView> tensors_;
  std::map<std::string, size_t> index_;
  std::map<std::string, std::string> metadata_;
};

// A checkpoint directory: model.safetensors.index.json with its shards, or one model.safetensors.
class Checkpoint {
 public:
  static Checkpoint open_dir(const std::string& dir);
  const TensorView* find(const std::string& name) const;
  // Throws EBADFILE naming the tensor and the checkpoint when absent.
  const TensorView& get(const std::string& name) const;
  std::vector<std::string> names() const;
  const std::string& dir() const { return dir_; }

 private:
  std::string dir_;
  std::vector<std::unique_ptr<SafetensorsFile>> files_;
  std::map<std::string, const TensorView*> by_name_;
};

}  // namespace mimic

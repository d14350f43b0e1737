// json — a small strict JSON parser (RFC 8259) for config.json, index.json and safetensors
// headers. Objects keep their keys in file order; numbers are doubles. Errors throw
// mimic::Error("EBADFILE") naming `what` (the file) and the byte offset of the problem.
#pragma once
#include <map>
#include <memory>
#include <string>
#include <utility>
#include <vector>

namespace mimic::json {

struct Value {
  enum Type { Null, Bool, Number, String, Array, Object } type = Null;
  bool b = false;
  double num = 0;
  std::string str;
  std::vector<Value> arr;
  std::vector<std::pair<std::string, Value>> obj;  // file order; duplicate keys are an error

  bool is_null() const { return type == Null; }
  bool is_bool() const { return type == Bool; }
  bool is_number() const { return type == Number; }
  bool is_string() const { return type == String; }
  bool is_array() const { return type == Array; }
  bool is_object() const { return type == Object; }
  // Object member or null when absent (or when this is not an object).
  const Value* find(const std::string& key) const;
  const char* type_name() const;
};

// Parses the whole of text (trailing non-space is an error). `what` names the source in errors.
Value parse(const char* text, size_t len, const std::string& what);
inline Value parse(const std::string& text, const std::string& what) { return parse(text.data(), text.size(), what); }
// Reads and parses a file (ENOENT when it cannot be opened).
Value parse_file(const std::string& path);

}  // namespace mimic::json

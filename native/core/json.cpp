// json — recursive-descent parser. Strict: no comments, no trailing commas, no NaN/Infinity,
// no leading zeros, control characters must be escaped, \u escapes must pair surrogates.
// Depth is bounded so a hostile header cannot overflow the stack.
#include "core/json.h"

#include <cerrno>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <sstream>

#include "core/error.h"

namespace mimic::json {

const Value* Value::find(const std::string& key) const {
  if (type != Object) return nullptr;
  for (auto& kv : obj)
    if (kv.first == key) return &kv.second;
  return nullptr;
}

const char* Value::type_name() const {
  switch (type) {
    case Null: return "null";
    case Bool: return "bool";
    case Number: return "number";
    case String: return "string";
    case Array: return "array";
    default: return "object";
  }
}

namespace {

constexpr int kMaxDepth = 256;

struct Parser {
  const char* s;
  size_t n, i = 0;
  const std::string& what;

  [[noreturn]] void error(const std::string& msg) {
    fail("EBADFILE", what, ": invalid JSON at byte ", i, ": ", msg);
  }
  void ws() {
    while (i < n && (s[i] == ' ' || s[i] == '\t' || s[i] == '\n' || s[i] == '\r')) ++i;
  }
  bool lit(const char* w) {
    size_t l = std::strlen(w);
    if (n - i >= l && std::memcmp(s + i, w, l) == 0) { i += l; return true; }
    return false;
  }

  Value value(int depth) {
    if (depth > kMaxDepth) error("nesting deeper than 256");
    ws();
    if (i >= n) error("unexpected end of input");
    Value v;
    char c = s[i];
    if (c == '{') {
      v.type = Value::Object;
      ++i; ws();
      if (i < n && s[i] == '}') { ++i; return v; }
      for (;;) {
        ws();
        if (i >= n || s[i] != '"') error("expected a string key");
        std::string key = string();
        for (auto& kv : v.obj)
          if (kv.first == key) error("duplicate key \"" + key + "\"");
        ws();
        if (i >= n || s[i] != ':') error("expected ':'");
        ++i;
        v.obj.emplace_back(std::move(key), value(depth + 1));
        ws();
        if (i < n && s[i] == ',') { ++i; continue; }
        if (i < n && s[i] == '}') { ++i; return v; }
        error("expected ',' or '}'");
      }
    }
    if (c == '[') {
      v.type = Value::Array;
      ++i; ws();
      if (i < n && s[i] == ']') { ++i; return v; }
      for (;;) {
        v.arr.push_back(value(depth + 1));
        ws();
        if (i < n && s[i] == ',') { ++i; continue; }
        if (i < n && s[i] == ']') { ++i; return v; }
        error("expected ',' or ']'");
      }
    }
    if (c == '"') { v.type = Value::String; v.str = string(); return v; }
    if (lit("true")) { v.type = Value::Bool; v.b = true; return v; }
    if (lit("false")) { v.type = Value::Bool; v.b = false; return v; }
    if (lit("null")) return v;
    if (c == '-' || (c >= '0' && c <= '9')) { v.type = Value::Number; v.num = number(); return v; }
    error(std::string("unexpected character '") + c + "'");
  }

  double number() {
    size_t start = i;
    if (s[i] == '-') ++i;
    if (i >= n) error("bad number");
    if (s[i] == '0') {
      ++i;
    } else if (s[i] >= '1' && s[i] <= '9') {
      while (i < n && s[i] >= '0' && s[i] <= '9') ++i;
    } else {
      error("bad number");
    }
    if (i < n && s[i] == '.') {
      ++i;
      if (i >= n || !(s[i] >= '0' && s[i] <= '9')) error("bad number: digits expected after '.'");
      while (i < n && s[i] >= '0' && s[i] <= '9') ++i;
    }
    if (i < n && (s[i] == 'e' || s[i] == 'E')) {
      ++i;
      if (i < n && (s[i] == '+' || s[i] == '-')) ++i;
      if (i >= n || !(s[i] >= '0' && s[i] <= '9')) error("bad number: digits expected in exponent");
      while (i < n && s[i] >= '0' && s[i] <= '9') ++i;
    }
    std::string tok(s + start, i - start);
    return std::strtod(tok.c_str(), nullptr);  // C locale digits only: validated above
  }

  unsigned hex4() {
    if (n - i < 4) error("truncated \\u escape");
    unsigned u = 0;
    for (int k = 0; k < 4; ++k) {
      char c = s[i++];
      u <<= 4;
      if (c >= '0' && c <= '9') u |= c - '0';
      else if (c >= 'a' && c <= 'f') u |= c - 'a' + 10;
      else if (c >= 'A' && c <= 'F') u |= c - 'A' + 10;
      else error("bad hex digit in \\u escape");
    }
    return u;
  }

  static void utf8(std::string& out, unsigned cp) {
    if (cp < 0x80) out += (char)cp;
    else if (cp < 0x800) { out += (char)(0xC0 | (cp >> 6)); out += (char)(0x80 | (cp & 0x3F)); }
    else if (cp < 0x10000) {
      out += (char)(0xE0 | (cp >> 12)); out += (char)(0x80 | ((cp >> 6) & 0x3F)); out += (char)(0x80 | (cp & 0x3F));
    } else {
      out += (char)(0xF0 | (cp >> 18)); out += (char)(0x80 | ((cp >> 12) & 0x3F));
      out += (char)(0x80 | ((cp >> 6) & 0x3F)); out += (char)(0x80 | (cp & 0x3F));
    }
  }

  std::string string() {
    ++i;  // opening quote
    std::string out;
    for (;;) {
      if (i >= n) error("unterminated string");
      unsigned char c = (unsigned char)s[i];
      if (c == '"') { ++i; return out; }
      if (c < 0x20) error("unescaped control character in string");
      if (c != '\\') { out += (char)c; ++i; continue; }
      ++i;
      if (i >= n) error("unterminated escape");
      char e = s[i++];
      switch (e) {
        case '"': out += '"'; break;
        case '\\': out += '\\'; break;
        case '/': out += '/'; break;
        case 'b': out += '\b'; break;
        case 'f': out += '\f'; break;
        case 'n': out += '\n'; break;
        case 'r': out += '\r'; break;
        case 't': out += '\t'; break;
        case 'u': {
          unsigned cp = hex4();
          if (cp >= 0xD800 && cp <= 0xDBFF) {
            if (!(n - i >= 2 && s[i] == '\\' && s[i + 1] == 'u')) error("high surrogate without a low surrogate");
            i += 2;
            unsigned lo = hex4();
            if (lo < 0xDC00 || lo > 0xDFFF) error("high surrogate followed by a non-low surrogate");
            cp = 0x10000 + ((cp - 0xD800) << 10) + (lo - 0xDC00);
          } else if (cp >= 0xDC00 && cp <= 0xDFFF) {
            error("lone low surrogate");
          }
          utf8(out, cp);
          break;
        }
        default: error(std::string("bad escape '\\") + e + "'");
      }
    }
  }
};

}  // namespace

Value parse(const char* text, size_t len, const std::string& what) {
  Parser p{text, len, 0, what};
  Value v = p.value(0);
  p.ws();
  if (p.i != p.n) p.error("trailing characters after the JSON value");
  return v;
}

Value parse_file(const std::string& path) {
  std::ifstream f(path, std::ios::binary);
  if (!f) fail("ENOENT", "cannot open ", path, ": ", std::strerror(errno));
  std::ostringstream ss;
  ss << f.rdbuf();
  std::string s = ss.str();
  return parse(s, path);
}

}  // namespace mimic::json

// error.h — the one way native code reports failure.
//
// Native code never aborts the process: every failure (bad file, bad shape, CUDA error, out of
// memory) is thrown as mimic::Error, and the addon layer turns it into a JS exception whose
// message says what went wrong and what to do. `code` is a short stable tag that JS can test
// (e.g. "ENOENT", "EBADFILE", "ESHAPE", "ECUDA", "EOOM", "EINVAL").
#pragma once
#include <sstream>
#include <stdexcept>
#include <string>

namespace mimic {

struct Error : std::runtime_error {
  std::string code;
  Error(std::string code_, const std::string& msg) : std::runtime_error(msg), code(std::move(code_)) {}
};

namespace detail {
inline void cat(std::ostringstream&) {}
template <class T, class... R>
void cat(std::ostringstream& os, const T& v, const R&... rest) { os << v; cat(os, rest...); }
}  // namespace detail

template <class... A>
[[noreturn]] void fail(const char* code, const A&... parts) {
  std::ostringstream os;
  detail::cat(os, parts...);
  throw Error(code, os.str());
}

}  // namespace mimic

// MIMIC_CHECK(cond, "ESHAPE", "message ", value, ...) — throws mimic::Error when cond is false.
#define MIMIC_CHECK(cond, code, ...) \
  do { if (!(cond)) ::mimic::fail(code, __VA_ARGS__); } while (0)

// File input and output of the emulator's drivers: exactly sized input buffers (so that
// AddressSanitizer sees every read out of bounds) and NaN-filled outputs with NaN guard zones (an
// unwritten element or a write out of bounds shows).
#pragma once
#include <cstdio>
#include <cstdlib>
#include <fstream>
#include <string>
#include <vector>

namespace gencore_emu {

inline std::vector<unsigned char> read_file(const std::string& path, size_t bytes) {
  std::vector<unsigned char> data(bytes);
  std::ifstream f(path, std::ios::binary);
  if (!f.read(reinterpret_cast<char*>(data.data()), (std::streamsize)bytes)) {
    std::fprintf(stderr, "emulator: cannot read %s\n", path.c_str());
    std::abort();
  }
  return data;
}

inline void write_file(const std::string& path, const void* data, size_t bytes) {
  std::ofstream f(path, std::ios::binary);
  f.write(static_cast<const char*>(data), (std::streamsize)bytes);
}

// An output buffer of n bytes, NaN (0xff bytes) inside and in guard zones on both sides.
struct Guarded {
  static constexpr size_t kGuard = 256;
  std::vector<unsigned char> bytes;
  size_t n;
  explicit Guarded(size_t n_bytes) : bytes(n_bytes + 2 * kGuard, 0xff), n(n_bytes) {}
  void* data() { return bytes.data() + kGuard; }
  const void* data() const { return bytes.data() + kGuard; }
  void check(const char* name) const {
    for (size_t i = 0; i < kGuard; ++i)
      if (bytes[i] != 0xff || bytes[kGuard + n + i] != 0xff) {
        std::fprintf(stderr, "emulator: write outside %s\n", name);
        std::abort();
      }
  }
  void save(const std::string& path, const char* name) const {
    check(name);
    write_file(path, data(), n);
  }
};

}  // namespace gencore_emu

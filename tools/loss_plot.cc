#include "tools/loss_plot.h"

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <fstream>

#include "absl/strings/str_cat.h"

namespace openmoe::tools {
namespace {

constexpr int kWidth = 800, kHeight = 450, kMargin = 40;

uint32_t Crc32(const uint8_t* data, size_t n, uint32_t crc = 0xFFFFFFFFu) {
  for (size_t i = 0; i < n; ++i) {
    crc ^= data[i];
    for (int k = 0; k < 8; ++k) crc = (crc >> 1) ^ (0xEDB88320u & (0u - (crc & 1u)));
  }
  return crc;
}

void Put32(std::string& out, uint32_t v) {
  for (int s = 24; s >= 0; s -= 8) out.push_back(char((v >> s) & 0xFF));
}

void Chunk(std::string& png, const char* type, const std::string& data) {
  Put32(png, uint32_t(data.size()));
  const std::string body = std::string(type, 4) + data;
  png += body;
  Put32(png, Crc32(reinterpret_cast<const uint8_t*>(body.data()), body.size()) ^ 0xFFFFFFFFu);
}

// zlib stream of stored blocks (<= 65535 bytes each) with its Adler-32.
std::string ZlibStored(const std::string& raw) {
  std::string z = "\x78\x01";
  size_t pos = 0;
  do {
    const size_t n = std::min<size_t>(65535, raw.size() - pos);
    z.push_back(char(pos + n == raw.size() ? 1 : 0));
    z.push_back(char(n & 0xFF)), z.push_back(char(n >> 8));
    z.push_back(char(~n & 0xFF)), z.push_back(char((~n >> 8) & 0xFF));
    z += raw.substr(pos, n);
    pos += n;
  } while (pos < raw.size());
  uint32_t a = 1, b = 0;
  for (unsigned char c : raw) a = (a + c) % 65521, b = (b + a) % 65521;
  Put32(z, (b << 16) | a);
  return z;
}

}  // namespace

absl::Status WriteLossCurvePng(const std::string& path, const std::vector<double>& losses) {
  std::vector<uint8_t> rgb(size_t(kWidth) * kHeight * 3, 255);
  auto plot = [&](int x, int y, uint8_t r, uint8_t g, uint8_t b) {
    if (x < 0 || y < 0 || x >= kWidth || y >= kHeight) return;
    uint8_t* p = &rgb[(size_t(y) * kWidth + x) * 3];
    p[0] = r, p[1] = g, p[2] = b;
  };
  auto line = [&](double x0, double y0, double x1, double y1, uint8_t r, uint8_t g, uint8_t b) {
    const int steps = int(std::max(std::fabs(x1 - x0), std::fabs(y1 - y0))) + 1;
    for (int i = 0; i <= steps; ++i) {
      const double t = double(i) / steps;
      for (int d = 0; d < 2; ++d) plot(int(x0 + t * (x1 - x0)) + d, int(y0 + t * (y1 - y0)), r, g, b);
    }
  };
  // Axes and ten tick marks on each.
  line(kMargin, kMargin, kMargin, kHeight - kMargin, 0, 0, 0);
  line(kMargin, kHeight - kMargin, kWidth - kMargin, kHeight - kMargin, 0, 0, 0);
  for (int i = 0; i <= 10; ++i) {
    const double x = kMargin + i * (kWidth - 2.0 * kMargin) / 10, y = kMargin + i * (kHeight - 2.0 * kMargin) / 10;
    line(x, kHeight - kMargin, x, kHeight - kMargin + 6, 0, 0, 0);
    line(kMargin - 6, y, kMargin, y, 0, 0, 0);
  }
  std::vector<double> finite;
  for (double l : losses)
    if (std::isfinite(l)) finite.push_back(l);
  if (finite.size() >= 2) {
    const double lo = *std::min_element(finite.begin(), finite.end());
    const double hi = std::max(lo + 1e-9, *std::max_element(finite.begin(), finite.end()));
    auto px = [&](size_t i) { return kMargin + double(i) * (kWidth - 2.0 * kMargin) / double(finite.size() - 1); };
    auto py = [&](double l) { return kHeight - kMargin - (l - lo) / (hi - lo) * (kHeight - 2.0 * kMargin); };
    std::vector<double> smooth(finite.size());
    double avg = finite[0];
    for (size_t i = 0; i < finite.size(); ++i) smooth[i] = avg = 0.9 * avg + 0.1 * finite[i];
    for (size_t i = 1; i < finite.size(); ++i) line(px(i - 1), py(finite[i - 1]), px(i), py(finite[i]), 90, 140, 230);
    for (size_t i = 1; i < finite.size(); ++i) line(px(i - 1), py(smooth[i - 1]), px(i), py(smooth[i]), 210, 40, 40);
  }
  std::string raw;
  raw.reserve(size_t(kHeight) * (kWidth * 3 + 1));
  for (int y = 0; y < kHeight; ++y) {
    raw.push_back(0);  // filter: none
    raw.append(reinterpret_cast<const char*>(&rgb[size_t(y) * kWidth * 3]), size_t(kWidth) * 3);
  }
  std::string png = "\x89PNG\r\n\x1a\n", header;
  Put32(header, kWidth), Put32(header, kHeight);
  header += std::string("\x08\x02\x00\x00\x00", 5);  // 8-bit RGB
  Chunk(png, "IHDR", header);
  Chunk(png, "IDAT", ZlibStored(raw));
  Chunk(png, "IEND", "");
  std::ofstream out(path, std::ios::binary);
  out << png;
  if (!out) return absl::UnavailableError(absl::StrCat("cannot write '", path, "'"));
  return absl::OkStatus();
}

}  // namespace openmoe::tools

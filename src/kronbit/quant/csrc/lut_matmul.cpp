// Lookup-table matmul for bit-plane weights (see kronbit/quant/pack.py for the arithmetic).
//
// For each token: build one 256-entry table per group of 8 inputs (T[m] = sum of the inputs whose
// bit is set in m; 255 additions per group), then every output row adds one table entry per group
// and plane. The weights stay packed: one byte covers 8 weights of one plane.
#include <torch/extension.h>
#include <ATen/Parallel.h>
#include <vector>

torch::Tensor lut_matmul(torch::Tensor x, torch::Tensor planes) {
  TORCH_CHECK(x.dim() == 2 && x.scalar_type() == torch::kFloat32 && x.is_contiguous(),
              "x must be a contiguous 2-D float32 tensor");
  TORCH_CHECK(planes.dim() == 3 && planes.scalar_type() == torch::kUInt8 && planes.is_contiguous(),
              "planes must be a contiguous (bits, out, groups) uint8 tensor");
  const int64_t T = x.size(0), in = x.size(1);
  const int64_t bits = planes.size(0), out = planes.size(1), G = planes.size(2);
  TORCH_CHECK(G * 8 >= in && (G - 1) * 8 < in, "planes do not match the input width");
  auto y = torch::empty({T, out}, x.options());
  const float* xp = x.data_ptr<float>();
  const uint8_t* pp = planes.data_ptr<uint8_t>();
  float* yp = y.data_ptr<float>();
  std::vector<float> table(G * 256);
  for (int64_t t = 0; t < T; ++t) {
    const float* xt = xp + t * in;
    // tables in parallel too: for a wide input (3072) building them is a third of the work
    at::parallel_for(0, G, 16, [&](int64_t gs, int64_t ge) {
      for (int64_t g = gs; g < ge; ++g) {
        float v[8];
        for (int i = 0; i < 8; ++i) v[i] = (g * 8 + i < in) ? xt[g * 8 + i] : 0.f;
        float* tb = table.data() + g * 256;
        tb[0] = 0.f;
        for (int m = 1; m < 256; ++m) tb[m] = tb[m & (m - 1)] + v[__builtin_ctz(m)];
      }
    });
    const float* tab = table.data();
    float* yt = yp + t * out;
    at::parallel_for(0, out, 16, [&](int64_t s, int64_t e) {
      for (int64_t o = s; o < e; ++o) {
        float acc = 0.f;
        for (int64_t b = 0; b < bits; ++b) {
          const uint8_t* row = pp + (b * out + o) * G;
          // four independent accumulators: the lookups do not wait on each other
          float a0 = 0.f, a1 = 0.f, a2 = 0.f, a3 = 0.f;
          int64_t g = 0;
          for (; g + 4 <= G; g += 4) {
            a0 += tab[(g + 0) * 256 + row[g + 0]];
            a1 += tab[(g + 1) * 256 + row[g + 1]];
            a2 += tab[(g + 2) * 256 + row[g + 2]];
            a3 += tab[(g + 3) * 256 + row[g + 3]];
          }
          for (; g < G; ++g) a0 += tab[g * 256 + row[g]];
          acc += static_cast<float>(1 << b) * ((a0 + a1) + (a2 + a3));
        }
        yt[o] = acc;
      }
    });
  }
  return y;
}

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.def("lut_matmul", &lut_matmul, "LUT matmul over bit-plane weights (float32 activations)");
}

// Torch bindings of the bit-level kernels: run-time path selection (from the CPU's flags, never
// from the build machine's: every vector path is compiled with function-level target attributes),
// threading (at::parallel_for over output blocks, tokens in chunks so a chunk's activations stay in
// L2 while the thread walks its weight blocks), and the fused linear layers:
//   binary_linear:  sign(x - beta) packed to bits, XOR-popcount GEMM, y = alpha*s_o * D + b;
//   ternary_linear: 8-bit symmetric min-max quantization of x, 2-bit x int8 GEMM, y = s*a_o * D + b.
#include <torch/extension.h>
#include <ATen/Parallel.h>

#include <algorithm>
#include <atomic>
#include <cmath>
#include <limits>
#include <type_traits>
#include <vector>

#include "bitkernels.h"

namespace kb {

bool cpu_has(Path p, bool binary) {
#if KB_X86
  __builtin_cpu_init();
  const bool avx512 = __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
                      __builtin_cpu_supports("avx512vl") && __builtin_cpu_supports("avx512dq");
  switch (p) {
    case PORTABLE: return true;
    case AVX2: return __builtin_cpu_supports("avx2");
    case AVXVNNI: return !binary && __builtin_cpu_supports("avx2") && __builtin_cpu_supports("avxvnni");
    case AVX512:
      return avx512 && (binary ? __builtin_cpu_supports("avx512vpopcntdq") : __builtin_cpu_supports("avx512vnni"));
  }
  return false;
#else
  return p == PORTABLE;
#endif
}

}  // namespace kb

namespace {

using namespace kb;

constexpr float kEps = 1e-8f;            // quantizers.EPS: the smallest scale
constexpr int64_t kTokenChunk = 128;     // tokens whose activations a thread keeps hot in L2

int resolve(int64_t path, bool binary) {
  if (path < 0) {
    for (Path p : {AVX512, AVXVNNI, AVX2})
      if (cpu_has(p, binary)) return p;
    return PORTABLE;
  }
  TORCH_CHECK(path <= AVX512 && cpu_has(static_cast<Path>(path), binary), "kernel path ", path,
              " is not available on this CPU for the ", binary ? "binary" : "ternary", " kernel");
  return static_cast<int>(path);
}

std::vector<int64_t> available(bool binary) {
  std::vector<int64_t> out;
  for (Path p : {PORTABLE, AVX2, AVXVNNI, AVX512})
    if (cpu_has(p, binary)) out.push_back(p);
  return out;
}

void check_f32(const torch::Tensor& t, const char* name) {
  TORCH_CHECK(t.scalar_type() == torch::kFloat32 && t.is_contiguous() && t.device().is_cpu(), name,
              " must be a contiguous float32 CPU tensor");
}

// v[o] = a * s[o] (one float32 multiply, as the fake-quant product of the two levels)
std::vector<float> out_scales(float a, const torch::Tensor& wscale, int64_t O) {
  check_f32(wscale, "wscale");
  TORCH_CHECK(wscale.numel() == 1 || wscale.numel() == O, "wscale must have 1 or out_features elements");
  const float* s = wscale.data_ptr<float>();
  std::vector<float> v(O);
  for (int64_t o = 0; o < O; ++o) v[o] = a * s[wscale.numel() == 1 ? 0 : o];
  return v;
}

const float* bias_ptr(const c10::optional<torch::Tensor>& bias, int64_t O) {
  if (!bias.has_value() || !bias->defined()) return nullptr;
  check_f32(*bias, "bias");
  TORCH_CHECK(bias->numel() == O, "bias must have out_features elements");
  return bias->data_ptr<float>();
}

// ---- binary -----------------------------------------------------------------------------------

torch::Tensor pack_signs(torch::Tensor x, torch::Tensor beta, int64_t path) {
  check_f32(x, "x");
  check_f32(beta, "beta");
  TORCH_CHECK(x.dim() == 2, "x must be (tokens, features)");
  const int64_t T = x.size(0), K = x.size(1), KW = (K + 63) / 64;
  TORCH_CHECK(beta.numel() == 1 || beta.numel() == K, "beta must have 1 or in_features elements");
  const int p = resolve(path, true);
  auto out = torch::empty({T, KW}, x.options().dtype(torch::kInt64));
  const float* xp = x.data_ptr<float>();
  const float* bp = beta.data_ptr<float>();
  auto* op = reinterpret_cast<uint64_t*>(out.data_ptr<int64_t>());
  const bool vec = beta.numel() == K && K > 1;
  at::parallel_for(0, T, 64, [&](int64_t t0, int64_t t1) {
    for (int64_t t = t0; t < t1; ++t) {
      if (p >= AVX2) pack_signs_avx2(xp + t * K, bp, vec, K, KW, op + t * KW);
      else pack_signs_portable(xp + t * K, bp, vec, K, KW, op + t * KW);
    }
  });
  return out;
}

// Bits of round(clamp((x - beta) / alpha, 0, 1)): 1 iff (x - beta) / alpha > 0.5. beta: empty (no
// offset), one value or one per feature.
torch::Tensor pack_unsigned(torch::Tensor x, torch::Tensor beta, double alpha, int64_t path) {
  check_f32(x, "x");
  check_f32(beta, "beta");
  TORCH_CHECK(x.dim() == 2, "x must be (tokens, features)");
  const int64_t T = x.size(0), K = x.size(1), KW = (K + 63) / 64;
  TORCH_CHECK(beta.numel() <= 1 || beta.numel() == K, "beta must have 0, 1 or in_features elements");
  auto out = torch::empty({T, KW}, x.options().dtype(torch::kInt64));
  const float* xp = x.data_ptr<float>();
  const float* bp = beta.numel() ? beta.data_ptr<float>() : nullptr;
  const bool vec = beta.numel() == K && K > 1;
  auto* op = reinterpret_cast<uint64_t*>(out.data_ptr<int64_t>());
  const float a = static_cast<float>(alpha);
  const bool v512 = resolve(path, true) == AVX512;
  at::parallel_for(0, T, 64, [&](int64_t t0, int64_t t1) {
    for (int64_t t = t0; t < t1; ++t) {
      if (v512) pack_unsigned_avx512(xp + t * K, bp, vec, a, K, KW, op + t * KW);
      else if (bp) pack_unsigned_offset_portable(xp + t * K, bp, vec, a, K, KW, op + t * KW);
      else pack_unsigned_portable(xp + t * K, a, K, KW, op + t * KW);
    }
  });
  return out;
}

// The words-layout tile kernels over tokens [0, T) and output blocks [0, nb) on this thread.
void counts_words(int p, const uint64_t* act, int64_t T, int64_t KW, const uint64_t* w, int64_t b0, int64_t b1,
                  int mode, const Epi& e, int64_t O, int64_t t0 = 0) {
  if (p == AVX512) binary_counts_avx512(act, t0, T, KW, w, b0, b1, mode, e, O);
  else binary_counts_portable(act, t0, T, KW, w, b0, b1, mode, e, O);
}

void run_binary(const uint64_t* act, int64_t T, int64_t KW, int mode, const torch::Tensor& w, int64_t O, int p,
                const Epi& e) {
  if (p == AVX2) {
    TORCH_CHECK(w.scalar_type() == torch::kUInt8 && w.numel() == (O + 63) / 64 * 16 * KW * 32,
                "weights are not in the avx2 (nibble) layout for this shape");
    const int64_t G = 16 * KW, tiles = (T + kTileTokens - 1) / kTileTokens;
    std::vector<uint16_t> offs(tiles * G * kTileTokens);
    at::parallel_for(0, tiles, 8, [&](int64_t i0, int64_t i1) {
      for (int64_t tile = i0; tile < i1; ++tile) {
        uint16_t* q = offs.data() + tile * G * kTileTokens;
        for (int i = 0; i < kTileTokens; ++i) {
          const int64_t t = tile * kTileTokens + i;
          const auto* bytes = reinterpret_cast<const uint8_t*>(act + std::min(t, T - 1) * KW);
          for (int64_t g = 0; g < G; ++g) {
            const int nib = t >= T ? 0 : (g & 1) ? (bytes[g >> 1] >> 4) : (bytes[g >> 1] & 15);
            q[g * kTileTokens + i] = static_cast<uint16_t>(mode * 512 + nib * 32);
          }
        }
      }
    });
    const auto* wp = w.data_ptr<uint8_t>();
    const int64_t chunk = kTokenChunk / kTileTokens;  // tiles a thread keeps hot while it walks its blocks
    at::parallel_for(0, (O + 63) / 64, 1, [&](int64_t b0, int64_t b1) {
      for (int64_t i = 0; i < tiles; i += chunk)
        binary_counts_avx2(offs.data(), i, std::min(tiles, i + chunk), T, KW, wp, b0, b1, mode, e, O);
    });
    return;
  }
  TORCH_CHECK(w.scalar_type() == torch::kInt64 && w.numel() == (O + 7) / 8 * KW * 8,
              "weights are not in the words layout for this shape");
  const auto* wp = reinterpret_cast<const uint64_t*>(w.data_ptr<int64_t>());
  const int64_t units = (O + 8 * kAvx512TileBlocks - 1) / (8 * kAvx512TileBlocks);  // the avx512 tile's rows
  at::parallel_for(0, units, 1, [&](int64_t u0, int64_t u1) {
    const int64_t b0 = u0 * kAvx512TileBlocks, b1 = std::min((O + 7) / 8, u1 * kAvx512TileBlocks);
    for (int64_t t = 0; t < T; t += kTokenChunk) {
      const int64_t t1 = std::min(T, t + kTokenChunk);
      counts_words(p, act, t1, KW, wp, b0, b1, mode, e, O, t);
    }
  });
}

void check_act(const torch::Tensor& act, int64_t K, int64_t mode) {
  TORCH_CHECK(act.scalar_type() == torch::kInt64 && act.is_contiguous() && act.dim() == 2, "act must be (T, KW) int64");
  TORCH_CHECK(mode == 0 || mode == 1, "mode must be 0 (xor) or 1 (and)");
  TORCH_CHECK(K > 0 && K < 65536 && act.size(1) == (K + 63) / 64, "act does not match in_features");
}

// off[t] of D = off + mul * count: K (xor: D = K - 2 popcount) or -popcount(A) (and: 2 popcount - popcount(A)).
std::vector<int32_t> binary_offsets(const uint64_t* ap, int64_t T, int64_t KW, int64_t K, int64_t mode) {
  std::vector<int32_t> off(T, static_cast<int32_t>(K));
  if (mode == 1)
    for (int64_t t = 0; t < T; ++t) {
      int32_t c = 0;
      for (int64_t k = 0; k < KW; ++k) c += __builtin_popcountll(ap[t * KW + k]);
      off[t] = -c;
    }
  return off;
}

// D = K - 2 popcount(A xor W) (mode 0) or 2 popcount(A and W) - popcount(A) (mode 1); returns
// y = v * D (+ bias), or D itself with return_d.
torch::Tensor binary_gemm(torch::Tensor act, int64_t K, int64_t mode, torch::Tensor w, int64_t O, torch::Tensor v,
                          c10::optional<torch::Tensor> bias, int64_t path, bool return_d) {
  check_act(act, K, mode);
  check_f32(v, "v");
  TORCH_CHECK(v.numel() == O || (return_d && v.numel() == 0), "v must have out_features elements");
  const int p = resolve(path, true);
  const int64_t T = act.size(0), KW = act.size(1);
  const auto* ap = reinterpret_cast<const uint64_t*>(act.data_ptr<int64_t>());
  auto off = binary_offsets(ap, T, KW, K, mode);
  auto out = torch::empty({T, O}, act.options().dtype(return_d ? torch::kInt32 : torch::kFloat32));
  Epi e{off.data(), mode == 0 ? -2 : 2, v.data_ptr<float>(), bias_ptr(bias, O),
        return_d ? nullptr : out.data_ptr<float>(), return_d ? out.data_ptr<int32_t>() : nullptr, O};
  run_binary(ap, T, KW, static_cast<int>(mode), w, O, p, e);
  return out;
}

// The bits epilogue: bit o of row t = (D <= lo[o] || D >= hi[o]), as (T, ceil(O/64)) int64 words
// (zero past O): the next binary layer's packed input, the float output never written.
torch::Tensor binary_gemm_bits(torch::Tensor act, int64_t K, int64_t mode, torch::Tensor w, int64_t O,
                               torch::Tensor lo, torch::Tensor hi, int64_t path) {
  check_act(act, K, mode);
  for (const auto* t : {&lo, &hi})
    TORCH_CHECK(t->scalar_type() == torch::kInt32 && t->is_contiguous() && t->numel() == O,
                "lo / hi must be (out_features,) int32");
  const int p = resolve(path, true);
  const int64_t T = act.size(0), KW = act.size(1), OW = (O + 63) / 64;
  const auto* ap = reinterpret_cast<const uint64_t*>(act.data_ptr<int64_t>());
  auto off = binary_offsets(ap, T, KW, K, mode);
  auto out = torch::zeros({T, OW}, act.options());
  Epi e{off.data(), mode == 0 ? -2 : 2, nullptr, nullptr, nullptr, nullptr, O};
  e.lo = lo.data_ptr<int32_t>();
  e.hi = hi.data_ptr<int32_t>();
  e.bits = reinterpret_cast<uint8_t*>(out.data_ptr<int64_t>());
  e.ldb = OW * 8;
  run_binary(ap, T, KW, static_cast<int>(mode), w, O, p, e);
  return out;
}

// Every value the W1A1 epilogue can produce: y[c][o] = float(K - 2c) * v[o] (+ bias[o]) for
// c = 0..K, the same float operations as finish() (the caller maps them through the next
// layer's activation and binarizer to find the thresholds of binary_gemm_bits).
torch::Tensor binary_levels(int64_t K, torch::Tensor alpha, torch::Tensor wscale, c10::optional<torch::Tensor> bias,
                            int64_t O) {
  check_f32(alpha, "alpha");
  TORCH_CHECK(K > 0 && K < 65536, "in_features must be below 65536");
  auto vs = out_scales(std::max(alpha.data_ptr<float>()[0], kEps), wscale, O);
  const float* b = bias_ptr(bias, O);
  auto out = torch::empty({K + 1, O}, alpha.options());
  float* y = out.data_ptr<float>();
  for (int64_t c = 0; c <= K; ++c) {
    const float d = static_cast<float>(static_cast<int32_t>(K - 2 * c));
    for (int64_t o = 0; o < O; ++o) y[c * O + o] = b ? d * vs[o] + b[o] : d * vs[o];
  }
  return out;
}

torch::Tensor binary_linear_words(torch::Tensor act, int64_t K, torch::Tensor alpha, torch::Tensor w, int64_t O,
                                  torch::Tensor wscale, c10::optional<torch::Tensor> bias, int64_t path,
                                  int64_t mode);

// The W1A1 layer: x (T, K) float32, elastic binarizer (alpha, beta), ±1 weights with scales.
torch::Tensor binary_linear(torch::Tensor x, torch::Tensor beta, torch::Tensor alpha, torch::Tensor w, int64_t O,
                            torch::Tensor wscale, c10::optional<torch::Tensor> bias, int64_t path) {
  const int64_t K = x.size(1);
  TORCH_CHECK(K > 0 && K < 65536, "in_features must be below 65536");
  return binary_linear_words(pack_signs(x, beta, path), K, alpha, w, O, wscale, bias, path, 0);
}

// The W1A1 layer whose input binarizer is unsigned ({0, alpha}: BiT's FFN activations): AND-popcount.
torch::Tensor binary_linear_unsigned(torch::Tensor x, torch::Tensor beta, torch::Tensor alpha, torch::Tensor w,
                                     int64_t O, torch::Tensor wscale, c10::optional<torch::Tensor> bias, int64_t path) {
  const int64_t K = x.size(1);
  TORCH_CHECK(K > 0 && K < 65536, "in_features must be below 65536");
  check_f32(alpha, "alpha");
  const float a = std::max(alpha.data_ptr<float>()[0], kEps);
  return binary_linear_words(pack_unsigned(x, beta, a, path), K, alpha, w, O, wscale, bias, path, 1);
}

// The W1A1 layer from its input's bits already packed (binary_gemm_bits of the layer before):
// signs (mode 0, XOR) or {0, 1} bits of an unsigned binarizer (mode 1, AND).
torch::Tensor binary_linear_words(torch::Tensor act, int64_t K, torch::Tensor alpha, torch::Tensor w, int64_t O,
                                  torch::Tensor wscale, c10::optional<torch::Tensor> bias, int64_t path,
                                  int64_t mode) {
  check_f32(alpha, "alpha");
  const float a = std::max(alpha.data_ptr<float>()[0], kEps);  // alpha.clamp_min(EPS)
  auto vs = out_scales(a, wscale, O);
  auto v = torch::from_blob(vs.data(), {O}, torch::kFloat32);
  return binary_gemm(act, K, mode, w, O, v, bias, path, false);
}

// The W1A1 layer whose output goes through an elementwise function into the next layer's binarizer:
// its sign bits, packed, from thresholds on D (binary_levels).
torch::Tensor binary_linear_bits(torch::Tensor x, torch::Tensor beta, torch::Tensor w, int64_t O, torch::Tensor lo,
                                 torch::Tensor hi, int64_t path) {
  return binary_gemm_bits(pack_signs(x, beta, path), x.size(1), 0, w, O, lo, hi, path);
}

// A W1A1 linear whose output goes through a signed binarizer pm·sign(y - beta_out) (BiT's Q, K, V):
// that sign is a function of D alone, so the epilogue compares D with per-output thresholds (found
// by the caller from every epilogue value, as for binary_linear_bits); the float y, the offset
// subtraction and the sign never run. ``dtype``: float32 (write ±pm) or uint8 (write the sign byte,
// 1 = +pm, 0 = -pm, for the one-pass attention: a quarter of the float traffic, both ways).
static torch::Tensor binary_linear_threshold(const torch::Tensor& x, const torch::Tensor& beta, const torch::Tensor& w,
                                             int64_t O, const torch::Tensor& lo, const torch::Tensor& hi, double pm,
                                             torch::ScalarType dtype, int64_t path) {
  auto act = pack_signs(x, beta, path);
  const int64_t K = x.size(1);
  check_act(act, K, 0);
  for (const auto* t : {&lo, &hi})
    TORCH_CHECK(t->scalar_type() == torch::kInt32 && t->is_contiguous() && t->numel() == O,
                "lo / hi must be (out_features,) int32");
  const int p = resolve(path, true);
  const int64_t T = act.size(0), KW = act.size(1);
  const auto* ap = reinterpret_cast<const uint64_t*>(act.data_ptr<int64_t>());
  auto off = binary_offsets(ap, T, KW, K, 0);
  auto out = torch::empty({T, O}, x.options().dtype(dtype));
  Epi e{off.data(), -2, nullptr, nullptr, nullptr, nullptr, O};
  e.lo = lo.data_ptr<int32_t>();
  e.hi = hi.data_ptr<int32_t>();
  if (dtype == torch::kUInt8) {
    e.signs = out.data_ptr<uint8_t>();
  } else {
    e.y = out.data_ptr<float>();
    e.pm = static_cast<float>(pm);
  }
  run_binary(ap, T, KW, 0, w, O, p, e);
  return out;
}

torch::Tensor binary_linear_pm(torch::Tensor x, torch::Tensor beta, torch::Tensor w, int64_t O, torch::Tensor lo,
                               torch::Tensor hi, double pm, int64_t path) {
  TORCH_CHECK(pm > 0, "the output scale must be positive");
  return binary_linear_threshold(x, beta, w, O, lo, hi, pm, torch::kFloat32, path);
}

torch::Tensor binary_linear_signs(torch::Tensor x, torch::Tensor beta, torch::Tensor w, int64_t O, torch::Tensor lo,
                                  torch::Tensor hi, int64_t path) {
  return binary_linear_threshold(x, beta, w, O, lo, hi, 1.0, torch::kUInt8, path);
}

// ---- binary attention (BiT's true W1A1) --------------------------------------------------------
// Both attention matmuls of a head whose inputs are binary: scores = Q K^T with Q, K in {-a, +a}
// (XOR-popcount over the head dimension) and out = P V with P in {0, a_p} (the unsigned binarizer's
// bit, p / a_p > 0.5) and V in {-a, +a} (AND-popcount over the keys). Every (batch, head) runs the
// binary GEMM tiles above on its own operands, one (batch, head) per task of the parallel loop.
// The operands are read from float tensors: a head's sign bits are packed here (Q, P: rows of the
// GEMM's activations; K, V^T: its "weights", in the words layout).

// Words layout ([rows/8][KW][8]) of the sign bits (x > 0 -> 1; x = ±a) of rows of a (rows, K) float
// block with row stride ld and element stride es: the rows are K's keys (es = 1) or V's features (V
// read down its columns).
static void pack_rows_words(const float* x, int64_t rows, int64_t K, int64_t ld, int64_t es, uint64_t* out,
                            bool avx2 = false) {
  const int64_t KW = (K + 63) / 64, nb = (rows + 7) / 8;
  std::memset(out, 0, sizeof(uint64_t) * nb * KW * 8);
  if (es == 1 && avx2 && KW <= 64) {  // contiguous rows: the vector sign packing (x = ±a, so sign = x > 0)
    const float zero = 0.f;
    uint64_t row_words[64];
    for (int64_t r = 0; r < rows; ++r) {
      pack_signs_avx2(x + r * ld, &zero, false, K, KW, row_words);
      uint64_t* dst = out + (r / 8) * KW * 8 + (r % 8);
      for (int64_t w = 0; w < KW; ++w) dst[w * 8] = row_words[w];
    }
    return;
  }
  for (int64_t r = 0; r < rows; ++r) {  // branch-free: the signs of trained activations are a coin toss
    uint64_t* dst = out + (r / 8) * KW * 8 + (r % 8);
    const float* row = x + r * ld;
    for (int64_t w = 0; w < KW; ++w) {
      uint64_t word = 0;
      const int64_t k0 = w * 64, k1 = std::min<int64_t>(K, k0 + 64);
      for (int64_t k = k0; k < k1; ++k) word |= static_cast<uint64_t>(row[k * es] > 0.f) << (k - k0);
      dst[w * 8] = word;
    }
  }
}

// True when every element of the (n, K) block (row stride ld) is +a or -a: the operand is binary.
static bool all_pm_block(const float* x, int64_t n, int64_t K, int64_t ld, float a) {
  int bad = 0;  // no early exit: a branch per element on random signs mispredicts half the time
  for (int64_t i = 0; i < n; ++i) {
    const float* row = x + i * ld;
    for (int64_t k = 0; k < K; ++k) bad |= std::fabs(row[k]) != a;
  }
  return bad == 0;
}

// A (batch, heads, seq, head_dim) operand as strides: the projections' outputs arrive as a
// transposed view of (batch, seq, heads, head_dim), read in place (a contiguous copy of every Q, K
// and V cost more than the kernels at batch 1). Only head_dim must be contiguous.
template <typename T>
struct HeadsOf {
  const T* p;
  int64_t B, H, S, D, sb, sh, ss;
  HeadsOf(const torch::Tensor& t, const char* name) {
    constexpr bool f32 = std::is_same<T, float>::value;
    TORCH_CHECK(t.scalar_type() == (f32 ? torch::kFloat32 : torch::kUInt8) && t.device().is_cpu() && t.dim() == 4,
                name, " must be a (batch, heads, seq, head_dim) ", f32 ? "float32" : "uint8", " CPU tensor");
    TORCH_CHECK(t.size(3) <= 1 || t.stride(3) == 1, name, "'s head_dim must be contiguous");
    p = t.data_ptr<T>();
    B = t.size(0), H = t.size(1), S = t.size(2), D = t.size(3);
    sb = t.stride(0), sh = t.stride(1), ss = t.stride(2);
  }
  const T* head(int64_t b, int64_t h) const { return p + b * sb + h * sh; }
  // every element ±a, over all heads in parallel
  bool all_pm(float a) const {
    return at::parallel_reduce(0, B * H, 1, true, [&](int64_t i0, int64_t i1, bool ok) {
      for (int64_t i = i0; i < i1 && ok; ++i) ok = all_pm_block(head(i / H, i % H), S, D, ss, a);
      return ok;
    }, [](bool u, bool v) { return u && v; });
  }
};
using Heads = HeadsOf<float>;

// scores (B, H, S, Skv) float32 = c * (Q_bits . K_bits), the integer dot product of the signs
// exact, or an empty tensor when Q or K is not binary (every element ±|first|). K may have fewer
// heads (grouped queries: head h reads K head h / (H / Hk)). c: the caller's scale (a_q a_k scaling).
torch::Tensor binary_attention_scores(torch::Tensor q, torch::Tensor k, double c, int64_t path) {
  const Heads Q(q, "q"), Kh(k, "k");
  const int64_t B = Q.B, H = Q.H, S = Q.S, D = Q.D, Hk = Kh.H, Skv = Kh.S;
  TORCH_CHECK(Kh.B == B && Kh.D == D && Hk > 0 && H % Hk == 0, "k does not match q");
  TORCH_CHECK(D > 0 && D < 65536, "head_dim must be below 65536");
  const int r = resolve(path, true), p = r == AVX512 ? AVX512 : PORTABLE;  // the words layout's paths
  const bool avx2 = r >= AVX2;  // the sign packing's vector path (the same bits)
  const float aq = std::fabs(Q.head(0, 0)[0]), ak = std::fabs(Kh.head(0, 0)[0]);
  const bool binary = aq > 0.f && ak > 0.f && Q.all_pm(aq) && Kh.all_pm(ak);
  if (!binary) return torch::empty({0}, q.options());
  const int64_t KW = (D + 63) / 64, nb = (Skv + 7) / 8;
  auto out = torch::empty({B, H, S, Skv}, q.options());
  float* op = out.data_ptr<float>();
  std::vector<float> v(nb * 8, static_cast<float>(c));
  at::parallel_for(0, B * H, 1, [&](int64_t i0, int64_t i1) {
    std::vector<uint64_t> act(S * KW), w(nb * KW * 8);
    std::vector<int32_t> off(S, static_cast<int32_t>(D));
    const float zero = 0.f;
    for (int64_t bh = i0; bh < i1; ++bh) {
      const int64_t b = bh / H, h = bh % H, hk = h / (H / Hk);
      const float* qh = Q.head(b, h);
      for (int64_t t = 0; t < S; ++t) {
        if (avx2) pack_signs_avx2(qh + t * Q.ss, &zero, false, D, KW, act.data() + t * KW);
        else pack_signs_portable(qh + t * Q.ss, &zero, false, D, KW, act.data() + t * KW);
      }
      pack_rows_words(Kh.head(b, hk), Skv, D, Kh.ss, 1, w.data(), avx2);
      Epi e{off.data(), -2, v.data(), nullptr, op + bh * S * Skv, nullptr, Skv};
      counts_words(p, act.data(), S, KW, w.data(), 0, nb, 0, e, Skv);
    }
  });
  return out;
}

// out = c * (P_bits . V_signs) per head: P's bits are p / alpha > 0.5 (the 1-bit unsigned elastic
// binarizer, ElasticUnsignedAct without offset), V's signs ±|first|; AND-popcount over the keys,
// D = 2 popcount(P and V+) - popcount(P) exact. Returned as a (B, H, S, D) view of a (B, S, H, D)
// tensor: the layout the attention's output projection reads, so no transpose copy follows. Empty
// when V is not binary.
torch::Tensor binary_attention_values(torch::Tensor probs, double alpha, torch::Tensor v, double c, int64_t path) {
  check_f32(probs, "probs");
  TORCH_CHECK(probs.dim() == 4, "probs must be (batch, heads, seq, key_len)");
  const Heads V(v, "v");
  const int64_t B = probs.size(0), H = probs.size(1), S = probs.size(2), Skv = probs.size(3);
  const int64_t Hk = V.H, D = V.D;
  TORCH_CHECK(V.B == B && V.S == Skv && Hk > 0 && H % Hk == 0, "v does not match probs");
  TORCH_CHECK(Skv > 0 && Skv < 65536, "the key length must be below 65536");
  const int p = resolve(path, true) == AVX512 ? AVX512 : PORTABLE;
  const float* pp = probs.data_ptr<float>();
  const float av = std::fabs(V.head(0, 0)[0]);
  if (!(av > 0.f) || !V.all_pm(av)) return torch::empty({0}, probs.options());
  const float a = static_cast<float>(alpha);
  const int64_t KW = (Skv + 63) / 64, nb = (D + 7) / 8;
  auto out = torch::empty({B, S, H, D}, probs.options());
  float* op = out.data_ptr<float>();
  std::vector<float> scale(nb * 8, static_cast<float>(c));
  at::parallel_for(0, B * H, 1, [&](int64_t i0, int64_t i1) {
    std::vector<uint64_t> act(S * KW), w(nb * KW * 8);
    for (int64_t bh = i0; bh < i1; ++bh) {
      const int64_t b = bh / H, h = bh % H, hk = h / (H / Hk);
      for (int64_t t = 0; t < S; ++t) {
        if (p == AVX512) pack_unsigned_avx512(pp + (bh * S + t) * Skv, nullptr, false, a, Skv, KW, act.data() + t * KW);
        else pack_unsigned_portable(pp + (bh * S + t) * Skv, a, Skv, KW, act.data() + t * KW);
      }
      const auto off = binary_offsets(act.data(), S, KW, Skv, 1);  // -popcount(P) per query
      // V^T: row d = feature d over the keys (column d of V, element stride = V's key stride)
      pack_rows_words(V.head(b, hk), D, Skv, 1, V.ss, w.data());
      Epi e{off.data(), 2, scale.data(), nullptr, op + (b * S * H + h) * D, nullptr, H * D};
      counts_words(p, act.data(), S, KW, w.data(), 0, nb, 1, e, D);
    }
  });
  return out.transpose(1, 2);
}

// The whole binary attention of a head in one pass, for a key-padding mask (or none): the scores
// never exist as floats and the softmax never runs. A query row's scores are c * d_j with d_j the
// integer dot product of the signs (d in {-D, -D+2, ..., D}), so its softmax is
// p_j = e^(c (d_j - dmax)) / Z with Z the sum of those terms over the row's real keys, and the
// 1-bit unsigned binarizer keeps p_j / alpha > 0.5, i.e. e^(c (d_j - dmax)) > alpha Z / 2: one
// integer threshold per row, every key at or above it a 1. The terms come from a table of
// e^(-2 c k), k = (dmax - d) / 2, made once per call; Z is summed in 2^-46 fixed point, so its
// value does not depend on the order of the sum and every vector path makes the same bits (the
// popcounts are exact too). Against the float path (scores, softmax and binarizer in float32) a
// bit can differ only where p / alpha is within float32 rounding of 0.5.
//
// valid: (B, Skv) uint8 (1 = a real key) or empty (every key real). A batch row with no real key,
// or an operand that is not binary, returns an empty tensor (the float path then runs; its softmax
// over a fully masked row is uniform). Output as binary_attention_values: a (B, H, S, D) view of a
// (B, S, H, D) tensor.

// Transpose a 64 x 64 bit matrix in place: bit c of word r becomes bit r of word c (LSB first).
// Six rounds of block swaps (Hacker's Delight, 7-3), each swapping the off-diagonal blocks.
static void transpose64(uint64_t* a) {
  uint64_t m = 0x00000000FFFFFFFFull;
  for (int j = 32; j; j >>= 1, m ^= m << j)
    for (int k = 0; k < 64; k = ((k | j) + 1) & ~j) {
      const uint64_t t = ((a[k] >> j) ^ a[k | j]) & m;
      a[k | j] ^= t;
      a[k] ^= t << j;
    }
}

// One head row's sign bits (KW words, zero past D): from float ±a (x > 0 -> 1) or from sign bytes
// (nonzero -> 1, as binary_linear_signs writes them).
static inline void pack_row(const float* x, int64_t D, int64_t KW, uint64_t* out, bool avx2) {
  const float zero = 0.f;
  if (avx2) pack_signs_avx2(x, &zero, false, D, KW, out);
  else pack_signs_portable(x, &zero, false, D, KW, out);
}

#if KB_X86
KB_TARGET(KB_AVX512_BASE)
static void pack_bytes_avx512(const uint8_t* x, int64_t D, int64_t KW, uint64_t* out) {
  for (int64_t w = 0; w < KW; ++w) {
    const int64_t n = std::min<int64_t>(64, D - w * 64);
    const __mmask64 live = n == 64 ? ~0ull : (1ull << n) - 1;
    const __m512i b = _mm512_maskz_loadu_epi8(live, x + w * 64);
    out[w] = _mm512_test_epi8_mask(b, b);
  }
}
#endif

static inline void pack_row(const uint8_t* x, int64_t D, int64_t KW, uint64_t* out, bool vec) {
#if KB_X86
  if (vec) { pack_bytes_avx512(x, D, KW, out); return; }
#endif
  for (int64_t w = 0; w < KW; ++w) {
    uint64_t word = 0;
    for (int64_t k = w * 64; k < std::min<int64_t>(D, w * 64 + 64); ++k) word |= static_cast<uint64_t>(x[k] != 0) << (k & 63);
    out[w] = word;
  }
}

// The words layout ([rows/8][KW][8]) of the rows of a head (K's keys), from each row's sign words.
template <typename T>
static void pack_keys_words(const T* x, int64_t rows, int64_t D, int64_t ld, uint64_t* out, bool vec) {
  const int64_t KW = (D + 63) / 64, nb = (rows + 7) / 8;
  std::memset(out, 0, sizeof(uint64_t) * nb * KW * 8);
  uint64_t words[1024];
  for (int64_t r = 0; r < rows; ++r) {
    pack_row(x + r * ld, D, KW, words, vec);
    uint64_t* dst = out + (r / 8) * KW * 8 + (r % 8);
    for (int64_t w = 0; w < KW; ++w) dst[w * 8] = words[w];
  }
}

// V^T in the words layout ([D/8][KW][8], row = feature, bits over the keys) from V's rows: the sign
// words of every key (one contiguous row each) put through 64 x 64 bit transposes, instead of
// reading V down its columns one element at a time.
template <typename T>
static void pack_columns_words(const T* x, int64_t keys, int64_t D, int64_t ld, uint64_t* out, bool vec,
                               std::vector<uint64_t>& rows) {
  const int64_t KWd = (D + 63) / 64, KWk = (keys + 63) / 64, nb = (D + 7) / 8;
  rows.assign(KWk * 64 * KWd, 0);
  for (int64_t j = 0; j < keys; ++j) pack_row(x + j * ld, D, KWd, rows.data() + j * KWd, vec);
  std::memset(out, 0, sizeof(uint64_t) * nb * KWk * 8);
  uint64_t blk[64];
  for (int64_t w = 0; w < KWk; ++w)
    for (int64_t f = 0; f < KWd; ++f) {
      for (int i = 0; i < 64; ++i) blk[i] = rows[(w * 64 + i) * KWd + f];
      transpose64(blk);
      for (int64_t d = 0; d < 64 && f * 64 + d < D; ++d) {
        const int64_t feat = f * 64 + d;
        out[(feat / 8) * KWk * 8 + w * 8 + feat % 8] = blk[d];
      }
    }
}

static bool all_pm_block(const uint8_t*, int64_t, int64_t, int64_t, float) { return true; }  // sign bytes

template <typename T>
static inline void prefetch_rows(const T* x, int64_t rows, int64_t K, int64_t ld) {
  for (int64_t r = 0; r < rows; ++r)
    for (int64_t k = 0; k < K; k += 64 / static_cast<int64_t>(sizeof(T))) __builtin_prefetch(x + r * ld + k, 0, 1);
}

constexpr double kZScale = 70368744177664.0;  // 2^46: Skv < 2^16 terms of at most 2^46 fit in int64

struct RowSoftmax {
  const uint64_t* term;  // term[k] = round(e^(-2 c k) 2^46), k = 0..D; term[D + 1] = 0 (masked key)
  const double* exact;   // e^(-2 c k) 2^46 unrounded, for the comparison with alpha Z / 2
  int64_t D;
  double half_alpha;
  // The smallest d that binarizes to 1 in a row with maximum top and fixed-point sum z. exact[]
  // falls strictly with k, so the k that pass (exact[k] > alpha z / 2) are a prefix: its length by
  // bisection (7 probes at D = 64, where a scan took up to 65 and a mispredicted exit per row).
  int32_t threshold(int32_t top, uint64_t z) const {
    const double bound = half_alpha * static_cast<double>(z);
    int64_t lo = 0, len = D + 1;  // the first k in [0, D] that fails, or D + 1
    while (len > 0) {
      const int64_t half = len >> 1;
      if (exact[lo + half] > bound) lo += half + 1, len -= half + 1;
      else len = half;
    }
    const int64_t kmax = lo - 1;
    return kmax < 0 ? std::numeric_limits<int32_t>::max() : top - static_cast<int32_t>(2 * kmax);
  }
};

// One query row: d (Skv int32 dot products), keep (Skv bytes or null) -> the probability bits.
static void row_bits_portable(const RowSoftmax& r, const int32_t* d, const uint8_t* keep, int64_t Skv,
                              uint64_t* bits) {
  int32_t top = std::numeric_limits<int32_t>::min();
  for (int64_t j = 0; j < Skv; ++j)
    if (!keep || keep[j]) top = std::max(top, d[j]);
  uint64_t z = 0;
  for (int64_t j = 0; j < Skv; ++j) z += r.term[(!keep || keep[j]) ? (top - d[j]) >> 1 : r.D + 1];
  const int32_t lo = r.threshold(top, z);
  for (int64_t w = 0; w < (Skv + 63) / 64; ++w) {
    uint64_t word = 0;
    for (int64_t j = w * 64; j < std::min<int64_t>(Skv, w * 64 + 64); ++j)
      word |= static_cast<uint64_t>((!keep || keep[j]) && d[j] >= lo) << (j & 63);
    bits[w] = word;
  }
}

#if KB_X86
KB_TARGET(KB_AVX512_BASE)
static __mmask16 keep16(const uint8_t* keep, int64_t j, int64_t n) {
  const __mmask16 tail = n >= 16 ? 0xFFFF : static_cast<__mmask16>((1u << n) - 1);
  if (!keep) return tail;
  const __m128i k = _mm_maskz_loadu_epi8(tail, keep + j);
  return _mm_mask_test_epi8_mask(tail, k, k);
}

KB_TARGET(KB_AVX512_BASE)
static void row_bits_avx512(const RowSoftmax& r, const int32_t* d, const uint8_t* keep, int64_t Skv, uint64_t* bits) {
  __m512i vtop = _mm512_set1_epi32(std::numeric_limits<int32_t>::min());
  for (int64_t j = 0; j < Skv; j += 16) {
    const __mmask16 m = keep16(keep, j, Skv - j);
    vtop = _mm512_mask_max_epi32(vtop, m, vtop, _mm512_maskz_loadu_epi32(m, d + j));
  }
  const int32_t top = _mm512_reduce_max_epi32(vtop);
  const __m512i t16 = _mm512_set1_epi32(top), masked = _mm512_set1_epi32(static_cast<int32_t>(r.D + 1));
  __m512i z0 = _mm512_setzero_si512(), z1 = _mm512_setzero_si512();
  for (int64_t j = 0; j < Skv; j += 16) {
    const __mmask16 m = keep16(keep, j, Skv - j);
    const __m512i k = _mm512_mask_mov_epi32(masked, m, _mm512_srai_epi32(_mm512_sub_epi32(t16, _mm512_maskz_loadu_epi32(m, d + j)), 1));
    z0 = _mm512_add_epi64(z0, _mm512_i32gather_epi64(_mm512_castsi512_si256(k), r.term, 8));
    z1 = _mm512_add_epi64(z1, _mm512_i32gather_epi64(_mm512_extracti64x4_epi64(k, 1), r.term, 8));
  }
  const uint64_t z = static_cast<uint64_t>(_mm512_reduce_add_epi64(_mm512_add_epi64(z0, z1)));
  const __m512i lo = _mm512_set1_epi32(r.threshold(top, z));
  for (int64_t w = 0; w < (Skv + 63) / 64; ++w) {
    uint64_t word = 0;
    for (int64_t i = 0; i < 64 && w * 64 + i < Skv; i += 16) {
      const int64_t j = w * 64 + i;
      const __mmask16 m = keep16(keep, j, Skv - j);
      word |= static_cast<uint64_t>(_mm512_mask_cmpge_epi32_mask(m, _mm512_maskz_loadu_epi32(m, d + j), lo)) << i;
    }
    bits[w] = word;
  }
}
#endif

template <typename T>
static torch::Tensor attention_fused(const torch::Tensor& q, const torch::Tensor& k, const torch::Tensor& v,
                                     const torch::Tensor& valid, double c_scores, double alpha, double c_out,
                                     int64_t path) {
  constexpr bool f32 = std::is_same<T, float>::value;
  const HeadsOf<T> Q(q, "q"), Kh(k, "k"), V(v, "v");
  const int64_t B = Q.B, H = Q.H, S = Q.S, D = Q.D, Hk = Kh.H, Skv = Kh.S;
  TORCH_CHECK(Kh.B == B && Kh.D == D && Hk > 0 && H % Hk == 0, "k does not match q");
  TORCH_CHECK(V.B == B && V.H == Hk && V.S == Skv && V.D == D, "v does not match k");
  TORCH_CHECK(D > 0 && D < 65536 && Skv > 0 && Skv < 65536, "head_dim and key length must be in [1, 65536)");
  TORCH_CHECK(c_scores > 0 && alpha > 0, "the score scale and alpha must be positive");
  const uint8_t* vp = nullptr;
  std::vector<char> all_kept(B, 1);
  if (valid.numel()) {
    TORCH_CHECK(valid.scalar_type() == torch::kUInt8 && valid.is_contiguous() && valid.dim() == 2 &&
                valid.size(0) == B && valid.size(1) == Skv, "valid must be a contiguous (batch, key_len) uint8 tensor");
    vp = valid.data_ptr<uint8_t>();
    for (int64_t b = 0; b < B; ++b) {
      bool any = false, all = true;
      for (int64_t j = 0; j < Skv; ++j) any |= vp[b * Skv + j] != 0, all &= vp[b * Skv + j] != 0;
      if (!any) return torch::empty({0}, q.options().dtype(torch::kFloat32));
      all_kept[b] = all;
    }
  }
  const int r = resolve(path, true), p = r == AVX512 ? AVX512 : PORTABLE;
  // the vector row packing: avx2 sign packing for floats, the avx512 byte test for sign bytes
  const bool vec = f32 ? r >= AVX2 : r == AVX512;
  float aq = 1.f, ak = 1.f, av = 1.f;  // sign bytes: every element is a sign, the scales are the caller's
  if constexpr (f32) {
    aq = std::fabs(Q.head(0, 0)[0]), ak = std::fabs(Kh.head(0, 0)[0]), av = std::fabs(V.head(0, 0)[0]);
    if (!(aq > 0.f && ak > 0.f && av > 0.f)) return torch::empty({0}, q.options().dtype(torch::kFloat32));
  }
  std::vector<uint64_t> term(D + 2, 0);
  std::vector<double> exact(D + 1);
  for (int64_t i = 0; i <= D; ++i) {
    exact[i] = std::exp(-2.0 * c_scores * static_cast<double>(i)) * kZScale;
    term[i] = static_cast<uint64_t>(std::llround(exact[i]));
  }
  const RowSoftmax rs{term.data(), exact.data(), D, 0.5 * alpha};
  const int64_t KWq = (D + 63) / 64, nbk = (Skv + 7) / 8, KWk = (Skv + 63) / 64, nbv = (D + 7) / 8;
  auto out = torch::empty({B, S, H, D}, q.options().dtype(torch::kFloat32));
  float* op = out.data_ptr<float>();
  std::vector<float> scale(nbv * 8, static_cast<float>(c_out));
  std::atomic<bool> binary{true};
  at::parallel_for(0, B * H, 1, [&](int64_t i0, int64_t i1) {
    std::vector<uint64_t> qa(S * KWq), kw(nbk * KWq * 8), pa(S * KWk), vw(nbv * KWk * 8);
    std::vector<int32_t> dots(S * Skv), qoff(S, static_cast<int32_t>(D));
    std::vector<uint64_t> vrows;
    for (int64_t bh = i0; bh < i1 && binary.load(std::memory_order_relaxed); ++bh) {
      const int64_t b = bh / H, h = bh % H, hk = h / (H / Hk);
      const uint8_t* keep = vp && !all_kept[b] ? vp + b * Skv : nullptr;  // every key real: no mask to read
      const T* qh = Q.head(b, h);
      if (bh + 1 < i1) {  // the next head's rows, fetched while this head computes: its rows are
        // strided (one head's slice of every token), which the hardware prefetcher follows poorly
        const int64_t nb_ = (bh + 1) / H, nh = (bh + 1) % H, nk = nh / (H / Hk);
        prefetch_rows(Q.head(nb_, nh), S, D, Q.ss);
        prefetch_rows(Kh.head(nb_, nk), Skv, D, Kh.ss);
        prefetch_rows(V.head(nb_, nk), Skv, D, V.ss);
      }
      // Each head's blocks are checked as they are packed (they are in cache then), so the
      // operands are read from memory once. K and V are read again by a grouped head: cheap.
      if (!all_pm_block(qh, S, D, Q.ss, aq) || !all_pm_block(Kh.head(b, hk), Skv, D, Kh.ss, ak) ||
          !all_pm_block(V.head(b, hk), Skv, D, V.ss, av)) {
        binary.store(false, std::memory_order_relaxed);
        break;
      }
      for (int64_t t = 0; t < S; ++t) pack_row(qh + t * Q.ss, D, KWq, qa.data() + t * KWq, vec);
      pack_keys_words(Kh.head(b, hk), Skv, D, Kh.ss, kw.data(), vec);
      Epi es{qoff.data(), -2, nullptr, nullptr, nullptr, dots.data(), Skv};
      counts_words(p, qa.data(), S, KWq, kw.data(), 0, nbk, 0, es, Skv);
      for (int64_t t = 0; t < S; ++t) {
#if KB_X86
        if (p == AVX512) { row_bits_avx512(rs, dots.data() + t * Skv, keep, Skv, pa.data() + t * KWk); continue; }
#endif
        row_bits_portable(rs, dots.data() + t * Skv, keep, Skv, pa.data() + t * KWk);
      }
      const auto off = binary_offsets(pa.data(), S, KWk, Skv, 1);  // -popcount(P) per query
      pack_columns_words(V.head(b, hk), Skv, D, V.ss, vw.data(), vec, vrows);
      Epi e{off.data(), 2, scale.data(), nullptr, op + (b * S * H + h) * D, nullptr, H * D};
      counts_words(p, pa.data(), S, KWk, vw.data(), 0, nbv, 1, e, D);
    }
  });
  if (!binary.load()) return torch::empty({0}, q.options().dtype(torch::kFloat32));
  return out.transpose(1, 2);
}

// Operands as float ±a (checked, scales read from them and multiplied in by the caller's c's) or
// as sign bytes from binary_linear_signs (the caller's c's carry the scales).
torch::Tensor binary_attention_fused(torch::Tensor q, torch::Tensor k, torch::Tensor v, torch::Tensor valid,
                                     double c_scores, double alpha, double c_out, int64_t path) {
  if (q.scalar_type() == torch::kUInt8) return attention_fused<uint8_t>(q, k, v, valid, c_scores, alpha, c_out, path);
  return attention_fused<float>(q, k, v, valid, c_scores, alpha, c_out, path);
}

// ---- ternary ----------------------------------------------------------------------------------

// q (T, KP) int8, sum q per token, scale: MinMaxAct(8, symmetric) on the whole tensor.
std::vector<torch::Tensor> quantize_int8(torch::Tensor x, double clip_ratio, double clip_val, int64_t path) {
  check_f32(x, "x");
  TORCH_CHECK(x.dim() == 2, "x must be (tokens, features)");
  const int p = resolve(path, false);
  const int64_t T = x.size(0), K = x.size(1), KP = (K + 15) / 16 * 16;
  const float cv = clip_val < 0 ? std::numeric_limits<float>::infinity() : static_cast<float>(clip_val);
  const float* xp = x.data_ptr<float>();
  const float amax = at::parallel_reduce(
      0, T, 16, 0.f,
      [&](int64_t t0, int64_t t1, float m) {
        const float r = p >= AVX2 ? absmax_avx2(xp + t0 * K, (t1 - t0) * K, cv) : absmax_portable(xp + t0 * K, (t1 - t0) * K, cv);
        return std::max(m, r);
      },
      [](float a, float b) { return std::max(a, b); });
  // scale = clamp_min(clip_ratio * amax / 127, EPS) in float32, as MinMaxAct computes it
  const float s = std::max(static_cast<float>(clip_ratio) * amax / 127.f, kEps);
  auto q = torch::empty({T, KP}, x.options().dtype(torch::kInt8));
  auto sq = torch::empty({T}, x.options().dtype(torch::kInt32));
  int8_t* qp = q.data_ptr<int8_t>();
  int32_t* sp = sq.data_ptr<int32_t>();
  at::parallel_for(0, T, 16, [&](int64_t t0, int64_t t1) {
    for (int64_t t = t0; t < t1; ++t)
      sp[t] = p >= AVX2 ? quantize_row_avx2(xp + t * K, K, KP, s, cv, qp + t * KP)
                        : quantize_row_portable(xp + t * K, K, KP, s, cv, qp + t * KP);
  });
  return {q, sq, torch::full({}, s, x.options())};
}

torch::Tensor ternary_gemm_into(torch::Tensor q, torch::Tensor sq, torch::Tensor w, int64_t O, torch::Tensor v,
                                c10::optional<torch::Tensor> bias, int64_t path, bool return_d,
                                c10::optional<torch::Tensor> into) {
  TORCH_CHECK(q.scalar_type() == torch::kInt8 && q.is_contiguous() && q.dim() == 2 && q.size(1) % 16 == 0,
              "q must be (T, KP) int8 with KP a multiple of 16");
  TORCH_CHECK(sq.scalar_type() == torch::kInt32 && sq.numel() == q.size(0), "sq must be (T,) int32");
  const int64_t T = q.size(0), KP = q.size(1);
  TORCH_CHECK(w.scalar_type() == torch::kUInt8 && w.numel() == (O + 7) / 8 * (KP / 16) * 32,
              "weights are not in the 2-bit chunk layout for this shape");
  check_f32(v, "v");
  TORCH_CHECK(v.numel() == O || (return_d && v.numel() == 0), "v must have out_features elements");
  const int p = resolve(path, false);
  std::vector<int32_t> off(T);
  const int32_t* sp = sq.data_ptr<int32_t>();
  for (int64_t t = 0; t < T; ++t) off[t] = -2 * sp[t];
  torch::Tensor out;
  if (into.has_value() && into->defined()) {  // a caller's buffer (reused: no fresh pages to fault in)
    TORCH_CHECK(!return_d, "into is for the float output");
    check_f32(*into, "into");
    TORCH_CHECK(into->numel() == T * O, "into must hold tokens x out_features floats");
    out = *into;
  } else {
    out = torch::empty({T, O}, q.options().dtype(return_d ? torch::kInt32 : torch::kFloat32));
  }
  Epi e{off.data(), 1, v.data_ptr<float>(), bias_ptr(bias, O), return_d ? nullptr : out.data_ptr<float>(),
        return_d ? out.data_ptr<int32_t>() : nullptr, O};
  const int8_t* ap = q.data_ptr<int8_t>();
  const uint8_t* wp = w.data_ptr<uint8_t>();
  const int64_t nb = (O + 7) / 8, units = (nb + 3) / 4;
  at::parallel_for(0, units, 1, [&](int64_t u0, int64_t u1) {
    const int64_t b0 = u0 * 4, b1 = std::min(nb, u1 * 4);
    for (int64_t t = 0; t < T; t += kTokenChunk) {
      const int64_t t1 = std::min(T, t + kTokenChunk);
      switch (p) {
        case AVX512: ternary_dots_avx512(ap, t, t1, KP, wp, b0, b1, e, O); break;
        case AVXVNNI: ternary_dots_avxvnni(ap, t, t1, KP, wp, b0, b1, e, O); break;
        case AVX2: ternary_dots_avx2(ap, t, t1, KP, wp, b0, b1, e, O); break;
        default: ternary_dots_portable(ap, t, t1, KP, wp, b0, b1, e, O);
      }
    }
  });
  return out;
}

torch::Tensor ternary_gemm(torch::Tensor q, torch::Tensor sq, torch::Tensor w, int64_t O, torch::Tensor v,
                           c10::optional<torch::Tensor> bias, int64_t path, bool return_d) {
  return ternary_gemm_into(q, sq, w, O, v, bias, path, return_d, c10::nullopt);
}

// The W2A8 layer; ``into``: write y there (tokens x out_features floats) instead of a new tensor.
torch::Tensor ternary_linear(torch::Tensor x, double clip_ratio, double clip_val, torch::Tensor w, int64_t O,
                             torch::Tensor wscale, c10::optional<torch::Tensor> bias, int64_t path,
                             c10::optional<torch::Tensor> into) {
  auto qs = quantize_int8(x, clip_ratio, clip_val, path);
  auto vs = out_scales(qs[2].item<float>(), wscale, O);
  auto v = torch::from_blob(vs.data(), {O}, torch::kFloat32);
  return ternary_gemm_into(qs[0], qs[1], w, O, v, bias, path, false, into);
}

}  // namespace

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.def("available", &available, "paths this CPU can run (0 portable, 1 avx2, 2 avxvnni, 3 avx512)");
  m.def("pack_signs", &pack_signs, "sign bits of x - beta as (T, ceil(K/64)) int64 words");
  m.def("pack_unsigned", &pack_unsigned, "bits of round(clamp((x - beta) / alpha, 0, 1)) as int64 words");
  m.def("binary_gemm", &binary_gemm, "binary GEMM (XOR / AND popcount) with a float epilogue");
  m.def("binary_linear", &binary_linear, "W1A1 linear: elastic binarizer + XOR-popcount GEMM");
  m.def("binary_linear_words", &binary_linear_words, "W1A1 linear from packed bits (mode 0 signs, 1 unsigned)",
        py::arg("act"), py::arg("K"), py::arg("alpha"), py::arg("w"), py::arg("O"), py::arg("wscale"),
        py::arg("bias"), py::arg("path"), py::arg("mode") = 0);
  m.def("binary_linear_unsigned", &binary_linear_unsigned, "W1A1 linear with an unsigned {0, alpha} input binarizer");
  m.def("binary_linear_bits", &binary_linear_bits, "W1A1 linear emitting the next layer's bits (thresholds on D)");
  m.def("binary_gemm_bits", &binary_gemm_bits, "binary GEMM with the threshold-bits epilogue");
  m.def("binary_linear_pm", &binary_linear_pm, "W1A1 linear whose signed output binarizer runs in the epilogue (±pm)");
  m.def("binary_levels", &binary_levels, "every value of the W1A1 epilogue, (K + 1, O)");
  m.def("binary_attention_scores", &binary_attention_scores, "c * sign(Q) sign(K)^T per head (empty: not binary)");
  m.def("binary_linear_signs", &binary_linear_signs, "W1A1 linear + signed binarizer: one sign byte per output");
  m.def("binary_attention_fused", &binary_attention_fused,
        "binary attention with the softmax threshold from score counts (empty: not binary, or a row fully masked)");
  m.def("binary_attention_values", &binary_attention_values, "c * bits(P) sign(V) per head (empty: not binary)");
  m.def("quantize_int8", &quantize_int8, "8-bit symmetric min-max quantization: (q, sum q, scale)");
  m.def("ternary_gemm", &ternary_gemm, "2-bit weights x int8 activations GEMM with a float epilogue");
  m.def("ternary_linear", &ternary_linear, "W2A8 linear: min-max int8 activations + 2-bit GEMM", py::arg("x"),
        py::arg("clip_ratio"), py::arg("clip_val"), py::arg("w"), py::arg("O"), py::arg("wscale"), py::arg("bias"),
        py::arg("path"), py::arg("into") = py::none());
}

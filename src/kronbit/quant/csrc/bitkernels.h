// Shared declarations of the bit-level GEMM kernels (binary_gemm.cpp, ternary_gemm.cpp,
// bitkernels.cpp). Every path of a kernel computes the same integer accumulators, so outputs are
// bit-identical whichever path runs; the float epilogue is the same IEEE operations everywhere
// (multiply, then add: the build passes -ffp-contract=off so no path fuses them into an FMA).
#pragma once
#include <cstdint>
#include <cstring>

#if defined(__x86_64__) || defined(__i386__)
#define KB_X86 1
#include <immintrin.h>
#define KB_TARGET(s) __attribute__((target(s)))
#else
#define KB_X86 0
#define KB_TARGET(s)
#endif

namespace kb {

// Code paths, in order of preference. The binary kernel has portable / avx2 / avx512 (VPOPCNTDQ);
// the ternary kernel has portable / avx2 / avxvnni / avx512 (VNNI).
enum Path : int { PORTABLE = 0, AVX2 = 1, AVXVNNI = 2, AVX512 = 3 };

bool cpu_has(Path p, bool binary);

// The epilogue every kernel applies to a finished tile, so accumulators never leave the cache:
// D = off[t] + mul * acc (the exact signed integer dot product), then, if y is set,
// y[t][o] = float(D) * v[o] (+ bias[o]), if d is set, d[t][o] = D (tests read D directly), and, if
// bits is set, bit o of row t = (D <= lo[o] || D >= hi[o]): the next layer's binary activation,
// when it is a function of D alone (thresholds found by the caller; the float output is then never
// written). Rows of bits are little-endian bit strings of ldb bytes; tiles start at outputs that
// are multiples of 8, so each tile writes whole bytes of its own.
struct Epi {
  const int32_t* off;  // per token
  int32_t mul;
  const float* v;      // per output: activation scale x weight scale, multiplied in float32
  const float* bias;   // per output, or null
  float* y;            // (T, ld) or null
  int32_t* d;          // (T, ld) or null
  int64_t ld;          // = O
  const int32_t* lo = nullptr;  // per output (bits only)
  const int32_t* hi = nullptr;
  uint8_t* bits = nullptr;      // (T, ldb) or null
  int64_t ldb = 0;
  float pm = 0.f;  // nonzero: y[t][o] = +pm where the threshold bit is set, -pm elsewhere (a signed
                   // binarizer's output, pm its scale; lo / hi hold the thresholds, v and bias unused)
  uint8_t* signs = nullptr;  // (T, ld) or null: one byte per output, the threshold bit (1 = +, 0 = -)
};

inline bool threshold_bit(const Epi& e, int64_t o, int32_t d) { return d <= e.lo[o] || d >= e.hi[o]; }

inline void finish(const Epi& e, int64_t t, int64_t o0, int64_t n, const int32_t* acc) {
  const int32_t off = e.off[t], mul = e.mul;
  if (e.d) {
    int32_t* d = e.d + t * e.ld + o0;
    for (int64_t i = 0; i < n; ++i) d[i] = off + mul * acc[i];
  }
  if (e.y && e.pm != 0.f) {
    float* y = e.y + t * e.ld + o0;
    for (int64_t i = 0; i < n; ++i) y[i] = threshold_bit(e, o0 + i, off + mul * acc[i]) ? e.pm : -e.pm;
  } else if (e.y) {
    float* y = e.y + t * e.ld + o0;
    const float* v = e.v + o0;
    if (e.bias) {
      const float* b = e.bias + o0;
      for (int64_t i = 0; i < n; ++i) y[i] = static_cast<float>(off + mul * acc[i]) * v[i] + b[i];
    } else {
      for (int64_t i = 0; i < n; ++i) y[i] = static_cast<float>(off + mul * acc[i]) * v[i];
    }
  }
  if (e.signs) {
    uint8_t* row = e.signs + t * e.ld + o0;
    for (int64_t i = 0; i < n; ++i) row[i] = threshold_bit(e, o0 + i, off + mul * acc[i]) ? 1 : 0;
  }
  if (e.bits) {
    uint8_t* row = e.bits + t * e.ldb;
    for (int64_t i = 0; i < n; i += 8) {
      uint8_t byte = 0;
      for (int64_t j = i; j < n && j < i + 8; ++j)
        byte = static_cast<uint8_t>(byte | (threshold_bit(e, o0 + j, off + mul * acc[j]) ? 1 : 0) << (j - i));
      row[(o0 + i) >> 3] = byte;
    }
  }
}

#if KB_X86
// The same epilogue for 8 outputs at once from int32 accumulators (AVX2): the same IEEE operations
// in the same order (int32 -> float is exact below 2^24; multiply, then add, never fused), so its
// results are bit-identical to finish(). Used for full tiles when only y is wanted.
KB_TARGET("avx2")
inline void finish8_avx2(const Epi& e, int64_t t, int64_t o0, __m256i acc) {
  const __m256i d = _mm256_add_epi32(_mm256_set1_epi32(e.off[t]), _mm256_mullo_epi32(_mm256_set1_epi32(e.mul), acc));
  __m256 y = _mm256_mul_ps(_mm256_cvtepi32_ps(d), _mm256_loadu_ps(e.v + o0));
  if (e.bias) y = _mm256_add_ps(y, _mm256_loadu_ps(e.bias + o0));
  _mm256_storeu_ps(e.y + t * e.ld + o0, y);
}

// The bits epilogue for 64 outputs from 16-bit counts (AVX2): the same comparisons as finish().
KB_TARGET("avx2")
inline void bits64_avx2(const Epi& e, int64_t t, int64_t o0, const uint16_t* acc16) {
  const __m256i off = _mm256_set1_epi32(e.off[t]), mul = _mm256_set1_epi32(e.mul);
  uint64_t word = 0;
  for (int j = 0; j < 64; j += 8) {
    const __m256i acc = _mm256_cvtepu16_epi32(_mm_loadu_si128(reinterpret_cast<const __m128i*>(acc16 + j)));
    const __m256i d = _mm256_add_epi32(off, _mm256_mullo_epi32(mul, acc));
    const __m256i lo = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(e.lo + o0 + j));
    const __m256i hi = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(e.hi + o0 + j));
    const __m256i between = _mm256_and_si256(_mm256_cmpgt_epi32(d, lo), _mm256_cmpgt_epi32(hi, d));  // bit 0
    const uint32_t m = static_cast<uint32_t>(_mm256_movemask_ps(_mm256_castsi256_ps(between)));
    word |= static_cast<uint64_t>(~m & 0xFFu) << j;
  }
  std::memcpy(e.bits + t * e.ldb + o0 / 8, &word, sizeof(word));
}

// The same two epilogues for 16 outputs at once from int32 accumulators (AVX-512): again the same
// IEEE operations in the same order as finish(), so bit-identical to it. Used for full tiles.
#define KB_AVX512_BASE "avx512f,avx512bw,avx512vl,avx512dq"
KB_TARGET(KB_AVX512_BASE)
inline void finish16_avx512(const Epi& e, int64_t t, int64_t o0, __m512i acc) {
  // mul is -2 (XOR) or 2 (AND) in every kernel: a shift and an add or subtract, not a VPMULLD
  const __m512i off = _mm512_set1_epi32(e.off[t]), twice = _mm512_slli_epi32(acc, 1);
  const __m512i d = e.mul == -2 ? _mm512_sub_epi32(off, twice)
                    : e.mul == 2 ? _mm512_add_epi32(off, twice)
                                 : _mm512_add_epi32(off, _mm512_mullo_epi32(_mm512_set1_epi32(e.mul), acc));
  if (e.d) _mm512_storeu_si512(e.d + t * e.ld + o0, d);
  if (e.bits) {  // o0 is a multiple of 8: two whole bytes of the token's row
    const __mmask16 m = _mm512_cmple_epi32_mask(d, _mm512_loadu_si512(e.lo + o0)) |
                        _mm512_cmpge_epi32_mask(d, _mm512_loadu_si512(e.hi + o0));
    const uint16_t m16 = static_cast<uint16_t>(m);
    std::memcpy(e.bits + t * e.ldb + o0 / 8, &m16, sizeof(m16));
  }
  if (e.signs) {
    const __mmask16 m = _mm512_cmple_epi32_mask(d, _mm512_loadu_si512(e.lo + o0)) |
                        _mm512_cmpge_epi32_mask(d, _mm512_loadu_si512(e.hi + o0));
    _mm_storeu_si128(reinterpret_cast<__m128i*>(e.signs + t * e.ld + o0), _mm_maskz_set1_epi8(m, 1));
  }
  if (e.y && e.pm != 0.f) {
    const __mmask16 m = _mm512_cmple_epi32_mask(d, _mm512_loadu_si512(e.lo + o0)) |
                        _mm512_cmpge_epi32_mask(d, _mm512_loadu_si512(e.hi + o0));
    _mm512_storeu_ps(e.y + t * e.ld + o0, _mm512_mask_blend_ps(m, _mm512_set1_ps(-e.pm), _mm512_set1_ps(e.pm)));
  } else if (e.y) {
    __m512 y = _mm512_mul_ps(_mm512_cvtepi32_ps(d), _mm512_loadu_ps(e.v + o0));
    if (e.bias) y = _mm512_add_ps(y, _mm512_loadu_ps(e.bias + o0));
    _mm512_storeu_ps(e.y + t * e.ld + o0, y);
  }
}
#endif

// ---- binary: counts[t][o] = popcount(A_t op W_o), op = XOR (mode 0) or AND (mode 1) ---------
// Activations: T rows of KW little-endian 64-bit words (bit k of the row = bit k%64 of word k/64,
// zero past K). Weights, prepared (see kernels.py):
//   words layout  (portable, avx512): [O/8][KW][8] uint64 — 8 rows interleaved per word index;
//   nibble layout (avx2):             [O/64][16*KW][32] uint8 — byte j of group g holds bits
//                                     4g..4g+3 of row 64b+j (low nibble) and of row 64b+32+j (high).
// Each kernel covers tokens [t0, t1) and output blocks [b0, b1) (8 rows a block in the words
// layout, 64 in the nibble layout) and hands every finished tile to finish().
// avx2 reads activations as table offsets instead of words, in tiles of kTileTokens tokens:
// offs[tile][g][i] = 512 * mode + 32 * nibble g of token kTileTokens * tile + i (tokens past T
// padded with table 0, their counts dropped); it covers tiles [tile0, tile1).
constexpr int kTileTokens = 6;
// The avx512 binary tile: 6 tokens x 4 blocks of 8 rows, 24 zmm accumulators (7 tokens spill).
constexpr int kAvx512TileTokens = 6, kAvx512TileBlocks = 4;
void binary_counts_portable(const uint64_t* act, int64_t t0, int64_t t1, int64_t KW, const uint64_t* w,
                            int64_t b0, int64_t b1, int mode, const Epi& e, int64_t O);
void binary_counts_avx2(const uint16_t* offs, int64_t tile0, int64_t tile1, int64_t T, int64_t KW, const uint8_t* w,
                        int64_t b0, int64_t b1, int mode, const Epi& e, int64_t O);
void binary_counts_avx512(const uint64_t* act, int64_t t0, int64_t t1, int64_t KW, const uint64_t* w,
                          int64_t b0, int64_t b1, int mode, const Epi& e, int64_t O);
// Sign bits of x - beta (1 = +1: the sign bit of the float32 difference is clear, so +0 -> +1 and
// -0 -> -1 as copysign) or, unsigned, of round(clamp(x / alpha, 0, 1)) (1 iff x / alpha > 0.5).
void pack_signs_portable(const float* x, const float* beta, bool beta_vec, int64_t K, int64_t KW, uint64_t* out);
void pack_signs_avx2(const float* x, const float* beta, bool beta_vec, int64_t K, int64_t KW, uint64_t* out);
void pack_unsigned_portable(const float* x, float alpha, int64_t K, int64_t KW, uint64_t* out);
// AVX-512 versions of the unsigned packers: the same IEEE division and comparison, 16 at a time.
void pack_unsigned_avx512(const float* x, const float* beta, bool beta_vec, float alpha, int64_t K, int64_t KW,
                          uint64_t* out);
// The same with an offset first (ElasticUnsignedAct(offset=True)): 1 iff (x - beta) / alpha > 0.5.
void pack_unsigned_offset_portable(const float* x, const float* beta, bool beta_vec, float alpha, int64_t K,
                                   int64_t KW, uint64_t* out);

// ---- ternary / 2-bit weights x int8 activations: S[t][o] = sum_k u[o][k] * q[t][k] ------------
// u = code + 2 in [0, 3] (the packed 2-bit field); the signed dot product is S - 2 * sum_k q[t][k].
// Activations: T rows of KP int8 (KP = K rounded up to 16, zero-padded). Weights, prepared:
//   [O/8][KP/16][32] uint8 — byte j = 4*r + i of chunk c holds, at bits 2s..2s+1, the field of row
//   8b+r at input 16c + 4s + i.
void ternary_dots_portable(const int8_t* act, int64_t t0, int64_t t1, int64_t KP, const uint8_t* w,
                           int64_t b0, int64_t b1, const Epi& e, int64_t O);
void ternary_dots_avx2(const int8_t* act, int64_t t0, int64_t t1, int64_t KP, const uint8_t* w,
                       int64_t b0, int64_t b1, const Epi& e, int64_t O);
void ternary_dots_avxvnni(const int8_t* act, int64_t t0, int64_t t1, int64_t KP, const uint8_t* w,
                          int64_t b0, int64_t b1, const Epi& e, int64_t O);
void ternary_dots_avx512(const int8_t* act, int64_t t0, int64_t t1, int64_t KP, const uint8_t* w,
                         int64_t b0, int64_t b1, const Epi& e, int64_t O);
// Symmetric 8-bit min-max quantization of one row: q = clamp(round_half_even(clamp(x, +-cv) / s),
// -127, 127); returns sum q. (The scale s comes from the whole tensor's max |x|.)
int32_t quantize_row_portable(const float* x, int64_t K, int64_t KP, float s, float cv, int8_t* q);
int32_t quantize_row_avx2(const float* x, int64_t K, int64_t KP, float s, float cv, int8_t* q);
float absmax_portable(const float* x, int64_t n, float cv);
float absmax_avx2(const float* x, int64_t n, float cv);

}  // namespace kb

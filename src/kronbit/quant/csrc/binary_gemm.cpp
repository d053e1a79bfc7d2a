// Binary GEMM: counts[t][o] = popcount(A_t XOR W_o) (±1 activations x ±1 weights) or
// popcount(A_t AND W_o) ({0,1} activations x ±1 weights), three code paths.
//
//  * portable: 64-bit words, __builtin_popcountll.
//  * avx512 (VPOPCNTDQ): 8 weight rows per zmm (one 64-bit word of each), the token's word
//    broadcast, XOR/AND, VPOPCNTQ, VPADDQ: 6 tokens x 32 rows of accumulators in registers.
//  * avx2: no vector popcount, so a nibble lookup (VPSHUFB, 32 lookups per instruction). The
//    lookup table is chosen by the token's nibble: table_a[n] = popcount(n XOR a) (or AND), one of
//    16 fixed tables, so the XOR is folded into the table (as T-MAC folds activations into its
//    tables) and a weight nibble costs one lookup per token. The 4-bit weight indices of 64 rows
//    sit in one 32-byte register (low and high nibbles) and are extracted once for a tile of
//    tokens; counts accumulate in bytes (at most 4 per group, flushed to 16 bits every 62 groups).
#include "bitkernels.h"

#include <algorithm>
#include <cmath>

namespace kb {

void binary_counts_portable(const uint64_t* act, int64_t t0, int64_t t1, int64_t KW, const uint64_t* w,
                            int64_t b0, int64_t b1, int mode, const Epi& e, int64_t O) {
  int32_t acc[8];
  for (int64_t b = b0; b < b1; ++b) {
    const uint64_t* wb = w + b * KW * 8;
    const int64_t n = std::min<int64_t>(8, O - b * 8);
    for (int64_t t = t0; t < t1; ++t) {
      const uint64_t* a = act + t * KW;
      for (int r = 0; r < 8; ++r) acc[r] = 0;
      for (int64_t k = 0; k < KW; ++k) {
        const uint64_t ak = a[k];
        for (int r = 0; r < 8; ++r) {
          const uint64_t x = mode == 0 ? (ak ^ wb[k * 8 + r]) : (ak & wb[k * 8 + r]);
          acc[r] += __builtin_popcountll(x);
        }
      }
      finish(e, t, b * 8, n, acc);
    }
  }
}

void pack_signs_portable(const float* x, const float* beta, bool beta_vec, int64_t K, int64_t KW, uint64_t* out) {
  for (int64_t k = 0; k < KW; ++k) out[k] = 0;
  for (int64_t k = 0; k < K; ++k) {
    const float u = x[k] - (beta_vec ? beta[k] : beta[0]);
    if (!std::signbit(u)) out[k >> 6] |= uint64_t(1) << (k & 63);
  }
}

void pack_unsigned_portable(const float* x, float alpha, int64_t K, int64_t KW, uint64_t* out) {
  for (int64_t k = 0; k < KW; ++k) out[k] = 0;
  for (int64_t k = 0; k < K; ++k)
    if (x[k] / alpha > 0.5f) out[k >> 6] |= uint64_t(1) << (k & 63);
}

#if KB_X86

KB_TARGET("avx2")
void pack_signs_avx2(const float* x, const float* beta, bool beta_vec, int64_t K, int64_t KW, uint64_t* out) {
  const __m256 bs = _mm256_set1_ps(beta[0]);
  int64_t k = 0;
  for (int64_t wi = 0; wi < KW; ++wi) {
    uint64_t word = 0;
    if (k + 64 <= K) {
      for (int j = 0; j < 8; ++j, k += 8) {
        const __m256 b = beta_vec ? _mm256_loadu_ps(beta + k) : bs;
        const uint32_t neg = static_cast<uint32_t>(_mm256_movemask_ps(_mm256_sub_ps(_mm256_loadu_ps(x + k), b)));
        word |= static_cast<uint64_t>(~neg & 0xFFu) << (8 * j);
      }
    } else {
      for (int j = 0; j < 64 && k < K; ++j, ++k) {
        const float u = x[k] - (beta_vec ? beta[k] : beta[0]);
        if (!std::signbit(u)) word |= uint64_t(1) << j;
      }
    }
    out[wi] = word;
  }
}

// ---- avx2 -----------------------------------------------------------------------------------

// tables[mode][a][32]: popcount(n XOR a) / popcount(n AND a) for n = 0..15, in both 128-bit lanes
// (VPSHUFB looks up within each lane).
alignas(64) static uint8_t kTables[2][16][32];
static bool init_tables() {
  for (int m = 0; m < 2; ++m)
    for (int a = 0; a < 16; ++a)
      for (int n = 0; n < 32; ++n) kTables[m][a][n] = __builtin_popcount(m == 0 ? ((n & 15) ^ a) : ((n & 15) & a));
  return true;
}
static const bool kTablesReady = init_tables();

constexpr int64_t kFlushGroups = 62;  // 62 groups x at most 4 per group = 248 < 256: bytes never overflow

template <int NT>
KB_TARGET("avx2")
static void binary_tile_avx2(const uint16_t* const* offs, const uint8_t* wb, int64_t G, uint16_t* acc16) {
  const uint8_t* tab = &kTables[0][0][0];
  const __m256i m4 = _mm256_set1_epi8(0x0F);
  for (int64_t g0 = 0; g0 < G; g0 += kFlushGroups) {
    const int64_t g1 = std::min(G, g0 + kFlushGroups);
    __m256i lo[NT], hi[NT];
    for (int t = 0; t < NT; ++t) lo[t] = hi[t] = _mm256_setzero_si256();
    for (int64_t g = g0; g < g1; ++g) {
      const __m256i w = _mm256_load_si256(reinterpret_cast<const __m256i*>(wb + g * 32));
      const __m256i wl = _mm256_and_si256(w, m4);
      const __m256i wh = _mm256_and_si256(_mm256_srli_epi16(w, 4), m4);
      for (int t = 0; t < NT; ++t) {
        const __m256i tb = _mm256_load_si256(reinterpret_cast<const __m256i*>(tab + offs[t][g]));
        lo[t] = _mm256_add_epi8(lo[t], _mm256_shuffle_epi8(tb, wl));
        hi[t] = _mm256_add_epi8(hi[t], _mm256_shuffle_epi8(tb, wh));
      }
    }
    for (int t = 0; t < NT; ++t) {  // widen the byte counts into the 16-bit totals (rows 0..63)
      __m256i* a = reinterpret_cast<__m256i*>(acc16 + t * 64);
      const __m256i parts[4] = {_mm256_cvtepu8_epi16(_mm256_castsi256_si128(lo[t])),
                                _mm256_cvtepu8_epi16(_mm256_extracti128_si256(lo[t], 1)),
                                _mm256_cvtepu8_epi16(_mm256_castsi256_si128(hi[t])),
                                _mm256_cvtepu8_epi16(_mm256_extracti128_si256(hi[t], 1))};
      for (int i = 0; i < 4; ++i) _mm256_store_si256(a + i, _mm256_add_epi16(_mm256_load_si256(a + i), parts[i]));
    }
  }
}

#ifndef KB_TOKENS_AVX2
#define KB_TOKENS_AVX2 4
#endif
constexpr int kTokensAvx2 = KB_TOKENS_AVX2;  // tokens x 2 byte accumulators + weights + table in 16 registers

template <int NT>
KB_TARGET("avx2")
static void binary_block_avx2(const uint16_t* offs, int64_t t, int64_t G, const uint8_t* wb, int64_t o0, int64_t n,
                              const Epi& e) {
  alignas(32) uint16_t acc16[NT * 64];
  alignas(32) int32_t cnt[64];
  std::memset(acc16, 0, sizeof(acc16));
  const uint16_t* rows[NT];
  for (int i = 0; i < NT; ++i) rows[i] = offs + (t + i) * G;
  binary_tile_avx2<NT>(rows, wb, G, acc16);
  if (n == 64 && !e.d) {  // a full block: the vector epilogue straight from the 16-bit counts
    for (int i = 0; i < NT; ++i)
      for (int j = 0; j < 64; j += 8)
        finish8_avx2(e, t + i, o0 + j,
                     _mm256_cvtepu16_epi32(_mm_load_si128(reinterpret_cast<const __m128i*>(acc16 + i * 64 + j))));
    return;
  }
  for (int i = 0; i < NT; ++i) {
    for (int j = 0; j < 64; ++j) cnt[j] = acc16[i * 64 + j];
    finish(e, t + i, o0, n, cnt);
  }
}

KB_TARGET("avx2")
void binary_counts_avx2(const uint16_t* offs, int64_t t0, int64_t t1, int64_t KW, const uint8_t* w,
                        int64_t b0, int64_t b1, int mode, const Epi& e, int64_t O) {
  (void)mode;  // folded into the offsets (the AND tables follow the XOR ones)
  const int64_t G = 16 * KW;
  for (int64_t b = b0; b < b1; ++b) {
    const uint8_t* wb = w + b * G * 32;
    const int64_t n = std::min<int64_t>(64, O - b * 64);
    int64_t t = t0;
    for (; t + kTokensAvx2 <= t1; t += kTokensAvx2) binary_block_avx2<kTokensAvx2>(offs, t, G, wb, b * 64, n, e);
    switch (t1 - t) {
      case 4: binary_block_avx2<4>(offs, t, G, wb, b * 64, n, e); break;
      case 3: binary_block_avx2<3>(offs, t, G, wb, b * 64, n, e); break;
      case 2: binary_block_avx2<2>(offs, t, G, wb, b * 64, n, e); break;
      case 1: binary_block_avx2<1>(offs, t, G, wb, b * 64, n, e); break;
      default: break;
    }
  }
}

// ---- avx512 (VPOPCNTDQ) -----------------------------------------------------------------------

#define KB_AVX512_POPCNT "avx512f,avx512bw,avx512vl,avx512dq,avx512vpopcntdq"

template <int NT, int NV>
KB_TARGET(KB_AVX512_POPCNT)
static void binary_tile_avx512(const uint64_t* act, int64_t t, int64_t KW, const uint64_t* w, int64_t b, int mode,
                               const Epi& e, int64_t O) {
  __m512i acc[NT][NV];
  for (int i = 0; i < NT; ++i)
    for (int v = 0; v < NV; ++v) acc[i][v] = _mm512_setzero_si512();
  for (int64_t k = 0; k < KW; ++k) {
    __m512i wv[NV];
    for (int v = 0; v < NV; ++v) wv[v] = _mm512_loadu_si512(w + ((b + v) * KW + k) * 8);
    for (int i = 0; i < NT; ++i) {
      const __m512i a = _mm512_set1_epi64(static_cast<long long>(act[(t + i) * KW + k]));
      for (int v = 0; v < NV; ++v) {
        const __m512i x = mode == 0 ? _mm512_xor_si512(a, wv[v]) : _mm512_and_si512(a, wv[v]);
        acc[i][v] = _mm512_add_epi64(acc[i][v], _mm512_popcnt_epi64(x));
      }
    }
  }
  alignas(32) int32_t cnt[8];
  for (int i = 0; i < NT; ++i)
    for (int v = 0; v < NV; ++v) {
      _mm256_store_si256(reinterpret_cast<__m256i*>(cnt), _mm512_cvtepi64_epi32(acc[i][v]));
      finish(e, t + i, (b + v) * 8, std::min<int64_t>(8, O - (b + v) * 8), cnt);
    }
}

template <int NV>
KB_TARGET(KB_AVX512_POPCNT)
static void binary_rows_avx512(const uint64_t* act, int64_t t0, int64_t t1, int64_t KW, const uint64_t* w, int64_t b,
                               int mode, const Epi& e, int64_t O) {
  int64_t t = t0;
  for (; t + 6 <= t1; t += 6) binary_tile_avx512<6, NV>(act, t, KW, w, b, mode, e, O);
  for (; t < t1; ++t) binary_tile_avx512<1, NV>(act, t, KW, w, b, mode, e, O);
}

KB_TARGET(KB_AVX512_POPCNT)
void binary_counts_avx512(const uint64_t* act, int64_t t0, int64_t t1, int64_t KW, const uint64_t* w,
                          int64_t b0, int64_t b1, int mode, const Epi& e, int64_t O) {
  int64_t b = b0;
  for (; b + 4 <= b1; b += 4) binary_rows_avx512<4>(act, t0, t1, KW, w, b, mode, e, O);
  for (; b < b1; ++b) binary_rows_avx512<1>(act, t0, t1, KW, w, b, mode, e, O);
}

#else  // not x86: the vector paths are never selected (cpu_has says no); these keep the linker happy

void pack_signs_avx2(const float* x, const float* beta, bool beta_vec, int64_t K, int64_t KW, uint64_t* out) {
  pack_signs_portable(x, beta, beta_vec, K, KW, out);
}
void binary_counts_avx2(const uint16_t*, int64_t, int64_t, int64_t, const uint8_t*, int64_t, int64_t, int,
                        const Epi&, int64_t) {}
void binary_counts_avx512(const uint64_t* act, int64_t t0, int64_t t1, int64_t KW, const uint64_t* w,
                          int64_t b0, int64_t b1, int mode, const Epi& e, int64_t O) {
  binary_counts_portable(act, t0, t1, KW, w, b0, b1, mode, e, O);
}

#endif

}  // namespace kb

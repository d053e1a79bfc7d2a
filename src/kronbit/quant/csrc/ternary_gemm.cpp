// 2-bit (ternary) weights x int8 activations: S[t][o] = sum_k u[o][k] * q[t][k], u = code + 2 in
// [0, 3], so the signed dot product is S - 2 * sum_k q[t][k] (the epilogue's per-token offset).
//
// The weights stay 2-bit in memory; a 32-byte chunk holds 4 quads (4 inputs each) of 8 rows, and
// a quad is decoded in registers with one shift and one mask. Using the unsigned field u as the
// unsigned operand of the u8 x s8 multiply (VPMADDUBSW / VPDPBUSD) lets the activations stay
// signed int8, with no zero point.
//  * avx2: VPMADDUBSW (pairs summed into int16; |pair| <= 3 * 128 * 2 = 768, so 32 quads fit int16
//    before a VPMADDWD flush into int32);
//  * avxvnni / avx512 (VNNI): VPDPBUSD straight into int32 (avx512: two 8-row blocks per zmm);
//  * portable: scalar.
// Min-max quantization of the activations (symmetric, 8 bits) is here too.
#include "bitkernels.h"

#include <algorithm>
#include <cmath>

namespace kb {

void ternary_dots_portable(const int8_t* act, int64_t t0, int64_t t1, int64_t KP, const uint8_t* w,
                           int64_t b0, int64_t b1, const Epi& e, int64_t O) {
  const int64_t KC = KP / 16;
  int8_t u[8][16];
  int32_t acc[8];
  for (int64_t b = b0; b < b1; ++b) {
    const int64_t n = std::min<int64_t>(8, O - b * 8);
    for (int64_t t = t0; t < t1; ++t) {
      for (int r = 0; r < 8; ++r) acc[r] = 0;
      const int8_t* q = act + t * KP;
      for (int64_t c = 0; c < KC; ++c) {
        const uint8_t* ch = w + (b * KC + c) * 32;
        for (int r = 0; r < 8; ++r)
          for (int s = 0; s < 4; ++s)
            for (int i = 0; i < 4; ++i) u[r][4 * s + i] = (ch[4 * r + i] >> (2 * s)) & 3;
        for (int r = 0; r < 8; ++r) {
          int32_t sum = 0;
          for (int j = 0; j < 16; ++j) sum += u[r][j] * q[c * 16 + j];
          acc[r] += sum;
        }
      }
      finish(e, t, b * 8, n, acc);
    }
  }
}

float absmax_portable(const float* x, int64_t n, float cv) {
  float m = 0.f;
  for (int64_t i = 0; i < n; ++i) m = std::max(m, std::min(std::fabs(x[i]), cv));
  return m;
}

int32_t quantize_row_portable(const float* x, int64_t K, int64_t KP, float s, float cv, int8_t* q) {
  int32_t sum = 0;
  for (int64_t k = 0; k < K; ++k) {
    const float xc = std::min(std::max(x[k], -cv), cv);
    const float r = std::min(std::max(std::nearbyint(xc / s), -127.f), 127.f);  // round half to even
    q[k] = static_cast<int8_t>(r);
    sum += q[k];
  }
  for (int64_t k = K; k < KP; ++k) q[k] = 0;
  return sum;
}

#if KB_X86

KB_TARGET("avx2")
float absmax_avx2(const float* x, int64_t n, float cv) {
  const __m256 sign = _mm256_set1_ps(-0.f), c = _mm256_set1_ps(cv);
  __m256 m = _mm256_setzero_ps();
  int64_t i = 0;
  for (; i + 8 <= n; i += 8) m = _mm256_max_ps(m, _mm256_min_ps(_mm256_andnot_ps(sign, _mm256_loadu_ps(x + i)), c));
  alignas(32) float lanes[8];
  _mm256_store_ps(lanes, m);
  float r = 0.f;
  for (float l : lanes) r = std::max(r, l);
  for (; i < n; ++i) r = std::max(r, std::min(std::fabs(x[i]), cv));
  return r;
}

KB_TARGET("avx2")
int32_t quantize_row_avx2(const float* x, int64_t K, int64_t KP, float s, float cv, int8_t* q) {
  const __m256 c = _mm256_set1_ps(cv), nc = _mm256_set1_ps(-cv), sv = _mm256_set1_ps(s);
  const __m256 hi = _mm256_set1_ps(127.f), lo = _mm256_set1_ps(-127.f);
  __m256i sum = _mm256_setzero_si256();
  int64_t k = 0;
  for (; k + 8 <= K; k += 8) {
    const __m256 xc = _mm256_min_ps(_mm256_max_ps(_mm256_loadu_ps(x + k), nc), c);
    __m256 r = _mm256_round_ps(_mm256_div_ps(xc, sv), _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
    r = _mm256_min_ps(_mm256_max_ps(r, lo), hi);
    const __m256i i32 = _mm256_cvtps_epi32(r);
    sum = _mm256_add_epi32(sum, i32);
    const __m128i i16 = _mm_packs_epi32(_mm256_castsi256_si128(i32), _mm256_extracti128_si256(i32, 1));
    _mm_storel_epi64(reinterpret_cast<__m128i*>(q + k), _mm_packs_epi16(i16, i16));
  }
  alignas(32) int32_t lanes[8];
  _mm256_store_si256(reinterpret_cast<__m256i*>(lanes), sum);
  int32_t total = 0;
  for (int32_t l : lanes) total += l;
  return total + quantize_row_portable(x + k, K - k, KP - k, s, cv, q + k);
}

#ifndef KB_TOKENS_TERN
#define KB_TOKENS_TERN 4
#endif
constexpr int kTokensTern = KB_TOKENS_TERN, kVecsTern = 2;  // tokens x 2 blocks of 8 rows per tile
constexpr int64_t kFlushChunks = 8;             // 8 chunks = 32 quads: int16 sums stay below 32 x 768

template <int NT>
KB_TARGET("avx2")
static void ternary_tile_avx2(const int8_t* act, int64_t t, int64_t KP, const uint8_t* w, int64_t b, int nv,
                              const Epi& e, int64_t O) {
  const int64_t KC = KP / 16;
  const __m256i m3 = _mm256_set1_epi8(3), ones = _mm256_set1_epi16(1);
  __m256i acc32[NT][kVecsTern];
  for (int i = 0; i < NT; ++i)
    for (int v = 0; v < kVecsTern; ++v) acc32[i][v] = _mm256_setzero_si256();
  const uint8_t* wv[kVecsTern];
  for (int v = 0; v < kVecsTern; ++v) wv[v] = w + (b + std::min(v, nv - 1)) * KC * 32;
  for (int64_t c0 = 0; c0 < KC; c0 += kFlushChunks) {
    const int64_t c1 = std::min(KC, c0 + kFlushChunks);
    __m256i a16[NT][kVecsTern];
    for (int i = 0; i < NT; ++i)
      for (int v = 0; v < kVecsTern; ++v) a16[i][v] = _mm256_setzero_si256();
    for (int64_t c = c0; c < c1; ++c) {
      __m256i raw[kVecsTern];
      for (int v = 0; v < kVecsTern; ++v) raw[v] = _mm256_load_si256(reinterpret_cast<const __m256i*>(wv[v] + c * 32));
      for (int s = 0; s < 4; ++s) {
        __m256i u[kVecsTern];
        for (int v = 0; v < kVecsTern; ++v) u[v] = _mm256_and_si256(_mm256_srli_epi16(raw[v], 2 * s), m3);
        for (int i = 0; i < NT; ++i) {
          int32_t quad;
          std::memcpy(&quad, act + (t + i) * KP + c * 16 + 4 * s, 4);
          const __m256i a = _mm256_set1_epi32(quad);
          for (int v = 0; v < kVecsTern; ++v) a16[i][v] = _mm256_add_epi16(a16[i][v], _mm256_maddubs_epi16(u[v], a));
        }
      }
    }
    for (int i = 0; i < NT; ++i)
      for (int v = 0; v < kVecsTern; ++v) acc32[i][v] = _mm256_add_epi32(acc32[i][v], _mm256_madd_epi16(a16[i][v], ones));
  }
  alignas(32) int32_t cnt[8];
  for (int i = 0; i < NT; ++i)
    for (int v = 0; v < nv; ++v) {
      if (!e.d && (b + v) * 8 + 8 <= O) {
        finish8_avx2(e, t + i, (b + v) * 8, acc32[i][v]);
        continue;
      }
      _mm256_store_si256(reinterpret_cast<__m256i*>(cnt), acc32[i][v]);
      finish(e, t + i, (b + v) * 8, std::min<int64_t>(8, O - (b + v) * 8), cnt);
    }
}

KB_TARGET("avx2")
void ternary_dots_avx2(const int8_t* act, int64_t t0, int64_t t1, int64_t KP, const uint8_t* w,
                       int64_t b0, int64_t b1, const Epi& e, int64_t O) {
  for (int64_t b = b0; b < b1; b += kVecsTern) {
    const int nv = static_cast<int>(std::min<int64_t>(kVecsTern, b1 - b));
    int64_t t = t0;
    for (; t + kTokensTern <= t1; t += kTokensTern) ternary_tile_avx2<kTokensTern>(act, t, KP, w, b, nv, e, O);
    for (; t < t1; ++t) ternary_tile_avx2<1>(act, t, KP, w, b, nv, e, O);
  }
}

// ---- VNNI -------------------------------------------------------------------------------------

template <int NT>
KB_TARGET("avx2,avxvnni")
static void ternary_tile_avxvnni(const int8_t* act, int64_t t, int64_t KP, const uint8_t* w, int64_t b, int nv,
                                 const Epi& e, int64_t O) {
  const int64_t KC = KP / 16;
  const __m256i m3 = _mm256_set1_epi8(3);
  __m256i acc[NT][kVecsTern];
  for (int i = 0; i < NT; ++i)
    for (int v = 0; v < kVecsTern; ++v) acc[i][v] = _mm256_setzero_si256();
  const uint8_t* wv[kVecsTern];
  for (int v = 0; v < kVecsTern; ++v) wv[v] = w + (b + std::min(v, nv - 1)) * KC * 32;
  for (int64_t c = 0; c < KC; ++c) {
    __m256i raw[kVecsTern];
    for (int v = 0; v < kVecsTern; ++v) raw[v] = _mm256_load_si256(reinterpret_cast<const __m256i*>(wv[v] + c * 32));
    for (int s = 0; s < 4; ++s) {
      __m256i u[kVecsTern];
      for (int v = 0; v < kVecsTern; ++v) u[v] = _mm256_and_si256(_mm256_srli_epi16(raw[v], 2 * s), m3);
      for (int i = 0; i < NT; ++i) {
        int32_t quad;
        std::memcpy(&quad, act + (t + i) * KP + c * 16 + 4 * s, 4);
        const __m256i a = _mm256_set1_epi32(quad);
        for (int v = 0; v < kVecsTern; ++v) acc[i][v] = _mm256_dpbusd_avx_epi32(acc[i][v], u[v], a);
      }
    }
  }
  alignas(32) int32_t cnt[8];
  for (int i = 0; i < NT; ++i)
    for (int v = 0; v < nv; ++v) {
      if (!e.d && (b + v) * 8 + 8 <= O) {
        finish8_avx2(e, t + i, (b + v) * 8, acc[i][v]);
        continue;
      }
      _mm256_store_si256(reinterpret_cast<__m256i*>(cnt), acc[i][v]);
      finish(e, t + i, (b + v) * 8, std::min<int64_t>(8, O - (b + v) * 8), cnt);
    }
}

KB_TARGET("avx2,avxvnni")
void ternary_dots_avxvnni(const int8_t* act, int64_t t0, int64_t t1, int64_t KP, const uint8_t* w,
                          int64_t b0, int64_t b1, const Epi& e, int64_t O) {
  for (int64_t b = b0; b < b1; b += kVecsTern) {
    const int nv = static_cast<int>(std::min<int64_t>(kVecsTern, b1 - b));
    int64_t t = t0;
    for (; t + kTokensTern <= t1; t += kTokensTern) ternary_tile_avxvnni<kTokensTern>(act, t, KP, w, b, nv, e, O);
    for (; t < t1; ++t) ternary_tile_avxvnni<1>(act, t, KP, w, b, nv, e, O);
  }
}

#define KB_AVX512_VNNI "avx512f,avx512bw,avx512vl,avx512dq,avx512vnni"

// Two consecutive 8-row blocks in one zmm (rows 8b..8b+15); 6 tokens x 2 zmm of accumulators.
template <int NT>
KB_TARGET(KB_AVX512_VNNI)
static void ternary_tile_avx512(const int8_t* act, int64_t t, int64_t KP, const uint8_t* w, int64_t b, int nb,
                                const Epi& e, int64_t O) {
  constexpr int NV = 2;  // zmm per token: 4 blocks of 8 rows
  const int64_t KC = KP / 16;
  const __m512i m3 = _mm512_set1_epi8(3);
  __m512i acc[NT][NV];
  for (int i = 0; i < NT; ++i)
    for (int v = 0; v < NV; ++v) acc[i][v] = _mm512_setzero_si512();
  const uint8_t* blk[2 * NV];
  for (int j = 0; j < 2 * NV; ++j) blk[j] = w + (b + std::min(j, nb - 1)) * KC * 32;
  for (int64_t c = 0; c < KC; ++c) {
    __m512i raw[NV];
    for (int v = 0; v < NV; ++v) {
      const __m256i lo = _mm256_load_si256(reinterpret_cast<const __m256i*>(blk[2 * v] + c * 32));
      const __m256i hi = _mm256_load_si256(reinterpret_cast<const __m256i*>(blk[2 * v + 1] + c * 32));
      raw[v] = _mm512_inserti64x4(_mm512_castsi256_si512(lo), hi, 1);
    }
    for (int s = 0; s < 4; ++s) {
      __m512i u[NV];
      for (int v = 0; v < NV; ++v) u[v] = _mm512_and_si512(_mm512_srli_epi16(raw[v], 2 * s), m3);
      for (int i = 0; i < NT; ++i) {
        int32_t quad;
        std::memcpy(&quad, act + (t + i) * KP + c * 16 + 4 * s, 4);
        const __m512i a = _mm512_set1_epi32(quad);
        for (int v = 0; v < NV; ++v) acc[i][v] = _mm512_dpbusd_epi32(acc[i][v], u[v], a);
      }
    }
  }
  alignas(64) int32_t cnt[16];
  for (int i = 0; i < NT; ++i)
    for (int v = 0; v < NV; ++v) {
      if (2 * v + 1 < nb && (b + 2 * v) * 8 + 16 <= O) {  // 16 real outputs: the vector epilogue
        finish16_avx512(e, t + i, (b + 2 * v) * 8, acc[i][v]);
        continue;
      }
      _mm512_store_si512(cnt, acc[i][v]);
      for (int h = 0; h < 2; ++h) {
        const int j = 2 * v + h;
        if (j < nb) finish(e, t + i, (b + j) * 8, std::min<int64_t>(8, O - (b + j) * 8), cnt + 8 * h);
      }
    }
}

KB_TARGET(KB_AVX512_VNNI)
void ternary_dots_avx512(const int8_t* act, int64_t t0, int64_t t1, int64_t KP, const uint8_t* w,
                         int64_t b0, int64_t b1, const Epi& e, int64_t O) {
  for (int64_t b = b0; b < b1; b += 4) {
    const int nb = static_cast<int>(std::min<int64_t>(4, b1 - b));
    int64_t t = t0;
    for (; t + 6 <= t1; t += 6) ternary_tile_avx512<6>(act, t, KP, w, b, nb, e, O);
    for (; t < t1; ++t) ternary_tile_avx512<1>(act, t, KP, w, b, nb, e, O);
  }
}

#else

float absmax_avx2(const float* x, int64_t n, float cv) { return absmax_portable(x, n, cv); }
int32_t quantize_row_avx2(const float* x, int64_t K, int64_t KP, float s, float cv, int8_t* q) {
  return quantize_row_portable(x, K, KP, s, cv, q);
}
void ternary_dots_avx2(const int8_t* a, int64_t t0, int64_t t1, int64_t KP, const uint8_t* w, int64_t b0, int64_t b1,
                       const Epi& e, int64_t O) { ternary_dots_portable(a, t0, t1, KP, w, b0, b1, e, O); }
void ternary_dots_avxvnni(const int8_t* a, int64_t t0, int64_t t1, int64_t KP, const uint8_t* w, int64_t b0,
                          int64_t b1, const Epi& e, int64_t O) { ternary_dots_portable(a, t0, t1, KP, w, b0, b1, e, O); }
void ternary_dots_avx512(const int8_t* a, int64_t t0, int64_t t1, int64_t KP, const uint8_t* w, int64_t b0,
                         int64_t b1, const Epi& e, int64_t O) { ternary_dots_portable(a, t0, t1, KP, w, b0, b1, e, O); }

#endif

}  // namespace kb

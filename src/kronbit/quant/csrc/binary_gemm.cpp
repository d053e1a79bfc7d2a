// Binary GEMM: counts[t][o] = popcount(A_t XOR W_o) (±1 activations x ±1 weights) or
// popcount(A_t AND W_o) ({0,1} activations x ±1 weights), three code paths.
//
//  * portable: 64-bit words, __builtin_popcountll.
//  * avx512 (VPOPCNTDQ): 8 weight rows per zmm (one 64-bit word of each), the token's word
//    broadcast, XOR/AND, VPOPCNTQ, VPADDQ: 6 tokens x 32 rows of accumulators in registers.
//    A full tile whose epilogue writes one kind of output (D, floats, ±scale, sign bytes, bits)
//    runs a copy specialised for it; partial tiles and mixed outputs run the general one.
//  * avx2: no vector popcount, so a nibble lookup (VPSHUFB, 32 lookups per instruction). The
//    lookup table is chosen by the token's nibble: table_a[n] = popcount(n XOR a) (or AND), one of
//    16 fixed tables, so the XOR is folded into the table (as T-MAC folds activations into its
//    tables) and a weight nibble costs one lookup per token. The 4-bit weight indices of 64 rows
//    sit in one 32-byte register (low and high nibbles) and are extracted once for a tile of 6
//    tokens (12 byte accumulators: the inner loop is assembly, see binary_segment_avx2); counts
//    accumulate in bytes (at most 4 per group, flushed to 16 bits every 62 groups).
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

// The packers set bits without branching: activation signs are close to a coin toss, and a branch
// per element mispredicted about half the time (~10x slower on a 128 x 64 head).
void pack_signs_portable(const float* x, const float* beta, bool beta_vec, int64_t K, int64_t KW, uint64_t* out) {
  for (int64_t k = 0; k < KW; ++k) out[k] = 0;
  for (int64_t k = 0; k < K; ++k) {
    const float u = x[k] - (beta_vec ? beta[k] : beta[0]);
    out[k >> 6] |= static_cast<uint64_t>(!std::signbit(u)) << (k & 63);
  }
}

void pack_unsigned_portable(const float* x, float alpha, int64_t K, int64_t KW, uint64_t* out) {
  for (int64_t k = 0; k < KW; ++k) out[k] = 0;
  for (int64_t k = 0; k < K; ++k) out[k >> 6] |= static_cast<uint64_t>(x[k] / alpha > 0.5f) << (k & 63);
}

void pack_unsigned_offset_portable(const float* x, const float* beta, bool beta_vec, float alpha, int64_t K,
                                   int64_t KW, uint64_t* out) {
  for (int64_t k = 0; k < KW; ++k) out[k] = 0;
  for (int64_t k = 0; k < K; ++k) {
    const float u = x[k] - (beta_vec ? beta[k] : beta[0]);  // rounded, then divided: as torch does
    out[k >> 6] |= static_cast<uint64_t>(u / alpha > 0.5f) << (k & 63);
  }
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

// beta null: no offset. Bit k = fl(fl(x - beta) / alpha) > 0.5, as the scalar packers.
KB_TARGET("avx512f,avx512bw,avx512vl,avx512dq")
void pack_unsigned_avx512(const float* x, const float* beta, bool beta_vec, float alpha, int64_t K, int64_t KW,
                          uint64_t* out) {
  const __m512 a = _mm512_set1_ps(alpha), half = _mm512_set1_ps(0.5f);
  const __m512 bs = _mm512_set1_ps(beta ? beta[0] : 0.f);
  int64_t k = 0;
  for (int64_t w = 0; w < KW; ++w) {
    uint64_t word = 0;
    if (k + 64 <= K) {
      for (int j = 0; j < 4; ++j, k += 16) {
        __m512 u = _mm512_loadu_ps(x + k);
        if (beta) u = _mm512_sub_ps(u, beta_vec ? _mm512_loadu_ps(beta + k) : bs);
        const __mmask16 m = _mm512_cmp_ps_mask(_mm512_div_ps(u, a), half, _CMP_GT_OQ);
        word |= static_cast<uint64_t>(m) << (16 * j);
      }
    } else {
      for (int j = 0; j < 64 && k < K; ++j, ++k) {
        const float u = beta ? x[k] - (beta_vec ? beta[k] : beta[0]) : x[k];
        word |= static_cast<uint64_t>(u / alpha > 0.5f) << j;
      }
    }
    out[w] = word;
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

// One flush segment of a tile: n groups of kTileTokens tokens x 64 rows, byte counts out[2t] (rows
// 0..31) and out[2t+1] (rows 32..63) of token t. Per group: the 64 weight nibbles split once, then
// per token one table load, two lookups, two byte adds.
#if defined(__GNUC__) && defined(__x86_64__)
// Written in assembly because GCC's allocation of the 12 accumulators in the intrinsic version
// added a register copy per add and spilled one (~45 instructions a group against 40 here: 3.0
// against ~1.3 cycles per token and group on Zen 3, measured): 12 accumulators in ymm0-11, the
// split weights in ymm12-13, the table and a lookup in ymm14-15, the 0x0F mask from memory.
#define KB_S(x) #x
#define KB_TOKEN(t, A, B)                                                                          \
  "movzwl " KB_S(t) "*2(%[q]), %k[r]\n\t"                                                          \
  "vmovdqa (%[tab],%[r]), %%ymm14\n\t"                                                             \
  "vpshufb %%ymm12, %%ymm14, %%ymm15\n\t"                                                          \
  "vpshufb %%ymm13, %%ymm14, %%ymm14\n\t"                                                          \
  "vpaddb %%ymm15, %%ymm" KB_S(A) ", %%ymm" KB_S(A) "\n\t"                                          \
  "vpaddb %%ymm14, %%ymm" KB_S(B) ", %%ymm" KB_S(B) "\n\t"
#define KB_ZERO(A) "vpxor %%xmm" KB_S(A) ", %%xmm" KB_S(A) ", %%xmm" KB_S(A) "\n\t"
#define KB_STORE(A) "vmovdqa %%ymm" KB_S(A) ", " KB_S(A) "*32(%[out])\n\t"
alignas(32) static const uint8_t kLowNibbles[32] = {15, 15, 15, 15, 15, 15, 15, 15, 15, 15, 15, 15, 15, 15, 15, 15,
                                                    15, 15, 15, 15, 15, 15, 15, 15, 15, 15, 15, 15, 15, 15, 15, 15};
KB_TARGET("avx2")
static void binary_segment_avx2(const uint16_t* q, const uint8_t* w, int64_t n, __m256i* out) {
  static_assert(kTileTokens == 6, "the assembly holds 6 tokens");
  const uint8_t* tab = &kTables[0][0][0];
  uint64_t r;
  asm volatile(
      KB_ZERO(0) KB_ZERO(1) KB_ZERO(2) KB_ZERO(3) KB_ZERO(4) KB_ZERO(5) KB_ZERO(6) KB_ZERO(7) KB_ZERO(8) KB_ZERO(9)
      KB_ZERO(10) KB_ZERO(11)
      "1:\n\t"
      "vmovdqa (%[w]), %%ymm12\n\t"
      "vpsrlw $4, %%ymm12, %%ymm13\n\t"
      "vpand %[m4], %%ymm12, %%ymm12\n\t"
      "vpand %[m4], %%ymm13, %%ymm13\n\t"
      KB_TOKEN(0, 0, 1) KB_TOKEN(1, 2, 3) KB_TOKEN(2, 4, 5) KB_TOKEN(3, 6, 7) KB_TOKEN(4, 8, 9) KB_TOKEN(5, 10, 11)
      "add $32, %[w]\n\t"
      "add $12, %[q]\n\t"
      "dec %[n]\n\t"
      "jnz 1b\n\t"
      KB_STORE(0) KB_STORE(1) KB_STORE(2) KB_STORE(3) KB_STORE(4) KB_STORE(5) KB_STORE(6) KB_STORE(7) KB_STORE(8)
      KB_STORE(9) KB_STORE(10) KB_STORE(11)
      : [w] "+r"(w), [q] "+r"(q), [n] "+r"(n), [r] "=&r"(r)
      : [tab] "r"(tab), [m4] "m"(*reinterpret_cast<const __m256i*>(kLowNibbles)), [out] "r"(out)
      : "cc", "memory", "xmm0", "xmm1", "xmm2", "xmm3", "xmm4", "xmm5", "xmm6", "xmm7", "xmm8", "xmm9", "xmm10",
        "xmm11", "xmm12", "xmm13", "xmm14", "xmm15");
}
#else  // other compilers / 32-bit x86: the same loop in intrinsics
KB_TARGET("avx2")
static void binary_segment_avx2(const uint16_t* q, const uint8_t* w, int64_t n, __m256i* out) {
  const uint8_t* tab = &kTables[0][0][0];
  const __m256i m4 = _mm256_set1_epi8(0x0F);
  for (int i = 0; i < 2 * kTileTokens; ++i) out[i] = _mm256_setzero_si256();
  for (int64_t g = 0; g < n; ++g, w += 32, q += kTileTokens) {
    const __m256i wv = _mm256_load_si256(reinterpret_cast<const __m256i*>(w));
    const __m256i wl = _mm256_and_si256(wv, m4), wh = _mm256_and_si256(_mm256_srli_epi16(wv, 4), m4);
    for (int t = 0; t < kTileTokens; ++t) {
      const __m256i tb = _mm256_load_si256(reinterpret_cast<const __m256i*>(tab + q[t]));
      out[2 * t] = _mm256_add_epi8(out[2 * t], _mm256_shuffle_epi8(tb, wl));
      out[2 * t + 1] = _mm256_add_epi8(out[2 * t + 1], _mm256_shuffle_epi8(tb, wh));
    }
  }
}
#endif

// A tile: kTileTokens tokens x one 64-row block over all G groups, 16-bit totals acc16[t][64].
KB_TARGET("avx2")
static void binary_tile_avx2(const uint16_t* q, const uint8_t* wb, int64_t G, uint16_t* acc16) {
  alignas(32) __m256i bytes[2 * kTileTokens];
  for (int64_t g0 = 0; g0 < G; g0 += kFlushGroups) {
    binary_segment_avx2(q + g0 * kTileTokens, wb + g0 * 32, std::min(kFlushGroups, G - g0), bytes);
    for (int t = 0; t < kTileTokens; ++t) {  // widen the byte counts into the 16-bit totals (rows 0..63)
      __m256i* a = reinterpret_cast<__m256i*>(acc16 + t * 64);
      const __m256i lo = bytes[2 * t], hi = bytes[2 * t + 1];
      const __m256i parts[4] = {_mm256_cvtepu8_epi16(_mm256_castsi256_si128(lo)),
                                _mm256_cvtepu8_epi16(_mm256_extracti128_si256(lo, 1)),
                                _mm256_cvtepu8_epi16(_mm256_castsi256_si128(hi)),
                                _mm256_cvtepu8_epi16(_mm256_extracti128_si256(hi, 1))};
      for (int i = 0; i < 4; ++i) _mm256_store_si256(a + i, _mm256_add_epi16(_mm256_load_si256(a + i), parts[i]));
    }
  }
}

KB_TARGET("avx2")
void binary_counts_avx2(const uint16_t* offs, int64_t tile0, int64_t tile1, int64_t T, int64_t KW, const uint8_t* w,
                        int64_t b0, int64_t b1, int mode, const Epi& e, int64_t O) {
  (void)mode;  // folded into the offsets (the AND tables follow the XOR ones)
  const int64_t G = 16 * KW;
  alignas(32) uint16_t acc16[kTileTokens * 64];
  alignas(32) int32_t cnt[64];
  for (int64_t b = b0; b < b1; ++b) {
    const uint8_t* wb = w + b * G * 32;
    const int64_t o0 = b * 64, n = std::min<int64_t>(64, O - o0);
    for (int64_t tile = tile0; tile < tile1; ++tile) {
      std::memset(acc16, 0, sizeof(acc16));
      binary_tile_avx2(offs + tile * G * kTileTokens, wb, G, acc16);
      const int64_t t = tile * kTileTokens, nt = std::min<int64_t>(kTileTokens, T - t);  // padding tokens dropped
      for (int i = 0; i < nt; ++i) {
        const uint16_t* a = acc16 + i * 64;
        if (n == 64 && !e.d && e.bits) {
          bits64_avx2(e, t + i, o0, a);
        } else if (n == 64 && !e.d && e.y && e.pm == 0.f) {  // a full block: the vector epilogue from the 16-bit counts
          for (int j = 0; j < 64; j += 8)
            finish8_avx2(e, t + i, o0 + j, _mm256_cvtepu16_epi32(_mm_load_si128(reinterpret_cast<const __m128i*>(a + j))));
        } else {
          for (int j = 0; j < 64; ++j) cnt[j] = a[j];
          finish(e, t + i, o0, n, cnt);
        }
      }
    }
  }
}

// ---- avx512 (VPOPCNTDQ) -----------------------------------------------------------------------

#define KB_AVX512_POPCNT "avx512f,avx512bw,avx512vl,avx512dq,avx512vpopcntdq"

// MODE is a template argument so the inner loop has no branch on it (GCC kept one per word).
template <int NT, int NV, int MODE>
KB_TARGET(KB_AVX512_POPCNT)
static void binary_tile_avx512(const uint64_t* act, int64_t t, int64_t KW, const uint64_t* w, int64_t b,
                               const Epi& epi, int64_t O) {
  // A local copy: the epilogue's stores go through byte pointers, which may alias the caller's
  // Epi, so with a reference the compiler reloads every field after every store.
  const Epi e = epi;
  __m512i acc[NT][NV];
  for (int i = 0; i < NT; ++i)
    for (int v = 0; v < NV; ++v) acc[i][v] = _mm512_setzero_si512();
  for (int64_t k = 0; k < KW; ++k) {
    __m512i wv[NV];
    for (int v = 0; v < NV; ++v) wv[v] = _mm512_loadu_si512(w + ((b + v) * KW + k) * 8);
    for (int i = 0; i < NT; ++i) {
      const __m512i a = _mm512_set1_epi64(static_cast<long long>(act[(t + i) * KW + k]));
      for (int v = 0; v < NV; ++v) {
        const __m512i x = MODE == 0 ? _mm512_xor_si512(a, wv[v]) : _mm512_and_si512(a, wv[v]);
        acc[i][v] = _mm512_add_epi64(acc[i][v], _mm512_popcnt_epi64(x));
      }
    }
  }
  alignas(32) int32_t cnt[8];
  const __m512i even = _mm512_setr_epi32(0, 2, 4, 6, 8, 10, 12, 14, 16, 18, 20, 22, 24, 26, 28, 30);
  // Pairs of blocks (16 outputs) through the vector epilogue, a lone or partial block through the
  // scalar one. Compile-time loops, unrolled, so the accumulators are read from their registers
  // (a runtime index into acc[i][v] makes the compiler store all of them to the stack first).
  const bool full = (b + NV) * 8 <= O;
#pragma GCC unroll 8
  for (int i = 0; i < NT; ++i) {
#pragma GCC unroll 8
    for (int v = 0; v + 1 < NV; v += 2) {
      const int64_t o0 = (b + v) * 8;
      if (full || o0 + 16 <= O) {
        // the counts fit in 32 bits (K < 65536), so the low halves of the two vectors' 64-bit lanes,
        // picked by one VPERMT2D, are the 16 counts in order (two VPMOVQD and an insert otherwise)
        finish16_avx512(e, t + i, o0, _mm512_permutex2var_epi32(acc[i][v], even, acc[i][v + 1]));
        continue;
      }
      for (int h = 0; h < 2 && o0 + 8 * h < O; ++h) {
        _mm256_store_si256(reinterpret_cast<__m256i*>(cnt), _mm512_cvtepi64_epi32(acc[i][v + h]));
        finish(e, t + i, o0 + 8 * h, std::min<int64_t>(8, O - o0 - 8 * h), cnt);
      }
    }
    if (NV % 2) {
      const int64_t o0 = (b + NV - 1) * 8;
      _mm256_store_si256(reinterpret_cast<__m256i*>(cnt), _mm512_cvtepi64_epi32(acc[i][NV - 1]));
      finish(e, t + i, o0, std::min<int64_t>(8, O - o0), cnt);
    }
  }
}

template <int NV, int MODE>
KB_TARGET(KB_AVX512_POPCNT)
static void binary_rows_avx512(const uint64_t* act, int64_t t0, int64_t t1, int64_t KW, const uint64_t* w, int64_t b,
                               const Epi& e, int64_t O) {
  int64_t t = t0;
  for (; t + 6 <= t1; t += 6) binary_tile_avx512<6, NV, MODE>(act, t, KW, w, b, e, O);
  for (; t < t1; ++t) binary_tile_avx512<1, NV, MODE>(act, t, KW, w, b, e, O);
}

// What a call's epilogue writes, when it writes one thing only: a full tile then runs a kernel
// specialised for it. The general tile above tests every output kind for every 16 outputs, and its
// partial-tile branches index the accumulators at run time, which makes the compiler keep them all
// on the stack: at K = 768 (12 words a tile) that fixed cost took about a third of the time.
enum EpiKind : int { EK_GENERAL = 0, EK_D, EK_Y, EK_PM, EK_SIGNS, EK_BITS };
constexpr int kFastTokens = kAvx512TileTokens, kFastBlocks = kAvx512TileBlocks;

inline int epi_kind(const Epi& e, int mode) {
  if (e.mul != (mode == 0 ? -2 : 2)) return EK_GENERAL;
  const int outputs = (e.d != nullptr) + (e.y != nullptr) + (e.signs != nullptr) + (e.bits != nullptr);
  if (outputs != 1) return EK_GENERAL;
  if (e.d) return EK_D;
  if (e.y) return e.pm != 0.f ? EK_PM : EK_Y;
  return e.signs ? EK_SIGNS : EK_BITS;
}

// A full tile (NT tokens x NV blocks of 8 rows, NV even) whose epilogue writes one kind of output.
// The accumulators start from the first word's counts (no zeroing), every loop has a compile-time
// trip count except the one over the words, so the accumulators stay in registers throughout; the
// epilogue does what finish16_avx512 does for that kind, in the same operations, so its results
// are bit-identical to the general tile's.
template <int NT, int NV, int MODE, int EK>
KB_TARGET(KB_AVX512_POPCNT)
static void binary_tile_fast_avx512(const uint64_t* act, int64_t t, int64_t KW, const uint64_t* w, int64_t b,
                                    const Epi& e) {
  static_assert(NV % 2 == 0, "the epilogue takes blocks in pairs");
  __m512i acc[NT][NV];
  const uint64_t* wb = w + b * KW * 8;  // block b + v starts v * KW * 8 words further
  const uint64_t* ab = act + t * KW;
  {
    __m512i wv[NV];
#pragma GCC unroll 8
    for (int v = 0; v < NV; ++v) wv[v] = _mm512_loadu_si512(wb + v * KW * 8);
#pragma GCC unroll 8
    for (int i = 0; i < NT; ++i) {
      const __m512i a = _mm512_set1_epi64(static_cast<long long>(ab[i * KW]));
#pragma GCC unroll 8
      for (int v = 0; v < NV; ++v)
        acc[i][v] = _mm512_popcnt_epi64(MODE == 0 ? _mm512_xor_si512(a, wv[v]) : _mm512_and_si512(a, wv[v]));
    }
  }
  for (int64_t k = 1; k < KW; ++k) {
    __m512i wv[NV];
#pragma GCC unroll 8
    for (int v = 0; v < NV; ++v) wv[v] = _mm512_loadu_si512(wb + (v * KW + k) * 8);
#pragma GCC unroll 8
    for (int i = 0; i < NT; ++i) {
      const __m512i a = _mm512_set1_epi64(static_cast<long long>(ab[i * KW + k]));
#pragma GCC unroll 8
      for (int v = 0; v < NV; ++v) {
        const __m512i x = MODE == 0 ? _mm512_xor_si512(a, wv[v]) : _mm512_and_si512(a, wv[v]);
        acc[i][v] = _mm512_add_epi64(acc[i][v], _mm512_popcnt_epi64(x));
      }
    }
  }
  const __m512i even = _mm512_setr_epi32(0, 2, 4, 6, 8, 10, 12, 14, 16, 18, 20, 22, 24, 26, 28, 30);
  const int64_t o_tile = b * 8;
#pragma GCC unroll 8
  for (int i = 0; i < NT; ++i) {
    const __m512i off = _mm512_set1_epi32(e.off[t + i]);
#pragma GCC unroll 8
    for (int v = 0; v < NV; v += 2) {
      const int64_t o0 = o_tile + v * 8;
      const __m512i twice = _mm512_slli_epi32(_mm512_permutex2var_epi32(acc[i][v], even, acc[i][v + 1]), 1);
      const __m512i d = MODE == 0 ? _mm512_sub_epi32(off, twice) : _mm512_add_epi32(off, twice);
      if constexpr (EK == EK_D) {
        _mm512_storeu_si512(e.d + (t + i) * e.ld + o0, d);
      } else if constexpr (EK == EK_Y) {
        __m512 y = _mm512_mul_ps(_mm512_cvtepi32_ps(d), _mm512_loadu_ps(e.v + o0));
        if (e.bias) y = _mm512_add_ps(y, _mm512_loadu_ps(e.bias + o0));
        _mm512_storeu_ps(e.y + (t + i) * e.ld + o0, y);
      } else {
        const __mmask16 m = _mm512_cmple_epi32_mask(d, _mm512_loadu_si512(e.lo + o0)) |
                            _mm512_cmpge_epi32_mask(d, _mm512_loadu_si512(e.hi + o0));
        if constexpr (EK == EK_PM) {
          _mm512_storeu_ps(e.y + (t + i) * e.ld + o0,
                           _mm512_mask_blend_ps(m, _mm512_set1_ps(-e.pm), _mm512_set1_ps(e.pm)));
        } else if constexpr (EK == EK_SIGNS) {
          _mm_storeu_si128(reinterpret_cast<__m128i*>(e.signs + (t + i) * e.ld + o0), _mm_maskz_set1_epi8(m, 1));
        } else {
          const uint16_t m16 = static_cast<uint16_t>(m);
          std::memcpy(e.bits + (t + i) * e.ldb + o0 / 8, &m16, sizeof(m16));
        }
      }
    }
  }
}

// The tile left at the end of a row of tiles: N tokens, N < kFastTokens.
template <int N, int NV, int MODE, int EK>
KB_TARGET(KB_AVX512_POPCNT)
static void binary_tail_fast_avx512(int64_t n, const uint64_t* act, int64_t t, int64_t KW, const uint64_t* w,
                                    int64_t b, const Epi& e) {
  if constexpr (N > 0) {
    if (n == N) binary_tile_fast_avx512<N, NV, MODE, EK>(act, t, KW, w, b, e);
    else binary_tail_fast_avx512<N - 1, NV, MODE, EK>(n, act, t, KW, w, b, e);
  }
}

// Tokens [t0, t1) against NV blocks from b: tiles of kFastTokens tokens, then one tile of the rest.
template <int NV, int MODE, int EK>
KB_TARGET(KB_AVX512_POPCNT)
static void binary_rows_fast_avx512(const uint64_t* act, int64_t t0, int64_t t1, int64_t KW, const uint64_t* w,
                                    int64_t b, const Epi& e) {
  int64_t t = t0;
  for (; t + kFastTokens <= t1; t += kFastTokens)
    binary_tile_fast_avx512<kFastTokens, NV, MODE, EK>(act, t, KW, w, b, e);
  binary_tail_fast_avx512<kFastTokens - 1, NV, MODE, EK>(t1 - t, act, t, KW, w, b, e);
}

// Runs of kFastBlocks blocks that end inside O take the specialised tile when the epilogue allows
// it; the rest (a lone block, a partial one, mixed outputs) the general one.
template <int MODE, int EK>
KB_TARGET(KB_AVX512_POPCNT)
static void binary_blocks_avx512(const uint64_t* act, int64_t t0, int64_t t1, int64_t KW, const uint64_t* w,
                                 int64_t b0, int64_t b1, const Epi& e, int64_t O) {
  int64_t b = b0;
  if (EK != EK_GENERAL)
    for (; b + kFastBlocks <= b1 && (b + kFastBlocks) * 8 <= O; b += kFastBlocks)
      binary_rows_fast_avx512<kFastBlocks, MODE, EK>(act, t0, t1, KW, w, b, e);
  for (; b + 4 <= b1; b += 4) binary_rows_avx512<4, MODE>(act, t0, t1, KW, w, b, e, O);
  for (; b < b1; ++b) binary_rows_avx512<1, MODE>(act, t0, t1, KW, w, b, e, O);
}

template <int MODE>
KB_TARGET(KB_AVX512_POPCNT)
static void binary_kinds_avx512(const uint64_t* act, int64_t t0, int64_t t1, int64_t KW, const uint64_t* w,
                                int64_t b0, int64_t b1, const Epi& e, int64_t O) {
  switch (epi_kind(e, MODE)) {
    case EK_D: binary_blocks_avx512<MODE, EK_D>(act, t0, t1, KW, w, b0, b1, e, O); break;
    case EK_Y: binary_blocks_avx512<MODE, EK_Y>(act, t0, t1, KW, w, b0, b1, e, O); break;
    case EK_PM: binary_blocks_avx512<MODE, EK_PM>(act, t0, t1, KW, w, b0, b1, e, O); break;
    case EK_SIGNS: binary_blocks_avx512<MODE, EK_SIGNS>(act, t0, t1, KW, w, b0, b1, e, O); break;
    case EK_BITS: binary_blocks_avx512<MODE, EK_BITS>(act, t0, t1, KW, w, b0, b1, e, O); break;
    default: binary_blocks_avx512<MODE, EK_GENERAL>(act, t0, t1, KW, w, b0, b1, e, O); break;
  }
}

KB_TARGET(KB_AVX512_POPCNT)
void binary_counts_avx512(const uint64_t* act, int64_t t0, int64_t t1, int64_t KW, const uint64_t* w,
                          int64_t b0, int64_t b1, int mode, const Epi& e, int64_t O) {
  if (mode == 0) binary_kinds_avx512<0>(act, t0, t1, KW, w, b0, b1, e, O);
  else binary_kinds_avx512<1>(act, t0, t1, KW, w, b0, b1, e, O);
}

#else  // not x86: the vector paths are never selected (cpu_has says no); these keep the linker happy

void pack_unsigned_avx512(const float* x, const float* beta, bool beta_vec, float alpha, int64_t K, int64_t KW,
                          uint64_t* out) {
  if (beta) pack_unsigned_offset_portable(x, beta, beta_vec, alpha, K, KW, out);
  else pack_unsigned_portable(x, alpha, K, KW, out);
}

void pack_signs_avx2(const float* x, const float* beta, bool beta_vec, int64_t K, int64_t KW, uint64_t* out) {
  pack_signs_portable(x, beta, beta_vec, K, KW, out);
}
void binary_counts_avx2(const uint16_t*, int64_t, int64_t, int64_t, int64_t, const uint8_t*, int64_t, int64_t, int,
                        const Epi&, int64_t) {}
void binary_counts_avx512(const uint64_t* act, int64_t t0, int64_t t1, int64_t KW, const uint64_t* w,
                          int64_t b0, int64_t b1, int mode, const Epi& e, int64_t O) {
  binary_counts_portable(act, t0, t1, KW, w, b0, b1, mode, e, O);
}

#endif

}  // namespace kb

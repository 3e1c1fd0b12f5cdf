// y = x @ W^T over repacked quantized weights (quant_layout.h), for few rows of x (decode).
//
// x is quantized per 32-group in two 8-bit levels, x ~ dx (hi + lo / 256) with dx = max|x| / 127:
// each product with the weights' 8-bit codes is then an integer dot product (vpdpbusd: 4 multiply-
// adds per lane, 16 rows per register) at about 16-bit precision (2^-16 of the group's largest
// entry, far below the weights' own quantization error; llama.cpp keeps 8 bits). Per group and row
//     sum_j w_j x_j = S dx/256 (D - offset * sum_j X_j) + Z sum_j x_j,   X = 256 hi + lo,  D = sum_j c_j X_j
// with S, Z, offset from quant_layout.h and the float sums of x exact. Row-blocks are split across
// torch's threads; several weights sharing an input (q/k/v, gate/up) go in one parallel pass.

#include <torch/extension.h>
#include <ATen/Parallel.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <type_traits>
#include <vector>

#include "quant_layout.h"

#if defined(__AVX2__) && defined(__FMA__) && defined(__F16C__)
#include <immintrin.h>
#define MRS_SIMD 1
#endif

namespace {

using namespace mrs;

struct QuantizedX {
  int64_t M, K, G;
  std::vector<int8_t> hi, lo;  // [M, K]
  std::vector<float> scale;  // [M, G]: dx / 256
  std::vector<float> sum;  // [M, 2G]: float sums of each 16-weight half
  std::vector<int32_t> qsum;  // [M, 2G]: sums of X = 256 hi + lo per half
};

QuantizedX quantize_x(const float* x, int64_t M, int64_t K) {
  const int64_t G = K / kGroup;
  QuantizedX q{M, K, G, std::vector<int8_t>(M * K), std::vector<int8_t>(M * K), std::vector<float>(M * G),
               std::vector<float>(2 * M * G), std::vector<int32_t>(2 * M * G)};
  for (int64_t i = 0; i < M * G; ++i) {
    const float* xg = x + kGroup * i;
    float amax = 0.f;
    for (int j = 0; j < kGroup; ++j) amax = std::max(amax, std::fabs(xg[j]));
    const float inv = amax > 0.f ? 127.f / amax : 0.f;
    q.scale[i] = amax / 127.f / 256.f;
    for (int h = 0; h < 2; ++h) {
      float total = 0.f;
      int32_t qtotal = 0;
      for (int j = 16 * h; j < 16 * h + 16; ++j) {
        const float v = xg[j] * inv;
        const float hi = std::nearbyint(v);
        // lo is kept within +-127 (not -128) so the sign trick of the AVX2 path cannot overflow
        const float lo = std::min(127.f, std::max(-127.f, std::nearbyint((v - hi) * 256.f)));
        q.hi[kGroup * i + j] = int8_t(hi);
        q.lo[kGroup * i + j] = int8_t(lo);
        total += xg[j];
        qtotal += 256 * int32_t(hi) + int32_t(lo);
      }
      q.sum[2 * i + h] = total;
      q.qsum[2 * i + h] = qtotal;
    }
  }
  return q;
}

#ifdef MRS_SIMD

#if defined(__AVX512F__) && defined(__AVX512BW__) && defined(__AVX512VNNI__)
struct Isa {  // one register = 16 rows x 4 codes
  static constexpr int kLanes = 16;
  static constexpr int kSignedOffset = 128;  // signed codes are flipped to c + 128, then corrected
  using I = __m512i;
  using F = __m512;
  static I zero() { return _mm512_setzero_si512(); }
  static I load(const uint8_t* p) { return _mm512_loadu_si512(p); }
  static I nib_lo(I v) { return _mm512_and_si512(v, _mm512_set1_epi8(15)); }
  static I nib_hi(I v) { return _mm512_and_si512(_mm512_srli_epi16(v, 4), _mm512_set1_epi8(15)); }
  static I flip(I v) { return _mm512_xor_si512(v, _mm512_set1_epi8(char(0x80))); }
  static I add_bits(I v, const uint8_t* mask, int value) {
    uint64_t m;
    std::memcpy(&m, mask, 8);
    return _mm512_mask_add_epi8(v, m, v, _mm512_set1_epi8(char(value)));
  }
  static I bcast(const int8_t* p) {
    int32_t v;
    std::memcpy(&v, p, 4);
    return _mm512_set1_epi32(v);
  }
  static I dot(I acc, I u, I s) { return _mm512_dpbusd_epi32(acc, u, s); }
  static I dot_signed(I acc, I flipped, I s) { return dot(acc, flipped, s); }
  static I combine(I hi, I lo, int32_t correction) {
    return _mm512_sub_epi32(_mm512_add_epi32(_mm512_slli_epi32(hi, 8), lo), _mm512_set1_epi32(correction));
  }
  static F cvt(I v) { return _mm512_cvtepi32_ps(v); }
  static F fzero() { return _mm512_setzero_ps(); }
  static F set(float v) { return _mm512_set1_ps(v); }
  static F mul(F a, F b) { return _mm512_mul_ps(a, b); }
  static F fma(F a, F b, F c) { return _mm512_fmadd_ps(a, b, c); }
  static F neg(F a) { return _mm512_sub_ps(_mm512_setzero_ps(), a); }
  static F halfs(const uint8_t* p) { return _mm512_cvtph_ps(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(p))); }
  static I bytes_u(const uint8_t* p) { return _mm512_cvtepu8_epi32(_mm_loadu_si128(reinterpret_cast<const __m128i*>(p))); }
  static F u8s(const uint8_t* p) { return cvt(bytes_u(p)); }
  static F u8_low(const uint8_t* p) { return cvt(_mm512_and_si512(bytes_u(p), _mm512_set1_epi32(15))); }
  static F u8_high(const uint8_t* p) { return cvt(_mm512_srli_epi32(bytes_u(p), 4)); }
  static F s8s(const uint8_t* p) { return cvt(_mm512_cvtepi8_epi32(_mm_loadu_si128(reinterpret_cast<const __m128i*>(p)))); }
  static void store(float* y, F v, int n) { _mm512_mask_storeu_ps(y, __mmask16((1u << n) - 1), v); }
  static void store_bytes(uint8_t* p, I v) { _mm512_store_si512(p, v); }
  static void store_floats(float* p, F v) { _mm512_store_ps(p, v); }
};
#else
struct Isa {  // AVX2: one register = 8 rows x 4 codes; a row-block takes two passes
  static constexpr int kLanes = 8;
#ifdef __AVXVNNI__
  static constexpr int kSignedOffset = 128;
#else
  static constexpr int kSignedOffset = 0;  // signed codes use the sign trick instead
#endif
  using I = __m256i;
  using F = __m256;
  static I zero() { return _mm256_setzero_si256(); }
  static I load(const uint8_t* p) { return _mm256_loadu_si256(reinterpret_cast<const __m256i*>(p)); }
  static I nib_lo(I v) { return _mm256_and_si256(v, _mm256_set1_epi8(15)); }
  static I nib_hi(I v) { return _mm256_and_si256(_mm256_srli_epi16(v, 4), _mm256_set1_epi8(15)); }
  static I flip(I v) { return kSignedOffset ? _mm256_xor_si256(v, _mm256_set1_epi8(char(0x80))) : v; }
  static I add_bits(I v, const uint8_t* mask, int value) {  // bit j of the 32-bit mask -> byte j
    uint32_t bits;
    std::memcpy(&bits, mask, 4);
    const __m256i spread = _mm256_shuffle_epi8(
        _mm256_set1_epi32(int(bits)),
        _mm256_setr_epi8(0, 0, 0, 0, 0, 0, 0, 0, 1, 1, 1, 1, 1, 1, 1, 1, 2, 2, 2, 2, 2, 2, 2, 2, 3, 3, 3, 3, 3, 3, 3, 3));
    const __m256i select = _mm256_set1_epi64x(0x8040201008040201LL);
    const __m256i set = _mm256_cmpeq_epi8(_mm256_and_si256(spread, select), select);
    return _mm256_add_epi8(v, _mm256_and_si256(set, _mm256_set1_epi8(char(value))));
  }
  static I bcast(const int8_t* p) {
    int32_t v;
    std::memcpy(&v, p, 4);
    return _mm256_set1_epi32(v);
  }
#ifdef __AVXVNNI__
  static I dot(I acc, I u, I s) { return _mm256_dpbusd_avx_epi32(acc, u, s); }
  static I dot_signed(I acc, I flipped, I s) { return dot(acc, flipped, s); }
#else
  // codes <= 63 and |s| <= 127: the int16 pair sums of maddubs cannot saturate
  static I dot(I acc, I u, I s) {
    return _mm256_add_epi32(acc, _mm256_madd_epi16(_mm256_maddubs_epi16(u, s), _mm256_set1_epi16(1)));
  }
  static I dot_signed(I acc, I w, I s) { return dot(acc, _mm256_sign_epi8(w, w), _mm256_sign_epi8(s, w)); }
#endif
  static I combine(I hi, I lo, int32_t correction) {
    return _mm256_sub_epi32(_mm256_add_epi32(_mm256_slli_epi32(hi, 8), lo), _mm256_set1_epi32(correction));
  }
  static F cvt(I v) { return _mm256_cvtepi32_ps(v); }
  static F fzero() { return _mm256_setzero_ps(); }
  static F set(float v) { return _mm256_set1_ps(v); }
  static F mul(F a, F b) { return _mm256_mul_ps(a, b); }
  static F fma(F a, F b, F c) { return _mm256_fmadd_ps(a, b, c); }
  static F neg(F a) { return _mm256_sub_ps(_mm256_setzero_ps(), a); }
  static F halfs(const uint8_t* p) { return _mm256_cvtph_ps(_mm_loadu_si128(reinterpret_cast<const __m128i*>(p))); }
  static I bytes_u(const uint8_t* p) { return _mm256_cvtepu8_epi32(_mm_loadl_epi64(reinterpret_cast<const __m128i*>(p))); }
  static F u8s(const uint8_t* p) { return cvt(bytes_u(p)); }
  static F u8_low(const uint8_t* p) { return cvt(_mm256_and_si256(bytes_u(p), _mm256_set1_epi32(15))); }
  static F u8_high(const uint8_t* p) { return cvt(_mm256_srli_epi32(bytes_u(p), 4)); }
  static F s8s(const uint8_t* p) { return cvt(_mm256_cvtepi8_epi32(_mm_loadl_epi64(reinterpret_cast<const __m128i*>(p)))); }
  static void store_bytes(uint8_t* p, I v) { _mm256_store_si256(reinterpret_cast<__m256i*>(p), v); }
  static void store_floats(float* p, F v) { _mm256_store_ps(p, v); }
  static void store(float* y, F v, int n) {
    if (n == 8) {
      _mm256_storeu_ps(y, v);
      return;
    }
    alignas(32) float tmp[8];
    _mm256_store_ps(tmp, v);
    std::memcpy(y, tmp, n * sizeof(float));
  }
};
#endif

constexpr int kPasses = kRows / Isa::kLanes;  // register passes per row-block

// Per-row multipliers (S) and addends (Z) of a group's two halves: w = S (c - offset) + Z.
template <int64_t T>
inline void group_scales(Isa::F d, Isa::F e, const uint8_t* group, int lane0, Isa::F& S0, Isa::F& S1, Isa::F& Z0,
                         Isa::F& Z1) {
  S0 = S1 = d;
  Z0 = Z1 = e;
  if constexpr (T == Q4_K || T == Q5_K) {
    S0 = Isa::mul(d, Isa::u8s(group + lane0));
    Z0 = Isa::neg(Isa::mul(e, Isa::u8s(group + 16 + lane0)));
  } else if constexpr (T == Q2_K) {
    S0 = Isa::mul(d, Isa::u8_low(group + lane0));
    S1 = Isa::mul(d, Isa::u8_low(group + 16 + lane0));
    Z0 = Isa::neg(Isa::mul(e, Isa::u8_high(group + lane0)));
    Z1 = Isa::neg(Isa::mul(e, Isa::u8_high(group + 16 + lane0)));
  } else if constexpr (T == Q3_K || T == Q6_K) {
    S0 = Isa::mul(d, Isa::s8s(group + lane0));
    S1 = Isa::mul(d, Isa::s8s(group + 16 + lane0));
  }
  if constexpr (!layout_of(T).split) {
    S1 = S0;
    Z1 = Z0;
  }
}

// A group's codes for rows lane0.. : cw[c] holds weights 4c..4c+3 of each row. Q8_0's signed
// codes come flipped to c + 128 when `flip` (and the ISA's dot product wants them so).
template <int64_t T>
inline void group_codes(const uint8_t* group, int lane0, bool flip, Isa::I* cw) {
  constexpr Layout L = layout_of(T);
  const uint8_t* codes = group + L.group_header;
  if constexpr (L.codes == Codes::Nibbles) {
    for (int c = 0; c < 4; ++c) {
      const Isa::I v = Isa::load(codes + 64 * c + 4 * lane0);
      cw[c] = Isa::nib_lo(v);
      cw[c + 4] = Isa::nib_hi(v);
    }
  } else if constexpr (L.codes == Codes::Bytes) {
    for (int c = 0; c < 8; ++c) {
      const Isa::I v = Isa::load(codes + 64 * c + 4 * lane0);
      cw[c] = flip ? Isa::flip(v) : v;
    }
  } else {
    for (int c = 0; c < 8; ++c) cw[c] = Isa::zero();
  }
  const uint8_t* planes = codes + L.code_bytes();
  for (int p = 0; p < L.planes; ++p) {
    const int value = (L.codes == Codes::Nibbles ? 16 : 1) << p;
    for (int c = 0; c < 8; ++c)
      cw[c] = Isa::add_bits(cw[c], planes + 64 * p + 8 * (2 * (c % 4) + (c >= 4)) + lane0 / 2, value);
  }
}

// Decode streams every weight from memory once per token and the hardware prefetcher alone falls
// behind: asking for the bytes 16 KiB ahead took 30 layers of SmolLM2 from 4.7 to 2.4 ms (2 threads).
constexpr int64_t kPrefetch = 16384;

// M rows of x (from m0) against one row-block: y[m, 0:nrows] (row stride ldy).
template <int64_t T, int M>
void block_kernel(const uint8_t* block, const QuantizedX& x, int64_t m0, float* y, int64_t ldy, int nrows) {
  constexpr Layout L = layout_of(T);
  constexpr bool kSigned = T == Q8_0;
  constexpr int32_t kOffset = kSigned ? Isa::kSignedOffset : L.offset;
  using I = Isa::I;
  using F = Isa::F;
  const int64_t G = x.G, K = x.K;
  for (int pass = 0; pass < kPasses; ++pass) {
    const int lane0 = pass * Isa::kLanes;
    if (lane0 >= nrows) break;
    F acc[M];
    for (int m = 0; m < M; ++m) acc[m] = Isa::fzero();
    for (int64_t u = 0; u < G / L.unit_groups; ++u) {
      const uint8_t* unit = block + u * L.unit_bytes();
      const F d = Isa::halfs(unit + 2 * lane0);
      const F e = L.unit_header > 32 ? Isa::halfs(unit + 32 + 2 * lane0) : Isa::fzero();
      for (int j = 0; j < L.unit_groups; ++j) {
        const int64_t g = u * L.unit_groups + j;
        const uint8_t* group = unit + L.unit_header + j * L.group_bytes();
        F S0, S1, Z0, Z1;
        group_scales<T>(d, e, group, lane0, S0, S1, Z0, Z1);
        I cw[8];
        group_codes<T>(group, lane0, true, cw);
        for (int b = 0; b < L.group_bytes(); b += 64) _mm_prefetch(reinterpret_cast<const char*>(group + kPrefetch + b), _MM_HINT_T0);
        for (int m = 0; m < M; ++m) {
          const int64_t row = m0 + m;
          const int8_t* xh = x.hi.data() + row * K + kGroup * g;
          const int8_t* xl = x.lo.data() + row * K + kGroup * g;
          I a_hi = Isa::zero(), a_lo = a_hi, b_hi = a_hi, b_lo = a_hi;
          for (int c = 0; c < 8; ++c) {
            const I h = Isa::bcast(xh + 4 * c), l = Isa::bcast(xl + 4 * c);
            I& t_hi = (L.split && c >= 4) ? b_hi : a_hi;
            I& t_lo = (L.split && c >= 4) ? b_lo : a_lo;
            if constexpr (kSigned) {
              t_hi = Isa::dot_signed(t_hi, cw[c], h);
              t_lo = Isa::dot_signed(t_lo, cw[c], l);
            } else {
              t_hi = Isa::dot(t_hi, cw[c], h);
              t_lo = Isa::dot(t_lo, cw[c], l);
            }
          }
          const float sx = x.scale[row * G + g];
          const int32_t* qs = x.qsum.data() + 2 * (row * G + g);
          const float* xs = x.sum.data() + 2 * (row * G + g);
          if constexpr (L.split) {
            const F da = Isa::cvt(Isa::combine(a_hi, a_lo, kOffset * qs[0]));
            const F db = Isa::cvt(Isa::combine(b_hi, b_lo, kOffset * qs[1]));
            acc[m] = Isa::fma(da, Isa::mul(S0, Isa::set(sx)), acc[m]);
            acc[m] = Isa::fma(db, Isa::mul(S1, Isa::set(sx)), acc[m]);
            if constexpr (L.min) {
              acc[m] = Isa::fma(Z0, Isa::set(xs[0]), acc[m]);
              acc[m] = Isa::fma(Z1, Isa::set(xs[1]), acc[m]);
            }
          } else {
            const F da = Isa::cvt(Isa::combine(a_hi, a_lo, kOffset * (qs[0] + qs[1])));
            acc[m] = Isa::fma(da, Isa::mul(S0, Isa::set(sx)), acc[m]);
            if constexpr (L.min) acc[m] = Isa::fma(Z0, Isa::set(xs[0] + xs[1]), acc[m]);
          }
        }
      }
    }
    const int n = std::min(Isa::kLanes, nrows - lane0);
    for (int m = 0; m < M; ++m) Isa::store(y + (m0 + m) * ldy + lane0, acc[m], n);
  }
}

// Rows of one row-block as floats: out[r * ld + col] for r < nrows.
template <int64_t T>
void dequantize_block(const uint8_t* block, int64_t K, float* out, int64_t ld, int nrows) {
  constexpr Layout L = layout_of(T);
  const int64_t G = K / kGroup;
  for (int pass = 0; pass < kPasses; ++pass) {
    const int lane0 = pass * Isa::kLanes, rows = std::min(Isa::kLanes, nrows - lane0);
    if (rows <= 0) break;
    for (int64_t u = 0; u < G / L.unit_groups; ++u) {
      const uint8_t* unit = block + u * L.unit_bytes();
      const Isa::F d = Isa::halfs(unit + 2 * lane0);
      const Isa::F e = L.unit_header > 32 ? Isa::halfs(unit + 32 + 2 * lane0) : Isa::fzero();
      for (int j = 0; j < L.unit_groups; ++j) {
        const uint8_t* group = unit + L.unit_header + j * L.group_bytes();
        Isa::F sz[4];
        group_scales<T>(d, e, group, lane0, sz[0], sz[1], sz[2], sz[3]);
        Isa::I cw[8];
        group_codes<T>(group, lane0, false, cw);
        alignas(64) uint8_t codes[8][4 * Isa::kLanes];
        alignas(64) float scales[4][Isa::kLanes];
        for (int c = 0; c < 8; ++c) Isa::store_bytes(codes[c], cw[c]);
        for (int i = 0; i < 4; ++i) Isa::store_floats(scales[i], sz[i]);
        for (int r = 0; r < rows; ++r) {
          float* o = out + (lane0 + r) * ld + kGroup * (u * L.unit_groups + j);
          for (int c = 0; c < 8; ++c) {
            const int h = c / 4;
            const float S = scales[h][r], Z = scales[2 + h][r];
            for (int i = 0; i < 4; ++i) {
              const uint8_t b = codes[c][4 * r + i];
              const float q = T == Q8_0 ? float(int8_t(b)) : float(int(b) - L.offset);
              o[4 * c + i] = L.min ? S * q + Z : S * q;
            }
          }
        }
      }
    }
  }
}

template <int64_t T>
void run_blocks(const uint8_t* w, int64_t n, const QuantizedX& x, float* y, int64_t ldy, int64_t b0, int64_t b1) {
  constexpr Layout L = layout_of(T);
  const int64_t block_bytes = (x.G / L.unit_groups) * L.unit_bytes();
  for (int64_t rb = b0; rb < b1; ++rb) {
    const uint8_t* block = w + rb * block_bytes;
    const int nrows = int(std::min<int64_t>(kRows, n - rb * kRows));
    float* yb = y + rb * kRows;
    int64_t m = 0;
    for (; m + 4 <= x.M; m += 4) block_kernel<T, 4>(block, x, m, yb, ldy, nrows);
    for (; m + 2 <= x.M; m += 2) block_kernel<T, 2>(block, x, m, yb, ldy, nrows);
    for (; m < x.M; ++m) block_kernel<T, 1>(block, x, m, yb, ldy, nrows);
  }
}

// f(std::integral_constant<int64_t, T>) for the runtime type t: one table for every kernel
template <class F>
void with_type(int64_t t, F&& f) {
  switch (t) {
    case Q4_0: return f(std::integral_constant<int64_t, Q4_0>{});
    case Q4_1: return f(std::integral_constant<int64_t, Q4_1>{});
    case Q5_0: return f(std::integral_constant<int64_t, Q5_0>{});
    case Q5_1: return f(std::integral_constant<int64_t, Q5_1>{});
    case Q8_0: return f(std::integral_constant<int64_t, Q8_0>{});
    case Q2_K: return f(std::integral_constant<int64_t, Q2_K>{});
    case Q3_K: return f(std::integral_constant<int64_t, Q3_K>{});
    case Q4_K: return f(std::integral_constant<int64_t, Q4_K>{});
    case Q5_K: return f(std::integral_constant<int64_t, Q5_K>{});
    case Q6_K: return f(std::integral_constant<int64_t, Q6_K>{});
  }
}

void dispatch(int64_t t, const uint8_t* w, int64_t n, const QuantizedX& x, float* y, int64_t ldy, int64_t b0, int64_t b1) {
  with_type(t, [&](auto T) { run_blocks<T.value>(w, n, x, y, ldy, b0, b1); });
}

void dispatch_dequantize(int64_t t, const uint8_t* block, int64_t K, float* out, int64_t ld, int nrows) {
  with_type(t, [&](auto T) { dequantize_block<T.value>(block, K, out, ld, nrows); });
}

#else  // portable: decode each row-block to floats, then float dot products (non-x86 machines)

void dispatch(int64_t t, const uint8_t* w, int64_t n, const float* x, int64_t M, int64_t K, float* y, int64_t ldy,
              int64_t b0, int64_t b1) {
  const Layout L = layout(t);
  const int64_t block_bytes = packed_bytes(L, kRows, K);
  std::vector<float> tile(kRows * K);
  for (int64_t rb = b0; rb < b1; ++rb) {
    const int nrows = int(std::min<int64_t>(kRows, n - rb * kRows));
    unpack_block(t, L, w + rb * block_bytes, 0, nrows, K, tile.data(), K);
    for (int r = 0; r < nrows; ++r)
      for (int64_t m = 0; m < M; ++m) {
        float acc = 0.f;
        for (int64_t j = 0; j < K; ++j) acc += tile[r * K + j] * x[m * K + j];
        y[m * ldy + rb * kRows + r] = acc;
      }
  }
}

void dispatch_dequantize(int64_t t, const uint8_t* block, int64_t K, float* out, int64_t ld, int nrows) {
  unpack_block(t, layout(t), block, 0, nrows, K, out, ld);
}

#endif

}  // namespace

// x: float32 [M, K]; ws: packed weights (quant_repack) of types `qtypes` with `ns` rows each.
// Returns float32 [M, sum(ns)]: the products side by side, in one parallel pass (q/k/v or gate/up
// share the preparation of x and one thread fork).
torch::Tensor quant_matmul_many(torch::Tensor x, std::vector<torch::Tensor> ws, std::vector<int64_t> qtypes,
                                std::vector<int64_t> ns) {
  TORCH_CHECK(x.dim() == 2 && x.scalar_type() == torch::kFloat32, "quant_matmul: x must be float32 [M, K]");
  TORCH_CHECK(ws.size() == qtypes.size() && ws.size() == ns.size() && !ws.empty(), "quant_matmul: mismatched lists");
  x = x.contiguous();
  const int64_t M = x.size(0), K = x.size(1);
  TORCH_CHECK(K % kGroup == 0, "quant_matmul: K=", K, " is not a multiple of 32");
  const size_t P = ws.size();
  std::vector<int64_t> first_block(P + 1, 0), first_col(P + 1, 0);
  std::vector<const uint8_t*> wp(P);
  for (size_t i = 0; i < P; ++i) {
    const Layout L = layout(qtypes[i]);
    check_packed(ws[i], L, ns[i], K);
    wp[i] = ws[i].data_ptr<uint8_t>();
    first_block[i + 1] = first_block[i] + row_blocks(ns[i]);
    first_col[i + 1] = first_col[i] + ns[i];
  }
  const int64_t total = first_col[P];
  auto y = torch::empty({M, total}, x.options());
  if (M == 0) return y;
  float* yp = y.data_ptr<float>();
#ifdef MRS_SIMD
  const QuantizedX xq = quantize_x(x.data_ptr<float>(), M, K);
#endif
  at::parallel_for(0, first_block[P], 1, [&](int64_t b0, int64_t b1) {
    for (size_t i = 0; i < P; ++i) {
      const int64_t a = std::max(b0, first_block[i]), b = std::min(b1, first_block[i + 1]);
      if (a >= b) continue;
      // weight i's rows fill their own columns of y: shift the output base, keep the stride
#ifdef MRS_SIMD
      dispatch(qtypes[i], wp[i], ns[i], xq, yp + first_col[i], total, a - first_block[i], b - first_block[i]);
#else
      dispatch(qtypes[i], wp[i], ns[i], x.data_ptr<float>(), M, K, yp + first_col[i], total, a - first_block[i],
               b - first_block[i]);
#endif
    }
  });
  return y;
}

torch::Tensor quant_matmul(torch::Tensor x, torch::Tensor w, int64_t qtype, int64_t n) {
  return quant_matmul_many(x, {w}, {qtype}, {n});
}

// The whole weight as float32 [N, K] (prefill multiplies it with the BLAS matmul).
torch::Tensor quant_dequantize(torch::Tensor w, int64_t qtype, int64_t n, int64_t k) {
  const Layout L = layout(qtype);
  check_packed(w, L, n, k);
  auto out = torch::empty({n, k}, torch::kFloat32);
  const uint8_t* wp = w.data_ptr<uint8_t>();
  float* op = out.data_ptr<float>();
  const int64_t block_bytes = packed_bytes(L, kRows, k);
  at::parallel_for(0, row_blocks(n), 1, [&](int64_t b0, int64_t b1) {
    for (int64_t rb = b0; rb < b1; ++rb)
      dispatch_dequantize(qtype, wp + rb * block_bytes, k, op + rb * kRows * k, k, int(std::min<int64_t>(kRows, n - rb * kRows)));
  });
  return out;
}

TORCH_LIBRARY_FRAGMENT(mistralrs_kernels, m) {
  m.def("quant_dequantize(Tensor w, int qtype, int N, int K) -> Tensor");
  m.def("quant_matmul(Tensor x, Tensor w, int qtype, int N) -> Tensor");
  m.def("quant_matmul_many(Tensor x, Tensor[] ws, int[] qtypes, int[] ns) -> Tensor");
}

TORCH_LIBRARY_IMPL(mistralrs_kernels, CPU, m) {
  m.impl("quant_dequantize", &quant_dequantize);
  m.impl("quant_matmul", &quant_matmul);
  m.impl("quant_matmul_many", &quant_matmul_many);
}

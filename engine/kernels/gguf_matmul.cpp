// y = x @ W^T straight from GGUF blocks, for few rows of x (decode). Each 32-weight group decodes
// to integer codes c, a multiplier s and an offset z (w = s * c + z), so a row's dot product is
//     sum_g  s_g * (c_g . x_g)  +  z_g * sum(x_g)
// with the per-group sums of x computed once per call. On AVX2, x is quantized per 32-group to
// int16 (relative error 2^-16 of the group's largest entry: far below the weights' quantization
// error, and 256x finer than llama.cpp's 8-bit activations) so c . x is an integer multiply-add.
// Rows are split across torch's threads.

#include <torch/extension.h>
#include <ATen/Parallel.h>

#include <algorithm>
#include <cmath>
#include <vector>
#include <cstdint>
#include <cstring>

#if defined(__AVX2__) && defined(__FMA__) && defined(__F16C__)
#include <immintrin.h>
#define MRS_AVX2 1
#endif

namespace {

enum QType : int64_t { Q4_0 = 2, Q4_1 = 3, Q5_0 = 6, Q5_1 = 7, Q8_0 = 8, Q4_K = 12, Q5_K = 13, Q6_K = 14 };

struct Geometry {
  int block;  // weights per block
  int bytes;  // bytes per block
};

Geometry geometry(int64_t t) {
  switch (t) {
    case Q4_0: return {32, 18};
    case Q4_1: return {32, 20};
    case Q5_0: return {32, 22};
    case Q5_1: return {32, 24};
    case Q8_0: return {32, 34};
    case Q4_K: return {256, 144};
    case Q5_K: return {256, 176};
    case Q6_K: return {256, 210};
  }
  TORCH_CHECK(false, "gguf_matmul: unsupported GGML type ", t);
  return {0, 0};
}

inline float half_to_float(const uint8_t* p) {
  uint16_t h;
  std::memcpy(&h, p, 2);
#ifdef MRS_AVX2
  return _cvtsh_ss(h);
#else
  return c10::detail::fp16_ieee_to_fp32_value(h);
#endif
}

// Q4_K / Q5_K: 6-bit scale and min of sub-block j from the 12-byte field.
inline void k_scale_min(const uint8_t* s, int j, int& sc, int& m) {
  if (j < 4) {
    sc = s[j] & 63;
    m = s[j + 4] & 63;
  } else {
    sc = (s[j + 4] & 0xF) | ((s[j - 4] >> 6) << 4);
    m = (s[j + 4] >> 4) | ((s[j] >> 6) << 4);
  }
}


// Portable decoder (also the reference for the AVX2 ones): the group's codes in natural order.
inline void decode_group(int64_t t, const uint8_t* b, int g, float* c, float& s, float& z) {
  switch (t) {
    case Q4_0:
    case Q4_1: {
      const bool affine = t == Q4_1;
      s = half_to_float(b);
      z = affine ? half_to_float(b + 2) : 0.f;
      const uint8_t* q = b + (affine ? 4 : 2);
      const float off = affine ? 0.f : 8.f;
      for (int j = 0; j < 16; ++j) { c[j] = float(q[j] & 15) - off; c[j + 16] = float(q[j] >> 4) - off; }
      return;
    }
    case Q5_0:
    case Q5_1: {
      const bool affine = t == Q5_1;
      s = half_to_float(b);
      z = affine ? half_to_float(b + 2) : 0.f;
      uint32_t qh;
      std::memcpy(&qh, b + (affine ? 4 : 2), 4);
      const uint8_t* q = b + (affine ? 8 : 6);
      const float off = affine ? 0.f : 16.f;
      for (int j = 0; j < 16; ++j) {
        c[j] = float((q[j] & 15) | (((qh >> j) & 1) << 4)) - off;
        c[j + 16] = float((q[j] >> 4) | (((qh >> (j + 16)) & 1) << 4)) - off;
      }
      return;
    }
    case Q8_0: {
      s = half_to_float(b);
      z = 0.f;
      const int8_t* q = reinterpret_cast<const int8_t*>(b + 2);
      for (int j = 0; j < 32; ++j) c[j] = float(q[j]);
      return;
    }
    case Q4_K:
    case Q5_K: {
      const float d = half_to_float(b), dmin = half_to_float(b + 2);
      int sc, m;
      k_scale_min(b + 4, g, sc, m);
      s = d * float(sc);
      z = -(dmin * float(m));
      const bool five = t == Q5_K;
      const uint8_t* q = b + (five ? 48 : 16) + 32 * (g / 2);
      const int shift = (g & 1) ? 4 : 0;
      const uint8_t* qh = b + 16;
      for (int j = 0; j < 32; ++j) {
        int v = (q[j] >> shift) & 15;
        if (five) v |= ((qh[j] >> g) & 1) << 4;
        c[j] = float(v);
      }
      return;
    }
    case Q6_K: {
      // 16-weight sub-blocks with int8 scales: fold each scale into its codes (exact integers).
      s = half_to_float(b + 208);
      z = 0.f;
      const int half = g / 4, quarter = g % 4;  // 128 weights per half, 32 per quarter
      const uint8_t* ql = b + 64 * half + (quarter & 1) * 32;
      const uint8_t* qh = b + 128 + 32 * half;
      const int8_t* sc = reinterpret_cast<const int8_t*>(b + 192) + 8 * half + 2 * quarter;
      const int nib = (quarter >= 2) ? 4 : 0, hs = 2 * quarter;
      for (int j = 0; j < 32; ++j) {
        int v = ((ql[j] >> nib) & 15) | (((qh[j] >> hs) & 3) << 4);
        c[j] = float((v - 32) * sc[j / 16]);
      }
      return;
    }
  }
}

#ifdef MRS_AVX2
inline float hsum(__m256 v) {
  __m128 lo = _mm256_castps256_ps128(v), hi = _mm256_extractf128_ps(v, 1);
  lo = _mm_add_ps(lo, hi);
  lo = _mm_add_ps(lo, _mm_movehl_ps(lo, lo));
  lo = _mm_add_ss(lo, _mm_movehdup_ps(lo));
  return _mm_cvtss_f32(lo);
}

// A group's 32 codes as int16 (elements 0-15 and 16-31, natural order), the multipliers of each
// half (they differ only for Q6_K's 16-weight sub-blocks) and the group's offset: w = s * c + z.
struct Codes {
  __m256i lo, hi;
  float s0, s1, z;
};

inline __m256i widen_u8(__m128i v) { return _mm256_cvtepu8_epi16(v); }

template <bool affine>
struct DecodeQ4 {  // Q4_1: w = d q + m; Q4_0: w = d q - 8 d
  static constexpr int kGroups = 1, kBytes = affine ? 20 : 18;
  static constexpr bool kOffset = true, kSplit = false;
  void operator()(const uint8_t* b, int, Codes& c) const {
    const float d = half_to_float(b);
    c.s0 = c.s1 = d;
    c.z = affine ? half_to_float(b + 2) : -8.f * d;
    const __m128i q = _mm_loadu_si128(reinterpret_cast<const __m128i*>(b + (affine ? 4 : 2)));
    const __m128i mask = _mm_set1_epi8(15);
    c.lo = widen_u8(_mm_and_si128(q, mask));
    c.hi = widen_u8(_mm_and_si128(_mm_srli_epi16(q, 4), mask));
  }
};

// 32 bits -> 32 bytes holding 0x10 where the bit is set (bit j -> byte j).
inline __m256i bits_to_0x10(uint32_t bits) {
  const __m256i spread = _mm256_shuffle_epi8(
      _mm256_set1_epi32(int(bits)),
      _mm256_setr_epi8(0, 0, 0, 0, 0, 0, 0, 0, 1, 1, 1, 1, 1, 1, 1, 1, 2, 2, 2, 2, 2, 2, 2, 2, 3, 3, 3, 3, 3, 3, 3, 3));
  const __m256i select = _mm256_set1_epi64x(0x8040201008040201LL);
  const __m256i set = _mm256_cmpeq_epi8(_mm256_and_si256(spread, select), select);
  return _mm256_and_si256(set, _mm256_set1_epi8(0x10));
}

template <bool affine>
struct DecodeQ5 {  // Q5_1: w = d q + m; Q5_0: w = d q - 16 d; q = nibble | bit << 4
  static constexpr int kGroups = 1, kBytes = affine ? 24 : 22;
  static constexpr bool kOffset = true, kSplit = false;
  void operator()(const uint8_t* b, int, Codes& c) const {
    const float d = half_to_float(b);
    c.s0 = c.s1 = d;
    c.z = affine ? half_to_float(b + 2) : -16.f * d;
    uint32_t qh;
    std::memcpy(&qh, b + (affine ? 4 : 2), 4);
    const __m128i q = _mm_loadu_si128(reinterpret_cast<const __m128i*>(b + (affine ? 8 : 6)));
    const __m128i mask = _mm_set1_epi8(15);
    const __m256i nib = _mm256_set_m128i(_mm_and_si128(_mm_srli_epi16(q, 4), mask), _mm_and_si128(q, mask));
    const __m256i codes = _mm256_or_si256(nib, bits_to_0x10(qh));
    c.lo = widen_u8(_mm256_castsi256_si128(codes));
    c.hi = widen_u8(_mm256_extracti128_si256(codes, 1));
  }
};

struct DecodeQ8 {  // w = d q, q signed
  static constexpr int kGroups = 1, kBytes = 34;
  static constexpr bool kOffset = false, kSplit = false;
  void operator()(const uint8_t* b, int, Codes& c) const {
    c.s0 = c.s1 = half_to_float(b);
    c.z = 0.f;
    const __m256i q = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(b + 2));
    c.lo = _mm256_cvtepi8_epi16(_mm256_castsi256_si128(q));
    c.hi = _mm256_cvtepi8_epi16(_mm256_extracti128_si256(q, 1));
  }
};

template <bool five>
struct DecodeQK {  // Q4_K / Q5_K sub-block g of 32: w = (d sc) q - dmin m
  static constexpr int kGroups = 8, kBytes = five ? 176 : 144;
  static constexpr bool kOffset = true, kSplit = false;
  void operator()(const uint8_t* b, int g, Codes& c) const {
    int sc, m;
    k_scale_min(b + 4, g, sc, m);
    c.s0 = c.s1 = half_to_float(b) * float(sc);
    c.z = -(half_to_float(b + 2) * float(m));
    __m256i q = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(b + (five ? 48 : 16) + 32 * (g / 2)));
    if (g & 1) q = _mm256_srli_epi16(q, 4);
    q = _mm256_and_si256(q, _mm256_set1_epi8(15));
    if (five) {
      const __m256i qh = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(b + 16));
      const __m256i bit = _mm256_and_si256(_mm256_srl_epi16(qh, _mm_cvtsi32_si128(g)), _mm256_set1_epi8(1));
      q = _mm256_or_si256(q, _mm256_slli_epi16(bit, 4));
    }
    c.lo = widen_u8(_mm256_castsi256_si128(q));
    c.hi = widen_u8(_mm256_extracti128_si256(q, 1));
  }
};

struct DecodeQ6K {  // 16-weight sub-blocks: w = (d sc) (q - 32)
  static constexpr int kGroups = 8, kBytes = 210;
  static constexpr bool kOffset = false, kSplit = true;
  void operator()(const uint8_t* b, int g, Codes& c) const {
    const float d = half_to_float(b + 208);
    const int half = g / 4, quarter = g % 4;
    const int8_t* sc = reinterpret_cast<const int8_t*>(b + 192) + 8 * half + 2 * quarter;
    c.s0 = d * float(sc[0]);
    c.s1 = d * float(sc[1]);
    c.z = 0.f;
    __m256i ql = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(b + 64 * half + (quarter & 1) * 32));
    __m256i qh = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(b + 128 + 32 * half));
    if (quarter >= 2) ql = _mm256_srli_epi16(ql, 4);
    ql = _mm256_and_si256(ql, _mm256_set1_epi8(15));
    qh = _mm256_and_si256(_mm256_srl_epi16(qh, _mm_cvtsi32_si128(2 * quarter)), _mm256_set1_epi8(3));
    const __m256i q = _mm256_or_si256(ql, _mm256_slli_epi16(qh, 4));
    const __m256i off = _mm256_set1_epi16(32);
    c.lo = _mm256_sub_epi16(widen_u8(_mm256_castsi256_si128(q)), off);
    c.hi = _mm256_sub_epi16(widen_u8(_mm256_extracti128_si256(q, 1)), off);
  }
};

// x quantized per 32-group to int16 (scale sx = max|x| / 32767): integer dot products with the
// codes (vpmaddwd) then one float multiply-add per group.
struct QuantizedX {
  std::vector<int16_t> q;  // [M, K]
  std::vector<float> scale;  // [M, K/32]
  std::vector<float> sum;  // [M, K/32], exact float sums (for the offsets z)
};

QuantizedX quantize_x(const float* x, int64_t M, int64_t K) {
  const int64_t groups = K / 32;
  QuantizedX out{std::vector<int16_t>(M * K), std::vector<float>(M * groups), std::vector<float>(M * groups)};
  for (int64_t i = 0; i < M * groups; ++i) {
    const float* xg = x + 32 * i;
    float amax = 0.f, total = 0.f;
    for (int j = 0; j < 32; ++j) {
      amax = std::max(amax, std::fabs(xg[j]));
      total += xg[j];
    }
    out.sum[i] = total;
    out.scale[i] = amax / 32767.f;
    const float inv = amax > 0.f ? 32767.f / amax : 0.f;
    for (int j = 0; j < 32; ++j) out.q[32 * i + j] = int16_t(std::nearbyint(xg[j] * inv));
  }
  return out;
}

// Rows [r0, r1) of W against M rows of x.
template <int M, class Decode>
void rows_kernel(const Decode& decode, const uint8_t* w, int64_t row_bytes, int64_t K, const QuantizedX& x,
                 float* y, int64_t N, int64_t r0, int64_t r1, int64_t m0) {
  const int64_t groups = K / 32, blocks = groups / Decode::kGroups;
  for (int64_t r = r0; r < r1; ++r) {
    const uint8_t* row = w + r * row_bytes;
    __m256 acc[M];
    float zacc[M];
    for (int m = 0; m < M; ++m) { acc[m] = _mm256_setzero_ps(); zacc[m] = 0.f; }
    for (int64_t blk = 0; blk < blocks; ++blk) {
      const uint8_t* block = row + blk * Decode::kBytes;
      for (int sub = 0; sub < Decode::kGroups; ++sub) {
        const int64_t g = blk * Decode::kGroups + sub;
        Codes c;
        decode(block, sub, c);
        for (int m = 0; m < M; ++m) {
          const int64_t xi = (m0 + m) * groups + g;
          const __m256i* xq = reinterpret_cast<const __m256i*>(x.q.data() + 32 * xi);
          const __m256i plo = _mm256_madd_epi16(c.lo, _mm256_loadu_si256(xq));
          const __m256i phi = _mm256_madd_epi16(c.hi, _mm256_loadu_si256(xq + 1));
          const float sx = x.scale[xi];
          if (Decode::kSplit) {
            acc[m] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(plo), _mm256_set1_ps(c.s0 * sx), acc[m]);
            acc[m] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(phi), _mm256_set1_ps(c.s1 * sx), acc[m]);
          } else {
            acc[m] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(_mm256_add_epi32(plo, phi)), _mm256_set1_ps(c.s0 * sx), acc[m]);
          }
          if (Decode::kOffset) zacc[m] += c.z * x.sum[xi];
        }
      }
    }
    for (int m = 0; m < M; ++m) y[(m0 + m) * N + r] = hsum(acc[m]) + zacc[m];
  }
}

template <class Decode>
void run_rows(const Decode& decode, const uint8_t* w, int64_t row_bytes, int64_t K, const QuantizedX& x, float* y,
              int64_t M, int64_t N, int64_t r0, int64_t r1) {
  int64_t m = 0;
  for (; m + 4 <= M; m += 4) rows_kernel<4>(decode, w, row_bytes, K, x, y, N, r0, r1, m);
  for (; m + 2 <= M; m += 2) rows_kernel<2>(decode, w, row_bytes, K, x, y, N, r0, r1, m);
  for (; m < M; ++m) rows_kernel<1>(decode, w, row_bytes, K, x, y, N, r0, r1, m);
}

void dispatch_rows(int64_t qtype, const uint8_t* w, int64_t row_bytes, int64_t K, const QuantizedX& x, float* y,
                   int64_t M, int64_t ldy, int64_t r0, int64_t r1) {
  switch (qtype) {
    case Q4_0: run_rows(DecodeQ4<false>{}, w, row_bytes, K, x, y, M, ldy, r0, r1); break;
    case Q4_1: run_rows(DecodeQ4<true>{}, w, row_bytes, K, x, y, M, ldy, r0, r1); break;
    case Q5_0: run_rows(DecodeQ5<false>{}, w, row_bytes, K, x, y, M, ldy, r0, r1); break;
    case Q5_1: run_rows(DecodeQ5<true>{}, w, row_bytes, K, x, y, M, ldy, r0, r1); break;
    case Q8_0: run_rows(DecodeQ8{}, w, row_bytes, K, x, y, M, ldy, r0, r1); break;
    case Q4_K: run_rows(DecodeQK<false>{}, w, row_bytes, K, x, y, M, ldy, r0, r1); break;
    case Q5_K: run_rows(DecodeQK<true>{}, w, row_bytes, K, x, y, M, ldy, r0, r1); break;
    case Q6_K: run_rows(DecodeQ6K{}, w, row_bytes, K, x, y, M, ldy, r0, r1); break;
  }
}
#endif

void portable_rows(int64_t t, const Geometry geo, const uint8_t* w, int64_t row_bytes, int64_t K, const float* x,
                   const float* xsum, float* y, int64_t M, int64_t N, int64_t r0, int64_t r1) {
  const int64_t groups = K / 32, per_block = geo.block / 32;
  float c[32];
  for (int64_t r = r0; r < r1; ++r) {
    for (int64_t m = 0; m < M; ++m) {
      float acc = 0.f, zacc = 0.f;
      for (int64_t g = 0; g < groups; ++g) {
        float s, z;
        decode_group(t, w + r * row_bytes + (g / per_block) * geo.bytes, int(g % per_block), c, s, z);
        const float* xg = x + m * K + 32 * g;
        float p = 0.f;
        for (int j = 0; j < 32; ++j) p += c[j] * xg[j];
        acc += s * p;
        zacc += z * xsum[m * groups + g];
      }
      y[m * N + r] = acc + zacc;
    }
  }
}

}  // namespace


// x: float32 [M, K]; ws: GGUF block tensors (uint8) of types `qtypes` with `ns` rows each.
// Returns float32 [M, sum(ns)]: the products side by side, computed in one parallel pass so that
// q/k/v (or gate/up) cost one call and share the preparation of x.
torch::Tensor gguf_matmul_many(torch::Tensor x, std::vector<torch::Tensor> ws, std::vector<int64_t> qtypes,
                               std::vector<int64_t> ns) {
  TORCH_CHECK(x.dim() == 2 && x.scalar_type() == torch::kFloat32, "gguf_matmul: x must be float32 [M, K]");
  TORCH_CHECK(ws.size() == qtypes.size() && ws.size() == ns.size() && !ws.empty(), "gguf_matmul: mismatched lists");
  x = x.contiguous();
  const int64_t M = x.size(0), K = x.size(1);
  TORCH_CHECK(K % 32 == 0, "gguf_matmul: K=", K, " is not a multiple of 32");
  const size_t P = ws.size();
  std::vector<int64_t> row_bytes(P), first(P + 1, 0);
  std::vector<const uint8_t*> wp(P);
  for (size_t i = 0; i < P; ++i) {
    const Geometry geo = geometry(qtypes[i]);
    TORCH_CHECK(ws[i].scalar_type() == torch::kUInt8 && ws[i].is_contiguous(), "gguf_matmul: weights must be contiguous uint8");
    TORCH_CHECK(K % geo.block == 0, "gguf_matmul: K=", K, " is not a multiple of the block size ", geo.block);
    row_bytes[i] = K / geo.block * geo.bytes;
    TORCH_CHECK(ws[i].numel() == ns[i] * row_bytes[i], "gguf_matmul: weight ", i, " has ", ws[i].numel(),
                " bytes, expected ", ns[i] * row_bytes[i]);
    wp[i] = ws[i].data_ptr<uint8_t>();
    first[i + 1] = first[i] + ns[i];
  }
  const int64_t total = first[P], groups = K / 32;
  auto y = torch::empty({M, total}, x.options());
  float* yp = y.data_ptr<float>();
  const float* xr = x.data_ptr<float>();
#ifdef MRS_AVX2
  const QuantizedX xq = quantize_x(xr, M, K);
  at::parallel_for(0, total, 16, [&](int64_t r0, int64_t r1) {
    for (size_t i = 0; i < P; ++i) {
      const int64_t a = std::max(r0, first[i]), b = std::min(r1, first[i + 1]);
      if (a >= b) continue;
      // rows of weight i write into their own columns of y: shift the output base, keep the stride
      dispatch_rows(qtypes[i], wp[i], row_bytes[i], K, xq, yp + first[i], M, total, a - first[i], b - first[i]);
    }
  });
#else
  std::vector<float> xsum(M * groups);  // per-group sums of x, for the offsets z
  for (int64_t i = 0; i < M * groups; ++i) {
    float acc = 0.f;
    for (int j = 0; j < 32; ++j) acc += xr[32 * i + j];
    xsum[i] = acc;
  }
  at::parallel_for(0, total, 16, [&](int64_t r0, int64_t r1) {
    for (size_t i = 0; i < P; ++i) {
      const int64_t a = std::max(r0, first[i]), b = std::min(r1, first[i + 1]);
      if (a < b)
        portable_rows(qtypes[i], geometry(qtypes[i]), wp[i], row_bytes[i], K, xr, xsum.data(), yp + first[i], M, total,
                      a - first[i], b - first[i]);
    }
  });
#endif
  return y;
}

torch::Tensor gguf_matmul(torch::Tensor x, torch::Tensor w, int64_t qtype, int64_t N) {
  return gguf_matmul_many(x, {w}, {qtype}, {N});
}

// Rows of W as float32 [N, K] (prefill multiplies these with the BLAS matmul). Same arithmetic as
// the matmul's decoders (w = s * c + z per element), so both paths see the same weights.
torch::Tensor gguf_dequantize(torch::Tensor w, int64_t qtype, int64_t N, int64_t K) {
  TORCH_CHECK(w.scalar_type() == torch::kUInt8 && w.is_contiguous(), "gguf_dequantize: w must be contiguous uint8");
  const Geometry geo = geometry(qtype);
  TORCH_CHECK(K % geo.block == 0, "gguf_dequantize: K=", K, " is not a multiple of the block size ", geo.block);
  const int64_t row_bytes = K / geo.block * geo.bytes, groups = K / 32, per_block = geo.block / 32;
  TORCH_CHECK(w.numel() == N * row_bytes, "gguf_dequantize: weight has ", w.numel(), " bytes, expected ", N * row_bytes);
  auto out = torch::empty({N, K}, torch::kFloat32);
  float* op = out.data_ptr<float>();
  const uint8_t* wp = w.data_ptr<uint8_t>();
  at::parallel_for(0, N, 64, [&](int64_t r0, int64_t r1) {
    float c[32];
    for (int64_t r = r0; r < r1; ++r) {
      for (int64_t g = 0; g < groups; ++g) {
        float s, z;
        decode_group(qtype, wp + r * row_bytes + (g / per_block) * geo.bytes, int(g % per_block), c, s, z);
        float* o = op + r * K + 32 * g;
        for (int j = 0; j < 32; ++j) o[j] = s * c[j] + z;
      }
    }
  });
  return out;
}

TORCH_LIBRARY_FRAGMENT(mistralrs_kernels, m) {
  m.def("gguf_matmul(Tensor x, Tensor w, int qtype, int N) -> Tensor");
  m.def("gguf_matmul_many(Tensor x, Tensor[] ws, int[] qtypes, int[] ns) -> Tensor");
  m.def("gguf_dequantize(Tensor w, int qtype, int N, int K) -> Tensor");
}

TORCH_LIBRARY_IMPL(mistralrs_kernels, CPU, m) {
  m.impl("gguf_matmul", &gguf_matmul);
  m.impl("gguf_matmul_many", &gguf_matmul_many);
  m.impl("gguf_dequantize", &gguf_dequantize);
}

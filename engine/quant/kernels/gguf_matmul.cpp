// y = x @ W^T straight from GGUF blocks, for few rows of x (decode): float32 activations, no
// activation quantization. Each 32-weight group decodes to integer-valued floats c, one multiplier
// s and one offset z (w = s * c + z), so a row's dot product is
//     sum_g  s_g * (c_g . x_g)  +  z_g * sum(x_g)
// with the per-group sums of x computed once per call. Rows are split across torch's threads.

#include <torch/extension.h>
#include <ATen/Parallel.h>

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

// One 32-weight group: codes into c[32] (integer-valued floats), w = s * c + z.
inline void decode_group(int64_t t, const uint8_t* b, int g, float* c, float& s, float& z) {
  switch (t) {
    case Q4_0: {
      s = half_to_float(b);
      z = 0.f;
      const uint8_t* q = b + 2;
      for (int j = 0; j < 16; ++j) { c[j] = float(q[j] & 15) - 8.f; c[j + 16] = float(q[j] >> 4) - 8.f; }
      return;
    }
    case Q4_1: {
      s = half_to_float(b);
      z = half_to_float(b + 2);
      const uint8_t* q = b + 4;
      for (int j = 0; j < 16; ++j) { c[j] = float(q[j] & 15); c[j + 16] = float(q[j] >> 4); }
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

inline __m256 u8x8_to_ps(__m128i v) { return _mm256_cvtepi32_ps(_mm256_cvtepu8_epi32(v)); }
inline __m256 i8x8_to_ps(__m128i v) { return _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(v)); }

// Fast decoders for the common types: 32 codes as four 8-float vectors.
inline bool decode_group_avx2(int64_t t, const uint8_t* b, int g, __m256* c, float& s, float& z) {
  switch (t) {
    case Q4_0:
    case Q4_1: {
      const bool affine = t == Q4_1;
      s = half_to_float(b);
      z = affine ? half_to_float(b + 2) : 0.f;
      __m128i q = _mm_loadu_si128(reinterpret_cast<const __m128i*>(b + (affine ? 4 : 2)));
      const __m128i mask = _mm_set1_epi8(15);
      __m128i lo = _mm_and_si128(q, mask), hi = _mm_and_si128(_mm_srli_epi16(q, 4), mask);
      if (!affine) {
        const __m128i eight = _mm_set1_epi8(8);
        lo = _mm_sub_epi8(lo, eight);
        hi = _mm_sub_epi8(hi, eight);
        c[0] = i8x8_to_ps(lo); c[1] = i8x8_to_ps(_mm_srli_si128(lo, 8));
        c[2] = i8x8_to_ps(hi); c[3] = i8x8_to_ps(_mm_srli_si128(hi, 8));
      } else {
        c[0] = u8x8_to_ps(lo); c[1] = u8x8_to_ps(_mm_srli_si128(lo, 8));
        c[2] = u8x8_to_ps(hi); c[3] = u8x8_to_ps(_mm_srli_si128(hi, 8));
      }
      return true;
    }
    case Q8_0: {
      s = half_to_float(b);
      z = 0.f;
      const __m128i* q = reinterpret_cast<const __m128i*>(b + 2);
      __m128i a = _mm_loadu_si128(q), bb = _mm_loadu_si128(q + 1);
      c[0] = i8x8_to_ps(a); c[1] = i8x8_to_ps(_mm_srli_si128(a, 8));
      c[2] = i8x8_to_ps(bb); c[3] = i8x8_to_ps(_mm_srli_si128(bb, 8));
      return true;
    }
    case Q4_K: {
      const float d = half_to_float(b), dmin = half_to_float(b + 2);
      int sc, m;
      k_scale_min(b + 4, g, sc, m);
      s = d * float(sc);
      z = -(dmin * float(m));
      __m256i q = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(b + 16 + 32 * (g / 2)));
      if (g & 1) q = _mm256_srli_epi16(q, 4);
      q = _mm256_and_si256(q, _mm256_set1_epi8(15));
      __m128i lo = _mm256_castsi256_si128(q), hi = _mm256_extracti128_si256(q, 1);
      c[0] = u8x8_to_ps(lo); c[1] = u8x8_to_ps(_mm_srli_si128(lo, 8));
      c[2] = u8x8_to_ps(hi); c[3] = u8x8_to_ps(_mm_srli_si128(hi, 8));
      return true;
    }
    default:
      return false;
  }
}
#endif

// Rows [r0, r1) of W against M rows of x (M <= 4 per pass).
template <int M>
void rows_kernel(int64_t t, const uint8_t* w, int64_t row_bytes, int64_t K, const float* x, const float* xsum,
                 float* y, int64_t N, int64_t r0, int64_t r1, int64_t m0) {
  const Geometry geo = geometry(t);
  const int64_t groups = K / 32, per_block = geo.block / 32;
  alignas(32) float c[32];
  for (int64_t r = r0; r < r1; ++r) {
    const uint8_t* row = w + r * row_bytes;
    float zacc[M] = {};
#ifdef MRS_AVX2
    __m256 acc[M];
    for (int m = 0; m < M; ++m) acc[m] = _mm256_setzero_ps();
#else
    float acc[M] = {};
#endif
    for (int64_t g = 0; g < groups; ++g) {
      const uint8_t* block = row + (g / per_block) * geo.bytes;
      const int sub = int(g % per_block);
      float s, z;
#ifdef MRS_AVX2
      __m256 cv[4];
      if (!decode_group_avx2(t, block, sub, cv, s, z)) {
        decode_group(t, block, sub, c, s, z);
        for (int j = 0; j < 4; ++j) cv[j] = _mm256_load_ps(c + 8 * j);
      }
      const __m256 sv = _mm256_set1_ps(s);
      for (int m = 0; m < M; ++m) {
        const float* xg = x + (m0 + m) * K + 32 * g;
        __m256 p = _mm256_mul_ps(cv[0], _mm256_loadu_ps(xg));
        p = _mm256_fmadd_ps(cv[1], _mm256_loadu_ps(xg + 8), p);
        p = _mm256_fmadd_ps(cv[2], _mm256_loadu_ps(xg + 16), p);
        p = _mm256_fmadd_ps(cv[3], _mm256_loadu_ps(xg + 24), p);
        acc[m] = _mm256_fmadd_ps(p, sv, acc[m]);
        zacc[m] += z * xsum[(m0 + m) * groups + g];
      }
#else
      decode_group(t, block, sub, c, s, z);
      for (int m = 0; m < M; ++m) {
        const float* xg = x + (m0 + m) * K + 32 * g;
        float p = 0.f;
        for (int j = 0; j < 32; ++j) p += c[j] * xg[j];
        acc[m] += s * p;
        zacc[m] += z * xsum[(m0 + m) * groups + g];
      }
#endif
    }
    for (int m = 0; m < M; ++m) {
#ifdef MRS_AVX2
      y[(m0 + m) * N + r] = hsum(acc[m]) + zacc[m];
#else
      y[(m0 + m) * N + r] = acc[m] + zacc[m];
#endif
    }
  }
}

}  // namespace

// x: float32 [M, K]; w: uint8 [N * row_bytes] GGUF blocks of type `qtype`; returns float32 [M, N].
torch::Tensor gguf_matmul(torch::Tensor x, torch::Tensor w, int64_t qtype, int64_t N) {
  TORCH_CHECK(x.dim() == 2 && x.scalar_type() == torch::kFloat32, "gguf_matmul: x must be float32 [M, K]");
  TORCH_CHECK(w.scalar_type() == torch::kUInt8 && w.is_contiguous(), "gguf_matmul: w must be contiguous uint8");
  x = x.contiguous();
  const int64_t M = x.size(0), K = x.size(1);
  const Geometry geo = geometry(qtype);
  TORCH_CHECK(K % geo.block == 0, "gguf_matmul: K=", K, " is not a multiple of the block size ", geo.block);
  const int64_t row_bytes = K / geo.block * geo.bytes;
  TORCH_CHECK(w.numel() == N * row_bytes, "gguf_matmul: weight has ", w.numel(), " bytes, expected ", N * row_bytes);
  auto xsum = x.view({M, K / 32, 32}).sum(2).contiguous();
  auto y = torch::empty({M, N}, x.options());
  const float* xp = x.data_ptr<float>();
  const float* sp = xsum.data_ptr<float>();
  float* yp = y.data_ptr<float>();
  const uint8_t* wp = w.data_ptr<uint8_t>();
  at::parallel_for(0, N, 16, [&](int64_t r0, int64_t r1) {
    int64_t m = 0;
    for (; m + 4 <= M; m += 4) rows_kernel<4>(qtype, wp, row_bytes, K, xp, sp, yp, N, r0, r1, m);
    for (; m + 2 <= M; m += 2) rows_kernel<2>(qtype, wp, row_bytes, K, xp, sp, yp, N, r0, r1, m);
    for (; m < M; ++m) rows_kernel<1>(qtype, wp, row_bytes, K, xp, sp, yp, N, r0, r1, m);
  });
  return y;
}

TORCH_LIBRARY(mistralrs_kernels, m) {
  m.def("gguf_matmul(Tensor x, Tensor w, int qtype, int N) -> Tensor");
}

TORCH_LIBRARY_IMPL(mistralrs_kernels, CPU, m) {
  m.impl("gguf_matmul", &gguf_matmul);
}

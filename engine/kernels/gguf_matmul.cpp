// y = x @ W^T straight from GGUF blocks, for few rows of x (decode): float32 activations, no
// activation quantization. Each 32-weight group decodes to integer-valued floats c, one multiplier
// s and one offset z (w = s * c + z), so a row's dot product is
//     sum_g  s_g * (c_g . x_g)  +  z_g * sum(x_g)
// with the per-group sums of x computed once per call. Rows are split across torch's threads.
//
// The AVX2 decoders avoid byte shuffles: they shift whole 32-bit lanes, which yields the codes in
// a fixed lane order per format; x is permuted into that order once per call instead.

#include <torch/extension.h>
#include <ATen/Parallel.h>

#include <array>
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

// Lane order of the decoders: position p = 8 * vector + lane holds element order[p] of the group.
// Nibble formats (16 bytes, element e < 16 in the low nibble of byte e, e + 16 in the high one):
// lanes 0-3 read the low nibble of byte 4 * lane + vector, lanes 4-7 the high nibble.
// Byte formats (32 bytes, element e in byte e): lane l of vector v reads byte 4 * l + v.
constexpr std::array<int, 32> nibble_order() {
  std::array<int, 32> o{};
  for (int v = 0; v < 4; ++v)
    for (int l = 0; l < 8; ++l) o[8 * v + l] = l < 4 ? 4 * l + v : 4 * (l - 4) + v + 16;
  return o;
}
constexpr std::array<int, 32> byte_order() {
  std::array<int, 32> o{};
  for (int v = 0; v < 4; ++v)
    for (int l = 0; l < 8; ++l) o[8 * v + l] = 4 * l + v;
  return o;
}
constexpr std::array<int, 32> kNibbleOrder = nibble_order();
constexpr std::array<int, 32> kByteOrder = byte_order();

bool nibble_layout(int64_t t) { return t == Q4_0 || t == Q4_1 || t == Q5_0 || t == Q5_1; }

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

inline __m256i lane_shift(__m256i d, int n) { return _mm256_srl_epi32(d, _mm_cvtsi32_si128(n)); }

// Each decoder writes the group's codes (in the lane order above) as 4 vectors and s, z.
template <bool affine>
struct DecodeQ4 {  // Q4_0 (centered) and Q4_1 (affine)
  static constexpr int kGroups = 1, kBytes = affine ? 20 : 18;
  static constexpr bool kOffset = affine;
  void operator()(const uint8_t* b, int, __m256* c, float& s, float& z) const {
    s = half_to_float(b);
    z = affine ? half_to_float(b + 2) : 0.f;
    const __m256i d = _mm256_broadcastsi128_si256(_mm_loadu_si128(reinterpret_cast<const __m128i*>(b + (affine ? 4 : 2))));
    const __m256i mask = _mm256_set1_epi32(15), off = _mm256_set1_epi32(affine ? 0 : 8);
    for (int v = 0; v < 4; ++v) {
      const __m256i sh = _mm256_setr_epi32(8 * v, 8 * v, 8 * v, 8 * v, 8 * v + 4, 8 * v + 4, 8 * v + 4, 8 * v + 4);
      c[v] = _mm256_cvtepi32_ps(_mm256_sub_epi32(_mm256_and_si256(_mm256_srlv_epi32(d, sh), mask), off));
    }
  }
};

template <bool affine>
struct DecodeQ5 {  // Q5_0 (centered) and Q5_1 (affine)
  static constexpr int kGroups = 1, kBytes = affine ? 24 : 22;
  static constexpr bool kOffset = affine;
  void operator()(const uint8_t* b, int, __m256* c, float& s, float& z) const {
    s = half_to_float(b);
    z = affine ? half_to_float(b + 2) : 0.f;
    uint32_t qh;
    std::memcpy(&qh, b + (affine ? 4 : 2), 4);
    const __m256i d = _mm256_broadcastsi128_si256(_mm_loadu_si128(reinterpret_cast<const __m128i*>(b + (affine ? 8 : 6))));
    const __m256i h = _mm256_set1_epi32(int(qh));
    const __m256i mask = _mm256_set1_epi32(15), one = _mm256_set1_epi32(1), off = _mm256_set1_epi32(affine ? 0 : 16);
    for (int v = 0; v < 4; ++v) {
      const __m256i sh = _mm256_setr_epi32(8 * v, 8 * v, 8 * v, 8 * v, 8 * v + 4, 8 * v + 4, 8 * v + 4, 8 * v + 4);
      const __m256i hb = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(kNibbleOrder.data() + 8 * v));
      __m256i q = _mm256_and_si256(_mm256_srlv_epi32(d, sh), mask);
      q = _mm256_or_si256(q, _mm256_slli_epi32(_mm256_and_si256(_mm256_srlv_epi32(h, hb), one), 4));
      c[v] = _mm256_cvtepi32_ps(_mm256_sub_epi32(q, off));
    }
  }
};

struct DecodeQ8 {
  static constexpr int kGroups = 1, kBytes = 34;
  static constexpr bool kOffset = false;
  void operator()(const uint8_t* b, int, __m256* c, float& s, float& z) const {
    s = half_to_float(b);
    z = 0.f;
    const __m256i d = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(b + 2));
    c[0] = _mm256_cvtepi32_ps(_mm256_srai_epi32(_mm256_slli_epi32(d, 24), 24));
    c[1] = _mm256_cvtepi32_ps(_mm256_srai_epi32(_mm256_slli_epi32(d, 16), 24));
    c[2] = _mm256_cvtepi32_ps(_mm256_srai_epi32(_mm256_slli_epi32(d, 8), 24));
    c[3] = _mm256_cvtepi32_ps(_mm256_srai_epi32(d, 24));
  }
};

template <bool five>
struct DecodeQK {  // Q4_K and Q5_K sub-blocks of 32
  static constexpr int kGroups = 8, kBytes = five ? 176 : 144;
  static constexpr bool kOffset = true;
  void operator()(const uint8_t* b, int g, __m256* c, float& s, float& z) const {
    const float d = half_to_float(b), dmin = half_to_float(b + 2);
    int sc, m;
    k_scale_min(b + 4, g, sc, m);
    s = d * float(sc);
    z = -(dmin * float(m));
    const __m256i q = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(b + (five ? 48 : 16) + 32 * (g / 2)));
    const int base = (g & 1) * 4;
    const __m256i mask = _mm256_set1_epi32(15), one = _mm256_set1_epi32(1);
    const __m256i qh = five ? _mm256_loadu_si256(reinterpret_cast<const __m256i*>(b + 16)) : _mm256_setzero_si256();
    for (int v = 0; v < 4; ++v) {
      __m256i x = _mm256_and_si256(lane_shift(q, 8 * v + base), mask);
      if (five) x = _mm256_or_si256(x, _mm256_slli_epi32(_mm256_and_si256(lane_shift(qh, 8 * v + g), one), 4));
      c[v] = _mm256_cvtepi32_ps(x);
    }
  }
};

struct DecodeQ6K {
  static constexpr int kGroups = 8, kBytes = 210;
  static constexpr bool kOffset = false;
  void operator()(const uint8_t* b, int g, __m256* c, float& s, float& z) const {
    s = half_to_float(b + 208);
    z = 0.f;
    const int half = g / 4, quarter = g % 4;
    const __m256i ql = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(b + 64 * half + (quarter & 1) * 32));
    const __m256i qh = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(b + 128 + 32 * half));
    const int8_t* sc = reinterpret_cast<const int8_t*>(b + 192) + 8 * half + 2 * quarter;
    // lanes 0-3 hold elements < 16 (first sub-block), lanes 4-7 the second
    const __m256 scale = _mm256_setr_ps(sc[0], sc[0], sc[0], sc[0], sc[1], sc[1], sc[1], sc[1]);
    const int nib = quarter >= 2 ? 4 : 0, hs = 2 * quarter;
    const __m256i m4 = _mm256_set1_epi32(15), m2 = _mm256_set1_epi32(3), off = _mm256_set1_epi32(32);
    for (int v = 0; v < 4; ++v) {
      __m256i x = _mm256_and_si256(lane_shift(ql, 8 * v + nib), m4);
      x = _mm256_or_si256(x, _mm256_slli_epi32(_mm256_and_si256(lane_shift(qh, 8 * v + hs), m2), 4));
      c[v] = _mm256_mul_ps(_mm256_cvtepi32_ps(_mm256_sub_epi32(x, off)), scale);
    }
  }
};

// Rows [r0, r1) of W against M rows of (permuted) x.
template <int M, class Decode>
void rows_kernel(const Decode& decode, const uint8_t* w, int64_t row_bytes, int64_t K, const float* xp,
                 const float* xsum, float* y, int64_t N, int64_t r0, int64_t r1, int64_t m0) {
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
        __m256 c[4];
        float s, z;
        decode(block, sub, c, s, z);
        const __m256 sv = _mm256_set1_ps(s);
        for (int m = 0; m < M; ++m) {
          const float* xg = xp + (m0 + m) * K + 32 * g;
          __m256 p = _mm256_mul_ps(c[0], _mm256_loadu_ps(xg));
          p = _mm256_fmadd_ps(c[1], _mm256_loadu_ps(xg + 8), p);
          p = _mm256_fmadd_ps(c[2], _mm256_loadu_ps(xg + 16), p);
          p = _mm256_fmadd_ps(c[3], _mm256_loadu_ps(xg + 24), p);
          acc[m] = _mm256_fmadd_ps(p, sv, acc[m]);
          if (Decode::kOffset) zacc[m] += z * xsum[(m0 + m) * groups + g];
        }
      }
    }
    for (int m = 0; m < M; ++m) y[(m0 + m) * N + r] = hsum(acc[m]) + zacc[m];
  }
}

template <class Decode>
void run_rows(const Decode& decode, const uint8_t* w, int64_t row_bytes, int64_t K, const float* xp,
              const float* xsum, float* y, int64_t M, int64_t N, int64_t r0, int64_t r1) {
  int64_t m = 0;
  for (; m + 4 <= M; m += 4) rows_kernel<4>(decode, w, row_bytes, K, xp, xsum, y, N, r0, r1, m);
  for (; m + 2 <= M; m += 2) rows_kernel<2>(decode, w, row_bytes, K, xp, xsum, y, N, r0, r1, m);
  for (; m < M; ++m) rows_kernel<1>(decode, w, row_bytes, K, xp, xsum, y, N, r0, r1, m);
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

#ifdef MRS_AVX2
void dispatch_rows(int64_t qtype, const uint8_t* w, int64_t row_bytes, int64_t K, const float* xp,
                   const float* xsum, float* y, int64_t M, int64_t ldy, int64_t r0, int64_t r1) {
  switch (qtype) {
    case Q4_0: run_rows(DecodeQ4<false>{}, w, row_bytes, K, xp, xsum, y, M, ldy, r0, r1); break;
    case Q4_1: run_rows(DecodeQ4<true>{}, w, row_bytes, K, xp, xsum, y, M, ldy, r0, r1); break;
    case Q5_0: run_rows(DecodeQ5<false>{}, w, row_bytes, K, xp, xsum, y, M, ldy, r0, r1); break;
    case Q5_1: run_rows(DecodeQ5<true>{}, w, row_bytes, K, xp, xsum, y, M, ldy, r0, r1); break;
    case Q8_0: run_rows(DecodeQ8{}, w, row_bytes, K, xp, xsum, y, M, ldy, r0, r1); break;
    case Q4_K: run_rows(DecodeQK<false>{}, w, row_bytes, K, xp, xsum, y, M, ldy, r0, r1); break;
    case Q5_K: run_rows(DecodeQK<true>{}, w, row_bytes, K, xp, xsum, y, M, ldy, r0, r1); break;
    case Q6_K: run_rows(DecodeQ6K{}, w, row_bytes, K, xp, xsum, y, M, ldy, r0, r1); break;
  }
}
#endif

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
  // per-group sums of x, and x in each lane order the weights need (plain loops: tiny work)
  std::vector<float> xsum(M * groups);
  for (int64_t i = 0; i < M * groups; ++i) {
    float acc = 0.f;
    for (int j = 0; j < 32; ++j) acc += xr[32 * i + j];
    xsum[i] = acc;
  }
#ifdef MRS_AVX2
  bool need_nibble = false, need_byte = false;
  for (auto t : qtypes) (nibble_layout(t) ? need_nibble : need_byte) = true;
  auto permute = [&](const std::array<int, 32>& order) {
    std::vector<float> out(M * K);
    for (int64_t i = 0; i < M * groups; ++i)
      for (int p = 0; p < 32; ++p) out[32 * i + p] = xr[32 * i + order[p]];
    return out;
  };
  const std::vector<float> xn = need_nibble ? permute(kNibbleOrder) : std::vector<float>();
  const std::vector<float> xb = need_byte ? permute(kByteOrder) : std::vector<float>();
  at::parallel_for(0, total, 16, [&](int64_t r0, int64_t r1) {
    for (size_t i = 0; i < P; ++i) {
      const int64_t a = std::max(r0, first[i]), b = std::min(r1, first[i + 1]);
      if (a >= b) continue;
      const float* xp = nibble_layout(qtypes[i]) ? xn.data() : xb.data();
      // rows of weight i write into their own columns of y: shift the output base, keep the stride
      dispatch_rows(qtypes[i], wp[i], row_bytes[i], K, xp, xsum.data(), yp + first[i], M, total, a - first[i],
                    b - first[i]);
    }
  });
#else
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

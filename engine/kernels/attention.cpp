// Decode-time attention over the paged KV cache, and the cache write: one call per layer each,
// for every sequence of the step, reading cache rows in place through each sequence's slots
// (no gathered copies). Queries of a GQA group share each key/value row they read.

#include <torch/extension.h>
#include <ATen/Parallel.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <vector>

#if defined(__AVX2__) && defined(__FMA__)
#include <immintrin.h>
#define MRS_AVX2 1
#endif

namespace {

inline float dot(const float* a, const float* b, int64_t n) {
  int64_t i = 0;
  float acc = 0.f;
#ifdef MRS_AVX2
  __m256 v = _mm256_setzero_ps();
  for (; i + 8 <= n; i += 8) v = _mm256_fmadd_ps(_mm256_loadu_ps(a + i), _mm256_loadu_ps(b + i), v);
  __m128 lo = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
  lo = _mm_add_ps(lo, _mm_movehl_ps(lo, lo));
  lo = _mm_add_ss(lo, _mm_movehdup_ps(lo));
  acc = _mm_cvtss_f32(lo);
#endif
  for (; i < n; ++i) acc += a[i] * b[i];
  return acc;
}

inline void axpy(float w, const float* x, float* y, int64_t n) {  // y += w * x
  int64_t i = 0;
#ifdef MRS_AVX2
  const __m256 wv = _mm256_set1_ps(w);
  for (; i + 8 <= n; i += 8) _mm256_storeu_ps(y + i, _mm256_fmadd_ps(wv, _mm256_loadu_ps(x + i), _mm256_loadu_ps(y + i)));
#endif
  for (; i < n; ++i) y[i] += w * x[i];
}

}  // namespace

// q: float32 [B, Hq, D] (rows may be strided); caches: float32 [S, Hkv, D] contiguous;
// slots: int64 [B, L] cache slots of positions 0..lens[b]-1 (padding beyond); window: attend to the
// last `window` positions only (0 = all). Returns [B, Hq, D].
torch::Tensor decode_attention(torch::Tensor q, torch::Tensor k_cache, torch::Tensor v_cache, torch::Tensor slots,
                               torch::Tensor lens, double scale, int64_t window) {
  TORCH_CHECK(q.dim() == 3 && q.scalar_type() == torch::kFloat32 && q.stride(2) == 1, "decode_attention: q [B, H, D] float32");
  TORCH_CHECK(k_cache.is_contiguous() && v_cache.is_contiguous() && k_cache.scalar_type() == torch::kFloat32,
              "decode_attention: caches must be contiguous float32");
  TORCH_CHECK(slots.scalar_type() == torch::kLong && lens.scalar_type() == torch::kLong, "decode_attention: int64 slots/lens");
  const int64_t B = q.size(0), Hq = q.size(1), D = q.size(2), Hkv = k_cache.size(1), Dv = v_cache.size(2);
  TORCH_CHECK(k_cache.size(2) == D && Hq % Hkv == 0, "decode_attention: head shapes disagree");
  slots = slots.contiguous();
  lens = lens.contiguous();
  const int64_t L = slots.size(1), rep = Hq / Hkv;
  auto out = torch::zeros({B, Hq, Dv}, q.options());
  const float *qp = q.data_ptr<float>(), *kp = k_cache.data_ptr<float>(), *vp = v_cache.data_ptr<float>();
  const int64_t *sp = slots.data_ptr<int64_t>(), *lp = lens.data_ptr<int64_t>();
  float* op = out.data_ptr<float>();
  const int64_t qs0 = q.stride(0), qs1 = q.stride(1), krow = Hkv * D, vrow = Hkv * Dv;
  at::parallel_for(0, B * Hkv, 1, [&](int64_t begin, int64_t end) {
    std::vector<float> scores;
    for (int64_t task = begin; task < end; ++task) {
      const int64_t b = task / Hkv, g = task % Hkv, len = lp[b];
      const int64_t first = window > 0 ? std::max<int64_t>(0, len - window) : 0, n = len - first;
      if (n <= 0) continue;
      scores.assign(rep * n, 0.f);
      const int64_t* s = sp + b * L + first;
      for (int64_t j = 0; j < n; ++j) {
        const float* krow_p = kp + s[j] * krow + g * D;
        for (int64_t r = 0; r < rep; ++r)
          scores[r * n + j] = float(scale) * dot(qp + b * qs0 + (g * rep + r) * qs1, krow_p, D);
      }
      for (int64_t r = 0; r < rep; ++r) {
        float* sc = scores.data() + r * n;
        const float mx = *std::max_element(sc, sc + n);
        float total = 0.f;
        for (int64_t j = 0; j < n; ++j) total += (sc[j] = std::exp(sc[j] - mx));
        const float inv = 1.f / total;
        for (int64_t j = 0; j < n; ++j) sc[j] *= inv;
      }
      for (int64_t j = 0; j < n; ++j) {
        const float* vrow_p = vp + s[j] * vrow + g * Dv;
        for (int64_t r = 0; r < rep; ++r) axpy(scores[r * n + j], vrow_p, op + (b * Hq + g * rep + r) * Dv, Dv);
      }
    }
  });
  return out;
}

// Write the step's keys and values (rows may be strided views of a fused projection) into their slots.
void kv_write(torch::Tensor k_cache, torch::Tensor v_cache, torch::Tensor slots, torch::Tensor k, torch::Tensor v) {
  TORCH_CHECK(k_cache.is_contiguous() && v_cache.is_contiguous(), "kv_write: caches must be contiguous");
  TORCH_CHECK(k.scalar_type() == k_cache.scalar_type() && v.scalar_type() == v_cache.scalar_type(), "kv_write: dtype mismatch");
  TORCH_CHECK(k.dim() == 3 && k.stride(2) == 1 && k.stride(1) == k.size(2) && v.dim() == 3 && v.stride(2) == 1 &&
              v.stride(1) == v.size(2), "kv_write: k, v must be [T, H, D] with contiguous heads");
  slots = slots.contiguous();
  const int64_t T = k.size(0), krow = k.size(1) * k.size(2), vrow = v.size(1) * v.size(2);
  const int64_t es = k.element_size();
  const int64_t* sp = slots.data_ptr<int64_t>();
  auto* kc = static_cast<char*>(k_cache.data_ptr());
  auto* vc = static_cast<char*>(v_cache.data_ptr());
  const auto* kd = static_cast<const char*>(k.data_ptr());
  const auto* vd = static_cast<const char*>(v.data_ptr());
  for (int64_t t = 0; t < T; ++t) {
    std::memcpy(kc + sp[t] * krow * es, kd + t * k.stride(0) * es, krow * es);
    std::memcpy(vc + sp[t] * vrow * es, vd + t * v.stride(0) * es, vrow * es);
  }
}

TORCH_LIBRARY_FRAGMENT(mistralrs_kernels, m) {
  m.def("decode_attention(Tensor q, Tensor k_cache, Tensor v_cache, Tensor slots, Tensor lens, float scale, int window) -> Tensor");
  m.def("kv_write(Tensor(a!) k_cache, Tensor(b!) v_cache, Tensor slots, Tensor k, Tensor v) -> ()");
}

TORCH_LIBRARY_IMPL(mistralrs_kernels, CPU, m) {
  m.impl("decode_attention", &decode_attention);
  m.impl("kv_write", &kv_write);
}

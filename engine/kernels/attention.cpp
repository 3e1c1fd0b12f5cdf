// Decode-time attention over the paged KV cache, and the cache write: one call per layer each,
// for every sequence of the step, reading cache rows in place through each sequence's slots
// (no gathered copies). Queries of a GQA group share each key/value row they read.

#include <torch/extension.h>
#include <ATen/Parallel.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <type_traits>
#include <vector>

#if defined(__AVX2__) && defined(__FMA__)
#include <immintrin.h>
#define MRS_AVX2 1
#endif

namespace {

#ifdef MRS_AVX2
inline float hsum(__m256 v) {
  __m128 lo = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
  lo = _mm_add_ps(lo, _mm_movehl_ps(lo, lo));
  lo = _mm_add_ss(lo, _mm_movehdup_ps(lo));
  return _mm_cvtss_f32(lo);
}

// exp(x) for x <= 0 (softmax after subtracting the max): 2^(x log2 e) split into an integer power
// and a degree-6 polynomial on [-0.5, 0.5]; relative error ~2e-7.
inline __m256 exp_ps(__m256 x) {
  x = _mm256_max_ps(x, _mm256_set1_ps(-87.3f));
  const __m256 t = _mm256_mul_ps(x, _mm256_set1_ps(1.44269504088896341f));
  const __m256 k = _mm256_round_ps(t, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
  const __m256 f = _mm256_mul_ps(_mm256_sub_ps(t, k), _mm256_set1_ps(0.69314718055994531f));  // in [-ln2/2, ln2/2]
  __m256 p = _mm256_set1_ps(1.f / 720);
  p = _mm256_fmadd_ps(p, f, _mm256_set1_ps(1.f / 120));
  p = _mm256_fmadd_ps(p, f, _mm256_set1_ps(1.f / 24));
  p = _mm256_fmadd_ps(p, f, _mm256_set1_ps(1.f / 6));
  p = _mm256_fmadd_ps(p, f, _mm256_set1_ps(0.5f));
  p = _mm256_fmadd_ps(p, f, _mm256_set1_ps(1.f));
  p = _mm256_fmadd_ps(p, f, _mm256_set1_ps(1.f));
  const __m256i pow2 = _mm256_slli_epi32(_mm256_add_epi32(_mm256_cvtps_epi32(k), _mm256_set1_epi32(127)), 23);
  return _mm256_mul_ps(p, _mm256_castsi256_ps(pow2));
}
#endif

// Cache elements: float32, or 16-bit float16 / bfloat16 (engine.kv_cache_dtype) widened as they load.
struct F16 { uint16_t bits; };
struct BF16 { uint16_t bits; };

inline float to_float(float x) { return x; }
inline float to_float(BF16 x) {
  const uint32_t u = uint32_t(x.bits) << 16;
  float f;
  std::memcpy(&f, &u, 4);
  return f;
}
inline float to_float(F16 x) { return float(c10::Half(x.bits, c10::Half::from_bits())); }

#ifdef MRS_AVX2
inline __m256 load8(const float* p) { return _mm256_loadu_ps(p); }
inline __m256 load8(const BF16* p) {
  const __m128i h = _mm_loadu_si128(reinterpret_cast<const __m128i*>(p));
  return _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_cvtepu16_epi32(h), 16));
}
#ifdef __F16C__
inline __m256 load8(const F16* p) { return _mm256_cvtph_ps(_mm_loadu_si128(reinterpret_cast<const __m128i*>(p))); }
#else
inline __m256 load8(const F16* p) {
  alignas(32) float f[8];
  for (int i = 0; i < 8; ++i) f[i] = to_float(p[i]);
  return _mm256_load_ps(f);
}
#endif
#endif

// q8_0 cache rows (engine.kv_cache_dtype=q8_0): GGML_TYPE_Q8_0 blocks of 34 bytes, a float16 scale d
// then 32 int8 values x / d. Pointers to them step in bytes.
struct Q8 { uint8_t byte; };
constexpr int64_t kQ8Block = 32, kQ8Bytes = 34;

inline float q8_scale(const Q8* blk) {
  uint16_t bits;
  std::memcpy(&bits, blk, 2);
#if defined(MRS_AVX2) && defined(__F16C__)
  return _cvtsh_ss(bits);
#else
  return float(c10::Half(bits, c10::Half::from_bits()));
#endif
}
inline const int8_t* q8_values(const Q8* blk) { return reinterpret_cast<const int8_t*>(blk) + 2; }

#ifdef MRS_AVX2
inline __m256 load8(const int8_t* p) {
  return _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(_mm_loadl_epi64(reinterpret_cast<const __m128i*>(p))));
}
#endif

// ggml's quantize_row_q8_0_ref for one head row of D (a multiple of 32) values: the scale in float32
// for the rounding (half away from zero), stored as float16
void quantize_row_q8(const float* x, int64_t D, Q8* out) {
  for (int64_t b = 0; b < D; b += kQ8Block, out += kQ8Bytes) {
    float amax = 0.f;
    for (int64_t j = 0; j < kQ8Block; ++j) amax = std::max(amax, std::fabs(x[b + j]));
    const float d = amax / 127, id = d != 0.f ? 1.f / d : 0.f;
    const uint16_t bits = c10::Half(d).x;
    std::memcpy(out, &bits, 2);
    int8_t* q = reinterpret_cast<int8_t*>(out) + 2;
    for (int64_t j = 0; j < kQ8Block; ++j) q[j] = int8_t(std::round(x[b + j] * id));
  }
}

// scores[j] = scale * q . k_j for the n keys at rows s[j] (stride `row` elements) of `keys`.
// Not inlined (nor weighted_values), so their loops get the registers to themselves: inlined into the
// callers, a small change around them (adding q8_0) made gcc spill the four key pointers inside the
// innermost loop, ~10% of the float16 kernel's time.
template <typename T>
__attribute__((noinline))
void key_scores(const float* q, const T* keys, const int64_t* s, int64_t row, int64_t n, int64_t D, float scale,
                float* scores) {
  int64_t j = 0;
#ifdef MRS_AVX2
  if (D % 8 == 0) {
    for (; j + 4 <= n; j += 4) {  // four keys at once: independent accumulators hide FMA latency
      const T *k0 = keys + s[j] * row, *k1 = keys + s[j + 1] * row, *k2 = keys + s[j + 2] * row,
              *k3 = keys + s[j + 3] * row;
      __m256 a0 = _mm256_setzero_ps(), a1 = a0, a2 = a0, a3 = a0;
      for (int64_t d = 0; d < D; d += 8) {
        const __m256 qv = _mm256_loadu_ps(q + d);
        a0 = _mm256_fmadd_ps(qv, load8(k0 + d), a0);
        a1 = _mm256_fmadd_ps(qv, load8(k1 + d), a1);
        a2 = _mm256_fmadd_ps(qv, load8(k2 + d), a2);
        a3 = _mm256_fmadd_ps(qv, load8(k3 + d), a3);
      }
      scores[j] = scale * hsum(a0);
      scores[j + 1] = scale * hsum(a1);
      scores[j + 2] = scale * hsum(a2);
      scores[j + 3] = scale * hsum(a3);
    }
  }
#endif
  for (; j < n; ++j) {
    const T* k = keys + s[j] * row;
    float acc = 0.f;
    for (int64_t d = 0; d < D; ++d) acc += q[d] * to_float(k[d]);
    scores[j] = scale * acc;
  }
}

// out[0:D) += sum_j p[j] * v_j, accumulating 64 columns at a time in registers
template <typename T>
__attribute__((noinline))
void weighted_values(const float* p, const T* values, const int64_t* s, int64_t row, int64_t n, int64_t D,
                     float* out) {
  int64_t d0 = 0;
#ifdef MRS_AVX2
  for (; d0 + 64 <= D; d0 += 64) {
    __m256 o[8];
    for (int i = 0; i < 8; ++i) o[i] = _mm256_loadu_ps(out + d0 + 8 * i);
    for (int64_t j = 0; j < n; ++j) {
      const __m256 w = _mm256_set1_ps(p[j]);
      const T* v = values + s[j] * row + d0;
      for (int i = 0; i < 8; ++i) o[i] = _mm256_fmadd_ps(w, load8(v + 8 * i), o[i]);
    }
    for (int i = 0; i < 8; ++i) _mm256_storeu_ps(out + d0 + 8 * i, o[i]);
  }
#endif
  for (int64_t d = d0; d < D; ++d) {
    float acc = out[d];
    for (int64_t j = 0; j < n; ++j) acc += p[j] * to_float(values[s[j] * row + d]);
    out[d] = acc;
  }
}

// q8_0 rows of the n positions s[j] (`row` in bytes) widened to float32 into out [n, D]: each value a
// float16 scale times an int8, so the widening is exact.
void widen_rows(const Q8* rows, const int64_t* s, int64_t row, int64_t n, int64_t D, float* out) {
  for (int64_t j = 0; j < n; ++j, out += D) {
    const Q8* r = rows + s[j] * row;
    for (int64_t d = 0; d < D; d += kQ8Block, r += kQ8Bytes) {
      const float scale = q8_scale(r);
      const int8_t* x = q8_values(r);
#ifdef MRS_AVX2
      const __m256 sv = _mm256_set1_ps(scale);
      for (int i = 0; i < 4; ++i) _mm256_storeu_ps(out + d + 8 * i, _mm256_mul_ps(sv, load8(x + 8 * i)));
#else
      for (int64_t i = 0; i < kQ8Block; ++i) out[d + i] = scale * float(x[i]);
#endif
    }
  }
}

inline float max_of(const float* x, int64_t n) {
  float mx = x[0];
  for (int64_t j = 1; j < n; ++j) mx = std::max(mx, x[j]);
  return mx;
}

// x <- exp(x - m); returns the sum
float exp_sub_sum(float* x, int64_t n, float m) {
  float total = 0.f;
  int64_t j = 0;
#ifdef MRS_AVX2
  __m256 acc = _mm256_setzero_ps();
  const __m256 mv = _mm256_set1_ps(m);
  for (; j + 8 <= n; j += 8) {
    const __m256 e = exp_ps(_mm256_sub_ps(_mm256_loadu_ps(x + j), mv));
    _mm256_storeu_ps(x + j, e);
    acc = _mm256_add_ps(acc, e);
  }
  total = hsum(acc);
#endif
  for (; j < n; ++j) total += (x[j] = std::exp(x[j] - m));
  return total;
}

// Gemma 2's attention logit soft-capping: x <- cap * tanh(x / cap), tanh(y) = 1 - 2 / (exp(2y) + 1)
// (y clamped to +-15, where float32 tanh is already +-1, so exp stays finite)
void soft_cap(float* x, int64_t n, float cap) {
  const float inv = 1.f / cap;
  int64_t j = 0;
#ifdef MRS_AVX2
  const __m256 iv = _mm256_set1_ps(2.f * inv), cv = _mm256_set1_ps(cap), one = _mm256_set1_ps(1.f),
               two = _mm256_set1_ps(2.f), lo = _mm256_set1_ps(-30.f), hi = _mm256_set1_ps(30.f);
  for (; j + 8 <= n; j += 8) {
    const __m256 y2 = _mm256_min_ps(hi, _mm256_max_ps(lo, _mm256_mul_ps(_mm256_loadu_ps(x + j), iv)));
    const __m256 t = _mm256_sub_ps(one, _mm256_div_ps(two, _mm256_add_ps(exp_ps(y2), one)));
    _mm256_storeu_ps(x + j, _mm256_mul_ps(cv, t));
  }
#endif
  for (; j < n; ++j) x[j] = cap * std::tanh(x[j] * inv);
}

// Per head of a group: the scores' max m and sum of exp(score - m) l, the scores soft-capped first
// when `softcap` > 0.
void softmax_stats(float* scores, int64_t rep, int64_t n, float softcap, float* m, float* l) {
  for (int64_t h = 0; h < rep; ++h) {
    if (softcap > 0.f) soft_cap(scores + h * n, n, softcap);
    m[h] = max_of(scores + h * n, n);
    l[h] = exp_sub_sum(scores + h * n, n, m[h]);
  }
}

// Zero a chunk's output; true (with m = -inf, l = 0: no weight in the merge) when it has no positions.
bool start_chunk(int64_t n, int64_t rep, int64_t Dv, float* m, float* l, float* o) {
  std::fill(o, o + rep * Dv, 0.f);
  if (n > 0) return false;
  std::fill(m, m + rep, -INFINITY);
  std::fill(l, l + rep, 0.f);
  return true;
}

// One GQA group's `rep` query heads against positions [p0, p1) of one sequence: each key and value
// row is read once for all of the group's heads. Leaves per head the chunk's max score m, the sum
// of exp(score - m) l, and the unnormalized output o = sum_j exp(score_j - m) v_j.
template <typename T>
void group_chunk(const float* q, int64_t q_head_stride, int64_t rep, const T* keys, const T* values,
                 const int64_t* s, int64_t krow, int64_t vrow, int64_t p0, int64_t p1, int64_t D, int64_t Dv, float scale,
                 float softcap, float* scores, float* m, float* l, float* o) {
  const int64_t n = p1 - p0;
  if (start_chunk(n, rep, Dv, m, l, o)) return;
  // positions in blocks of 64: a block's key (value) rows stay in L1 while every head of the group reads them
  for (int64_t b0 = 0; b0 < n; b0 += 64)
    for (int64_t h = 0; h < rep; ++h)
      key_scores(q + h * q_head_stride, keys, s + p0 + b0, krow, std::min<int64_t>(64, n - b0), D, scale, scores + h * n + b0);
  softmax_stats(scores, rep, n, softcap, m, l);
  for (int64_t b0 = 0; b0 < n; b0 += 64)
    for (int64_t h = 0; h < rep; ++h)
      weighted_values(scores + h * n + b0, values, s + p0 + b0, vrow, std::min<int64_t>(64, n - b0), Dv, o + h * Dv);
}

// The same over q8_0 rows: the key (value) rows of each run of positions are widened once into a
// float32 tile of about 16 KiB (stays in L1) that all the group's heads then read as a float32 cache,
// instead of each head converting the int8 values again (GQA groups share rows: 3 heads in SmolLM2, 4
// in Gemma 3). Measured on SmolLM2 and Gemma 3 shapes at 2,000 positions, one thread: converting per
// head took 1.1-1.2x the shared tile's time; the tile path takes 1.05-1.15x the float16 kernel's.
void group_chunk(const float* q, int64_t q_head_stride, int64_t rep, const Q8* keys, const Q8* values,
                 const int64_t* s, int64_t krow, int64_t vrow, int64_t p0, int64_t p1, int64_t D, int64_t Dv, float scale,
                 float softcap, float* scores, float* m, float* l, float* o) {
  const int64_t n = p1 - p0;
  if (start_chunk(n, rep, Dv, m, l, o)) return;
  static const std::vector<int64_t> rows = [] {
    std::vector<int64_t> r(64);
    for (int64_t i = 0; i < 64; ++i) r[i] = i;
    return r;
  }();
  const int64_t run = std::max<int64_t>(8, std::min<int64_t>(64, 4096 / std::max(D, Dv)) & ~int64_t(7));
  thread_local std::vector<float> tile;
  tile.resize(run * std::max(D, Dv));
  for (int64_t b0 = 0; b0 < n; b0 += run) {
    const int64_t nb = std::min<int64_t>(run, n - b0);
    widen_rows(keys, s + p0 + b0, krow, nb, D, tile.data());
    for (int64_t h = 0; h < rep; ++h)
      key_scores(q + h * q_head_stride, tile.data(), rows.data(), D, nb, D, scale, scores + h * n + b0);
  }
  softmax_stats(scores, rep, n, softcap, m, l);
  for (int64_t b0 = 0; b0 < n; b0 += run) {
    const int64_t nb = std::min<int64_t>(run, n - b0);
    widen_rows(values, s + p0 + b0, vrow, nb, Dv, tile.data());
    for (int64_t h = 0; h < rep; ++h)
      weighted_values(scores + h * n + b0, tile.data(), rows.data(), Dv, nb, Dv, o + h * Dv);
  }
}

}  // namespace

// q: float32 [B, Hq, D] (rows may be strided); caches: float32, float16 or bfloat16 [S, Hkv, D], or
// q8_0 blocks (uint8 [S, Hkv, D / 32 * 34]), contiguous;
// slots: int64 [B, L] cache slots of positions 0..lens[b]-1 (padding beyond); window: attend to the
// last `window` positions only (0 = all); softcap > 0: scores -> softcap * tanh(scores / softcap) before
// the softmax (Gemma 2). Returns [B, Hq, Dv].
// Tasks are (sequence, KV head, chunk of positions), so both threads stay busy however few KV heads
// a model has; the chunks' partial softmax sums are merged per head at the end (flash-decoding).
torch::Tensor decode_attention(torch::Tensor q, torch::Tensor k_cache, torch::Tensor v_cache, torch::Tensor slots,
                               torch::Tensor lens, double scale, int64_t window, double softcap) {
  TORCH_CHECK(q.dim() == 3 && q.scalar_type() == torch::kFloat32 && q.stride(2) == 1, "decode_attention: q [B, H, D] float32");
  TORCH_CHECK(k_cache.is_contiguous() && v_cache.is_contiguous() && k_cache.scalar_type() == v_cache.scalar_type() &&
              (k_cache.scalar_type() == torch::kFloat32 || k_cache.scalar_type() == torch::kHalf ||
               k_cache.scalar_type() == torch::kBFloat16 || k_cache.scalar_type() == torch::kByte),
              "decode_attention: caches must be contiguous float32, float16, bfloat16 or q8_0 (uint8) (both the same)");
  TORCH_CHECK(slots.scalar_type() == torch::kLong && lens.scalar_type() == torch::kLong, "decode_attention: int64 slots/lens");
  const bool q8 = k_cache.scalar_type() == torch::kByte;  // rows of q8_0 blocks: sizes in bytes
  const int64_t B = q.size(0), Hq = q.size(1), D = q.size(2), Hkv = k_cache.size(1),
                Dv = q8 ? v_cache.size(2) / kQ8Bytes * kQ8Block : v_cache.size(2);
  TORCH_CHECK((q8 ? D % kQ8Block == 0 && k_cache.size(2) == D / kQ8Block * kQ8Bytes && Dv % kQ8Block == 0 &&
                        v_cache.size(2) == Dv / kQ8Block * kQ8Bytes
                  : k_cache.size(2) == D) && Hq % Hkv == 0,
              "decode_attention: head shapes disagree");
  slots = slots.contiguous();
  lens = lens.contiguous();
  const int64_t L = slots.size(1), rep = Hq / Hkv;
  const int64_t *sp = slots.data_ptr<int64_t>(), *lp = lens.data_ptr<int64_t>();
  int64_t longest = 1;
  for (int64_t b = 0; b < B; ++b) longest = std::max(longest, lp[b]);
  // enough tasks to share among the threads, chunks no shorter than 64 positions
  const int64_t want = (4 * at::get_num_threads() + B * Hkv - 1) / (B * Hkv);
  const int64_t chunks = std::max<int64_t>(1, std::min(want, (longest + 63) / 64));
  const int64_t tasks = B * Hkv * chunks;
  std::vector<float> part_o(tasks * rep * Dv), part_ml(tasks * 2 * rep);
  const float* qp = q.data_ptr<float>();
  const int64_t qs0 = q.stride(0), qs1 = q.stride(1);
  auto run = [&](auto* kp, auto* vp) {
    // a head row's cache elements: q8_0 rows count bytes (a compile-time choice: the float paths'
    // code stays as it was before q8_0)
    constexpr bool blocks = std::is_same_v<std::remove_cv_t<std::remove_pointer_t<decltype(kp)>>, Q8>;
    const int64_t kh = blocks ? D / kQ8Block * kQ8Bytes : D, vh = blocks ? Dv / kQ8Block * kQ8Bytes : Dv;
    const int64_t krow = Hkv * kh, vrow = Hkv * vh;
    at::parallel_for(0, tasks, 1, [&](int64_t begin, int64_t end) {
      std::vector<float> scores(rep * ((longest + chunks - 1) / chunks));
      for (int64_t task = begin; task < end; ++task) {
        const int64_t b = task / (Hkv * chunks), g = (task / chunks) % Hkv, c = task % chunks, len = lp[b];
        const int64_t first = window > 0 ? std::max<int64_t>(0, len - window) : 0, n = len - first;
        const int64_t step = (n + chunks - 1) / chunks;
        const int64_t p0 = first + std::min(n, c * step), p1 = first + std::min(n, (c + 1) * step);
        float* ml = part_ml.data() + task * 2 * rep;
        group_chunk(qp + b * qs0 + g * rep * qs1, qs1, rep, kp + g * kh, vp + g * vh, sp + b * L, krow, vrow, p0, p1, D,
                    Dv, float(scale), float(softcap), scores.data(), ml, ml + rep, part_o.data() + task * rep * Dv);
      }
    });
  };
  if (k_cache.scalar_type() == torch::kFloat32)
    run(k_cache.data_ptr<float>(), v_cache.data_ptr<float>());
  else if (q8)
    run(static_cast<const Q8*>(k_cache.data_ptr()), static_cast<const Q8*>(v_cache.data_ptr()));
  else if (k_cache.scalar_type() == torch::kHalf)
    run(static_cast<const F16*>(k_cache.data_ptr()), static_cast<const F16*>(v_cache.data_ptr()));
  else
    run(static_cast<const BF16*>(k_cache.data_ptr()), static_cast<const BF16*>(v_cache.data_ptr()));
  auto out = torch::zeros({B, Hq, Dv}, q.options());
  float* op = out.data_ptr<float>();
  for (int64_t b = 0; b < B; ++b)
    for (int64_t g = 0; g < Hkv; ++g)
      for (int64_t h = 0; h < rep; ++h) {
        const int64_t base = (b * Hkv + g) * chunks;
        float mx = -INFINITY;
        for (int64_t c = 0; c < chunks; ++c) mx = std::max(mx, part_ml[(base + c) * 2 * rep + h]);
        if (mx == -INFINITY) continue;  // no positions
        float total = 0.f;
        float* o = op + (b * Hq + g * rep + h) * Dv;
        for (int64_t c = 0; c < chunks; ++c) {
          const float* ml = part_ml.data() + (base + c) * 2 * rep;
          if (ml[h] == -INFINITY) continue;
          const float w = std::exp(ml[h] - mx);
          total += w * ml[rep + h];
          const float* oc = part_o.data() + ((base + c) * rep + h) * Dv;
          for (int64_t d = 0; d < Dv; ++d) o[d] += w * oc[d];
        }
        const float inv = 1.f / total;
        for (int64_t d = 0; d < Dv; ++d) o[d] *= inv;
      }
  return out;
}

// q8_0 caches (uint8 [S, H, D / 32 * 34]): each head row quantized into its slot
void kv_write_q8(torch::Tensor cache, const torch::Tensor& slots, torch::Tensor x) {
  if (x.scalar_type() != torch::kFloat32) x = x.to(torch::kFloat32);
  TORCH_CHECK(x.dim() == 3 && x.stride(2) == 1 && cache.dim() == 3, "kv_write: k, v must be [T, H, D] with contiguous rows");
  const int64_t T = x.size(0), H = x.size(1), D = x.size(2);
  TORCH_CHECK(D % kQ8Block == 0 && cache.size(1) == H && cache.size(2) == D / kQ8Block * kQ8Bytes,
              "kv_write: q8_0 cache rows must be [H, D / 32 * 34] for [T, H, D]");
  const int64_t* sp = slots.data_ptr<int64_t>();
  const float* xp = x.data_ptr<float>();
  Q8* cp = static_cast<Q8*>(cache.data_ptr());
  const int64_t hb = cache.size(2);
  for (int64_t t = 0; t < T; ++t)
    for (int64_t h = 0; h < H; ++h)
      quantize_row_q8(xp + t * x.stride(0) + h * x.stride(1), D, cp + (sp[t] * H + h) * hb);
}

// Write the step's keys and values (rows may be strided views of a fused projection) into their slots,
// rounded to the cache's dtype (round to nearest even) when it is narrower, or quantized to q8_0.
void kv_write(torch::Tensor k_cache, torch::Tensor v_cache, torch::Tensor slots, torch::Tensor k, torch::Tensor v) {
  TORCH_CHECK(k_cache.is_contiguous() && v_cache.is_contiguous(), "kv_write: caches must be contiguous");
  if (k_cache.scalar_type() == torch::kByte || v_cache.scalar_type() == torch::kByte) {
    TORCH_CHECK(k_cache.scalar_type() == v_cache.scalar_type(), "kv_write: a q8_0 key cache needs a q8_0 value cache");
    slots = slots.contiguous();
    kv_write_q8(k_cache, slots, k);
    kv_write_q8(v_cache, slots, v);
    return;
  }
  if (k.scalar_type() != k_cache.scalar_type()) k = k.to(k_cache.scalar_type());
  if (v.scalar_type() != v_cache.scalar_type()) v = v.to(v_cache.scalar_type());
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
  m.def("decode_attention(Tensor q, Tensor k_cache, Tensor v_cache, Tensor slots, Tensor lens, float scale, int window, float softcap=0.0) -> Tensor");
  m.def("kv_write(Tensor(a!) k_cache, Tensor(b!) v_cache, Tensor slots, Tensor k, Tensor v) -> ()");
}

TORCH_LIBRARY_IMPL(mistralrs_kernels, CPU, m) {
  m.impl("decode_attention", &decode_attention);
  m.impl("kv_write", &kv_write);
}

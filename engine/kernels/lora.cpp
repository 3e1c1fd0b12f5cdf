// LoRA terms for the few rows of a decode step (float32 activations; float32 or bfloat16 factors):
//     down = (x[T, K] @ at[K, R]) * scales          (scales per rank column: X-LoRA's per-token mix)
//     out[:, c_b : c_b + N_b] += down[:, r_b : r_b + R_b] @ bt_b[R_b, N_b]   for each block b
// Layers sharing an input (q/k/v, gate/up) stack their A's and keep one B block each, written into
// their own columns of the concatenated output. In torch this is four or more small ops, each
// paying dispatch and thread start-up on a [1, 24]-sized problem; here it is one call. The rank-R
// projection and the up-projection are both split across threads, in one parallel region.

#include <torch/extension.h>
#include <ATen/Parallel.h>

#include <omp.h>

#include <algorithm>
#include <vector>

#include "ops.h"

namespace {

inline float widen(float v) { return v; }
inline float widen(c10::BFloat16 v) { return float(v); }

template <typename W>  // the factors' element type: float, or bfloat16 (half the bytes to stream)
void low_rank_add_impl(torch::Tensor& out, const torch::Tensor& x, const torch::Tensor& at,
                       const std::vector<torch::Tensor>& bts, const std::vector<int64_t>& rank_starts,
                       const std::vector<int64_t>& col_starts, const c10::optional<torch::Tensor>& scales) {
  const int64_t T = x.size(0), K = x.size(1), R = at.size(1), N = out.size(1);
  TORCH_CHECK(at.size(0) == K && out.size(0) == T && bts.size() == rank_starts.size() && bts.size() == col_starts.size(),
              "lora_add_: shapes out ", out.sizes(), " x ", x.sizes(), " at ", at.sizes());
  std::vector<int64_t> first(bts.size() + 1, 0);  // blocks' columns, laid end to end
  for (size_t b = 0; b < bts.size(); ++b) {
    const torch::Tensor& bt = bts[b];
    TORCH_CHECK(bt.scalar_type() == at.scalar_type() && bt.is_contiguous() && bt.dim() == 2 && rank_starts[b] >= 0 &&
                    rank_starts[b] + bt.size(0) <= R && col_starts[b] >= 0 && col_starts[b] + bt.size(1) <= N,
                "lora_add_: block ", b, " ", bt.sizes(), " at rank ", rank_starts[b], ", column ", col_starts[b],
                " does not fit rank ", R, " and ", N, " columns");
    first[b + 1] = first[b] + bt.size(1);
  }
  const float* sp = nullptr;
  int64_t s0 = 0, s1 = 0;
  if (scales.has_value()) {  // [1 or T, R], any strides (views of the mixer's scalings)
    const torch::Tensor& s = *scales;
    TORCH_CHECK(s.scalar_type() == torch::kFloat32 && s.dim() == 2 && s.size(1) == R && (s.size(0) == 1 || s.size(0) == T),
                "lora_add_: scales must be float32 [1 or T, R]");
    sp = s.data_ptr<float>();
    s0 = s.size(0) == 1 ? 0 : s.stride(0);
    s1 = s.stride(1);
  }
  const float* xp = x.data_ptr<float>();
  const W* ap = at.data_ptr<W>();
  float* op = out.data_ptr<float>();
  // One parallel region: each thread takes a slice of K for the rank-R projection (partial sums,
  // added up once all are done), then a slice of the output columns. The factors are read once per
  // step from memory, so both threads must stream them.
  const int64_t columns = first.back();
  const int threads = int(std::max<int64_t>(1, std::min<int64_t>(at::get_num_threads(), (K * R + columns * R) / 16384)));
  std::vector<float> partial(threads * T * R, 0.f), down(T * R);
#pragma omp parallel num_threads(threads)
  {
    const int id = omp_get_thread_num(), n = omp_get_num_threads();
    float* mine = partial.data() + id * T * R;
    for (int64_t k = K * id / n; k < K * (id + 1) / n; ++k) {
      const W* a = ap + k * R;
      for (int64_t t = 0; t < T; ++t) {
        const float xv = xp[t * K + k];
        float* d = mine + t * R;
        for (int64_t r = 0; r < R; ++r) d[r] += xv * widen(a[r]);
      }
    }
#pragma omp barrier
#pragma omp single
    for (int64_t t = 0; t < T; ++t)
      for (int64_t r = 0; r < R; ++r) {
        float total = 0.f;
        for (int i = 0; i < n; ++i) total += partial[i * T * R + t * R + r];
        down[t * R + r] = sp ? total * sp[t * s0 + r * s1] : total;
      }
    const int64_t j0 = columns * id / n, j1 = columns * (id + 1) / n;
    for (size_t b = 0; b < bts.size(); ++b) {
      const int64_t lo = std::max(j0, first[b]) - first[b], hi = std::min(j1, first[b + 1]) - first[b];
      if (lo >= hi) continue;
      const int64_t cols = bts[b].size(1), rank = bts[b].size(0);
      const W* bp = bts[b].data_ptr<W>();
      for (int64_t t = 0; t < T; ++t) {
        float* o = op + t * N + col_starts[b];
        const float* d = down.data() + t * R + rank_starts[b];
        for (int64_t r = 0; r < rank; ++r) {
          const float dv = d[r];
          const W* row = bp + r * cols;
          for (int64_t j = lo; j < hi; ++j) o[j] += dv * widen(row[j]);
        }
      }
    }
  }
}

}  // namespace

void low_rank_add(torch::Tensor& out, const torch::Tensor& x, const torch::Tensor& at, const std::vector<torch::Tensor>& bts,
                  const std::vector<int64_t>& rank_starts, const std::vector<int64_t>& col_starts,
                  const c10::optional<torch::Tensor>& scales) {
  if (at.scalar_type() == torch::kBFloat16)
    low_rank_add_impl<c10::BFloat16>(out, x, at, bts, rank_starts, col_starts, scales);
  else
    low_rank_add_impl<float>(out, x, at, bts, rank_starts, col_starts, scales);
}

void lora_add_(torch::Tensor out, torch::Tensor x, torch::Tensor at, std::vector<torch::Tensor> bts,
               std::vector<int64_t> rank_starts, std::vector<int64_t> col_starts, c10::optional<torch::Tensor> scales) {
  for (const auto* t : {&out, &x, &at})
    TORCH_CHECK(t->device().is_cpu() && t->dim() == 2, "lora_add_: 2-D CPU tensors only");
  TORCH_CHECK(out.scalar_type() == torch::kFloat32 && x.scalar_type() == torch::kFloat32 &&
                  (at.scalar_type() == torch::kFloat32 || at.scalar_type() == torch::kBFloat16),
              "lora_add_: float32 activations, float32 or bfloat16 factors");
  TORCH_CHECK(out.is_contiguous() && x.is_contiguous() && at.is_contiguous(), "lora_add_: contiguous tensors only");
  low_rank_add(out, x, at, bts, rank_starts, col_starts, scales);
}

TORCH_LIBRARY_FRAGMENT(mistralrs_kernels, m) {
  m.def("lora_add_(Tensor(a!) out, Tensor x, Tensor at, Tensor[] bts, int[] rank_starts, int[] col_starts, Tensor? scales) -> ()");
}

TORCH_LIBRARY_IMPL(mistralrs_kernels, CPU, m) { m.impl("lora_add_", &lora_add_); }

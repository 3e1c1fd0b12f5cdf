// out[T, N] += ((x[T, K] @ at[K, R]) * scales) @ bt[R, N], float32, for the few rows of a decode step.
// A LoRA term in torch is four small ops (two matmuls, a scale, an add), each paying dispatch and
// thread start-up on a [1, 24]-sized problem; here it is one call. The rank-R projection is tiny and
// done once; the up-projection's output columns are split across torch's threads.

#include <torch/extension.h>
#include <ATen/Parallel.h>

#include <vector>

void lora_add_(torch::Tensor out, torch::Tensor x, torch::Tensor at, torch::Tensor bt,
               c10::optional<torch::Tensor> scales) {
  for (const auto* t : {&out, &x, &at, &bt})
    TORCH_CHECK(t->scalar_type() == torch::kFloat32 && t->device().is_cpu() && t->dim() == 2,
                "lora_add_: float32 2-D CPU tensors only");
  TORCH_CHECK(out.is_contiguous() && x.is_contiguous() && at.is_contiguous() && bt.is_contiguous(),
              "lora_add_: contiguous tensors only");
  const int64_t T = x.size(0), K = x.size(1), R = at.size(1), N = bt.size(1);
  TORCH_CHECK(at.size(0) == K && bt.size(0) == R && out.size(0) == T && out.size(1) == N,
              "lora_add_: shapes out ", out.sizes(), " x ", x.sizes(), " at ", at.sizes(), " bt ", bt.sizes());
  const float* xp = x.data_ptr<float>();
  const float* ap = at.data_ptr<float>();
  std::vector<float> down(T * R, 0.f);
  for (int64_t t = 0; t < T; ++t) {
    float* d = down.data() + t * R;
    for (int64_t k = 0; k < K; ++k) {
      const float xv = xp[t * K + k];
      const float* a = ap + k * R;
      for (int64_t r = 0; r < R; ++r) d[r] += xv * a[r];
    }
  }
  if (scales.has_value()) {  // [1 or T, R], any strides (split views of the mixer's scalings)
    const torch::Tensor& s = *scales;
    TORCH_CHECK(s.scalar_type() == torch::kFloat32 && s.dim() == 2 && s.size(1) == R && (s.size(0) == 1 || s.size(0) == T),
                "lora_add_: scales must be float32 [1 or T, R]");
    const float* sp = s.data_ptr<float>();
    const int64_t s0 = s.size(0) == 1 ? 0 : s.stride(0), s1 = s.stride(1);
    for (int64_t t = 0; t < T; ++t)
      for (int64_t r = 0; r < R; ++r) down[t * R + r] *= sp[t * s0 + r * s1];
  }
  float* op = out.data_ptr<float>();
  const float* bp = bt.data_ptr<float>();
  at::parallel_for(0, N, 1024, [&](int64_t n0, int64_t n1) {
    for (int64_t t = 0; t < T; ++t) {
      float* o = op + t * N;
      for (int64_t r = 0; r < R; ++r) {
        const float dv = down[t * R + r];
        const float* b = bp + r * N;
        for (int64_t n = n0; n < n1; ++n) o[n] += dv * b[n];
      }
    }
  });
}

TORCH_LIBRARY_FRAGMENT(mistralrs_kernels, m) {
  m.def("lora_add_(Tensor(a!) out, Tensor x, Tensor at, Tensor bt, Tensor? scales) -> ()");
}

TORCH_LIBRARY_IMPL(mistralrs_kernels, CPU, m) { m.impl("lora_add_", &lora_add_); }

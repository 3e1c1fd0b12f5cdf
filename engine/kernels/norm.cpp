// RMSNorm over the last dimension, float32: y = x / sqrt(mean(x^2) + eps) * scale.
// add_rms_norm_ also folds the residual add in: residual += x, then y = norm(residual).

#include <torch/extension.h>
#include <ATen/Parallel.h>

#include <cmath>

namespace {

void norm_rows(const float* in, float* out, const float* scale, int64_t rows, int64_t n, double eps) {
  for (int64_t r = 0; r < rows; ++r) {
    const float* x = in + r * n;
    float* y = out + r * n;
    float ss = 0.f;
    for (int64_t i = 0; i < n; ++i) ss += x[i] * x[i];
    const float inv = 1.f / std::sqrt(ss / float(n) + float(eps));
    for (int64_t i = 0; i < n; ++i) y[i] = x[i] * inv * scale[i];
  }
}

}  // namespace

torch::Tensor rms_norm(torch::Tensor x, torch::Tensor scale, double eps) {
  TORCH_CHECK(x.scalar_type() == torch::kFloat32 && scale.scalar_type() == torch::kFloat32, "rms_norm: float32 only");
  x = x.contiguous();
  scale = scale.contiguous();
  const int64_t n = x.size(-1), rows = x.numel() / n;
  TORCH_CHECK(scale.numel() == n, "rms_norm: scale has ", scale.numel(), " elements, rows have ", n);
  auto y = torch::empty_like(x);
  norm_rows(x.data_ptr<float>(), y.data_ptr<float>(), scale.data_ptr<float>(), rows, n, eps);
  return y;
}

torch::Tensor add_rms_norm_(torch::Tensor residual, torch::Tensor x, torch::Tensor scale, double eps) {
  TORCH_CHECK(residual.is_contiguous() && residual.scalar_type() == torch::kFloat32, "add_rms_norm_: residual float32");
  x = x.contiguous();
  residual.add_(x);
  return rms_norm(residual, scale, eps);
}

TORCH_LIBRARY_FRAGMENT(mistralrs_kernels, m) {
  m.def("rms_norm(Tensor x, Tensor scale, float eps) -> Tensor");
  m.def("add_rms_norm_(Tensor(a!) residual, Tensor x, Tensor scale, float eps) -> Tensor");
}

TORCH_LIBRARY_IMPL(mistralrs_kernels, CPU, m) {
  m.impl("rms_norm", &rms_norm);
  m.impl("add_rms_norm_", &add_rms_norm_);
}

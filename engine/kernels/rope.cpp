// Rotary embedding in place, rotate-half layout: for i < rot/2 with h = rot/2,
//   x[i]     = x[i] * cos[i]     - x[i+h] * sin[i]
//   x[i + h] = x[i+h] * cos[i+h] + x[i] * sin[i+h]
// on [T, H, D] tensors whose rows may be strided views (q and k of a fused projection).

#include <torch/extension.h>

void rope_(torch::Tensor x, torch::Tensor cos, torch::Tensor sin) {
  TORCH_CHECK(x.dim() == 3 && x.scalar_type() == torch::kFloat32 && x.stride(2) == 1, "rope_: x [T, H, D] float32");
  cos = cos.contiguous();
  sin = sin.contiguous();
  const int64_t T = x.size(0), H = x.size(1), rot = cos.size(-1), half = rot / 2;
  TORCH_CHECK(cos.numel() == T * rot && sin.numel() == T * rot && rot <= x.size(2), "rope_: tables must be [T, rot]");
  float* xp = x.data_ptr<float>();
  const float *cp = cos.data_ptr<float>(), *sp = sin.data_ptr<float>();
  for (int64_t t = 0; t < T; ++t) {
    const float *c = cp + t * rot, *s = sp + t * rot;
    for (int64_t h = 0; h < H; ++h) {
      float* v = xp + t * x.stride(0) + h * x.stride(1);
      for (int64_t i = 0; i < half; ++i) {
        const float a = v[i], b = v[i + half];
        v[i] = a * c[i] - b * s[i];
        v[i + half] = b * c[i + half] + a * s[i + half];
      }
    }
  }
}

TORCH_LIBRARY_FRAGMENT(mistralrs_kernels, m) {
  m.def("rope_(Tensor(a!) x, Tensor cos, Tensor sin) -> ()");
}

TORCH_LIBRARY_IMPL(mistralrs_kernels, CPU, m) {
  m.impl("rope_", &rope_);
}

// The kernels' entry points, for C++ code that composes them (decode_stack.cpp) without a trip
// through the torch dispatcher. Each is also registered as a torch op in its own file.

#pragma once

#include <torch/extension.h>

#include <vector>

torch::Tensor rms_norm(torch::Tensor x, torch::Tensor scale, double eps);
void rope_(torch::Tensor x, torch::Tensor cos, torch::Tensor sin);
void kv_write(torch::Tensor k_cache, torch::Tensor v_cache, torch::Tensor slots, torch::Tensor k, torch::Tensor v);
torch::Tensor decode_attention(torch::Tensor q, torch::Tensor k_cache, torch::Tensor v_cache, torch::Tensor slots,
                               torch::Tensor lens, double scale, int64_t window, double softcap);
torch::Tensor quant_matmul_many(torch::Tensor x, std::vector<torch::Tensor> ws, std::vector<int64_t> qtypes,
                                std::vector<int64_t> ns);
void low_rank_add(torch::Tensor& out, const torch::Tensor& x, const torch::Tensor& at, const std::vector<torch::Tensor>& bts,
                  const std::vector<int64_t>& rank_starts, const std::vector<int64_t>& col_starts,
                  const c10::optional<torch::Tensor>& scales);

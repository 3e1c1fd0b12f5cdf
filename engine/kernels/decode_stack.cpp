// Every decoder layer's decode step in one call: a pre-norm transformer block (optionally with
// Q/K norms and norms after attention and MLP, as Gemma 3 has) composed from the other kernels.
// Decoding one token costs about 15 small ops per layer; from Python each costs several
// microseconds of dispatch, which on a 135M model was as much time as the matrix products.

#include <torch/extension.h>
#include <torch/custom_class.h>

#include <algorithm>
#include <vector>

#include "ops.h"

namespace {

struct LowRank {  // an adapter's term on the projection's output (engine/layers/low_rank.py)
  torch::Tensor at;
  std::vector<torch::Tensor> bts;
  std::vector<int64_t> rank_starts, col_starts;  // col_starts: columns of the projection's whole output
  int64_t offset;  // into the step's column scales; < 0: constant
};

constexpr int64_t kDense = -1;  // a float32 [N, K] weight instead of repacked blocks

struct Projection {
  std::vector<torch::Tensor> weights;  // repacked (quant_layout.h), or dense float32
  std::vector<int64_t> types, rows;
  std::vector<LowRank> loras;
  c10::optional<torch::Tensor> bias;  // float32 over the whole output (Qwen2's q/k/v)

  torch::Tensor operator()(const torch::Tensor& x, const c10::optional<torch::Tensor>& column_scales) const {
    torch::Tensor y;
    if (std::find(types.begin(), types.end(), kDense) == types.end()) {
      y = quant_matmul_many(x, weights, types, rows);
    } else {  // float weights (or a mix, where a quantizer left some float): BLAS per weight
      std::vector<torch::Tensor> parts;
      for (size_t i = 0; i < weights.size(); ++i)
        parts.push_back(types[i] == kDense ? at::mm(x, weights[i].t()) : quant_matmul_many(x, {weights[i]}, {types[i]}, {rows[i]}));
      y = parts.size() == 1 ? parts[0] : at::cat(parts, 1);
    }
    if (bias) y.add_(*bias);
    for (const LowRank& lora : loras) {
      if (lora.offset < 0) {
        low_rank_add(y, x, lora.at, lora.bts, lora.rank_starts, lora.col_starts, c10::nullopt);
      } else if (column_scales) {  // none: this pass adds no term (X-LoRA's scaling pass)
        const c10::optional<torch::Tensor> s = column_scales->narrow(1, lora.offset, lora.at.size(1));
        low_rank_add(y, x, lora.at, lora.bts, lora.rank_starts, lora.col_starts, s);
      }
    }
    return y;
  }
};

struct Experts {  // a sparse mixture in place of the MLP (engine/layers/moe.py)
  Projection router;
  std::vector<Projection> gate_up, down;  // one per expert
  int64_t top_k = 0;
  bool normalize_top_k = true;  // softmax over the chosen logits, else the full softmax at the chosen
};

struct Layer {
  torch::Tensor attn_norm, ffn_norm;  // RMSNorm scales (offset folded in)
  c10::optional<torch::Tensor> q_norm, k_norm, post_attn_norm, post_ffn_norm;
  Projection qkv, o, gate_up, down;
  int64_t heads, kv_heads, head_dim, window, rope, gelu;
  double scale, softcap;  // softcap > 0: attention logits soft-capped (Gemma 2)
  c10::optional<Experts> experts;
};

// act(gate) * up over the concatenated [T, 2I] gate/up output (ATen's vectorized activations)
torch::Tensor gated(const torch::Tensor& gu, bool gelu) {
  const int64_t I = gu.size(1) / 2;
  const torch::Tensor gate = gu.narrow(1, 0, I), up = gu.narrow(1, I, I);
  return (gelu ? at::gelu(gate, "tanh") : at::silu(gate)).mul_(up);
}

// The mixture's output for the normed rows h [T, hidden]: rows grouped by expert, one batched call of
// each chosen expert's projections, weighted and summed back per row.
torch::Tensor mixture(const Experts& E, const torch::Tensor& h, bool gelu) {
  const torch::Tensor logits = E.router(h, c10::nullopt).to(torch::kFloat32);
  torch::Tensor weights, chosen;
  if (E.normalize_top_k) {
    std::tie(weights, chosen) = logits.topk(E.top_k, -1);
    weights = weights.softmax(-1);
  } else {
    std::tie(weights, chosen) = logits.softmax(-1).topk(E.top_k, -1);
  }
  const int64_t T = h.size(0), n = static_cast<int64_t>(E.gate_up.size());
  std::vector<std::vector<int64_t>> rows(n);
  std::vector<std::vector<float>> row_weights(n);
  const auto c = chosen.accessor<int64_t, 2>();
  const auto w = weights.accessor<float, 2>();
  for (int64_t t = 0; t < T; ++t)
    for (int64_t j = 0; j < E.top_k; ++j) {
      rows[c[t][j]].push_back(t);
      row_weights[c[t][j]].push_back(w[t][j]);
    }
  torch::Tensor out = torch::zeros_like(h);
  for (int64_t e = 0; e < n; ++e) {
    if (rows[e].empty()) continue;
    const int64_t m = static_cast<int64_t>(rows[e].size());
    const torch::Tensor index = torch::from_blob(rows[e].data(), {m}, torch::kInt64).clone();
    const torch::Tensor scale = torch::from_blob(row_weights[e].data(), {m, 1}, torch::kFloat32).to(h.scalar_type());
    const torch::Tensor xs = h.index_select(0, index);
    out.index_add_(0, index, E.down[e](gated(E.gate_up[e](xs, c10::nullopt), gelu), c10::nullopt).mul_(scale));
  }
  return out;
}

}  // namespace

struct DecodeStack : torch::CustomClassHolder {
  std::vector<Layer> layers;
  double eps = 1e-6;

  void set_eps(double e) { eps = e; }

  void add_layer(torch::Tensor attn_norm, torch::Tensor ffn_norm, c10::optional<torch::Tensor> q_norm,
                 c10::optional<torch::Tensor> k_norm, c10::optional<torch::Tensor> post_attn_norm,
                 c10::optional<torch::Tensor> post_ffn_norm, std::vector<torch::Tensor> qkv, std::vector<int64_t> qkv_types,
                 std::vector<int64_t> qkv_rows, torch::Tensor o, int64_t o_type, int64_t o_rows,
                 std::vector<torch::Tensor> gate_up, std::vector<int64_t> gate_up_types, std::vector<int64_t> gate_up_rows,
                 torch::Tensor down, int64_t down_type, int64_t down_rows, int64_t heads, int64_t kv_heads, int64_t head_dim,
                 double scale, int64_t window, int64_t rope, int64_t gelu, double softcap) {
    // a mixture-of-experts layer gives no gate/up (set_experts and add_expert follow)
    TORCH_CHECK(qkv.size() == 3 && (gate_up.size() == 2 || gate_up.empty()),
                "DecodeStack: q/k/v and gate/up projections expected");
    layers.push_back(Layer{attn_norm, ffn_norm, q_norm, k_norm, post_attn_norm, post_ffn_norm,
                           Projection{qkv, qkv_types, qkv_rows, {}}, Projection{{o}, {o_type}, {o_rows}, {}},
                           Projection{gate_up, gate_up_types, gate_up_rows, {}},
                           Projection{{down}, {down_type}, {down_rows}, {}},
                           heads, kv_heads, head_dim, window, rope, gelu, scale, softcap});
  }

  // A low-rank term on projection `which` (0 q/k/v, 1 o, 2 gate/up, 3 down) of the last layer added
  // (several add up: the members of a group over float weights each bring their own).
  void set_lora(int64_t which, torch::Tensor at, std::vector<torch::Tensor> bts, std::vector<int64_t> rank_starts,
                std::vector<int64_t> col_starts, int64_t offset) {
    TORCH_CHECK(!layers.empty() && which >= 0 && which < 4, "DecodeStack.set_lora: no such projection");
    TORCH_CHECK((at.scalar_type() == torch::kFloat32 || at.scalar_type() == torch::kBFloat16) && at.is_contiguous() &&
                    at.dim() == 2,
                "DecodeStack.set_lora: at must be a contiguous float32 or bfloat16 matrix");
    Layer& L = layers.back();
    Projection* p[] = {&L.qkv, &L.o, &L.gate_up, &L.down};
    p[which]->loras.push_back(LowRank{at, bts, rank_starts, col_starts, offset});
  }

  // The last layer added computes a sparse mixture instead of its MLP: the router (one projection
  // over the normed hidden state, as many outputs as experts); add_expert then brings each expert.
  void set_experts(torch::Tensor router, int64_t router_type, int64_t router_rows, int64_t top_k, bool normalize_top_k) {
    TORCH_CHECK(!layers.empty() && top_k >= 1 && top_k <= router_rows, "DecodeStack.set_experts: bad top_k ", top_k);
    layers.back().experts = Experts{Projection{{router}, {router_type}, {router_rows}, {}}, {}, {}, top_k, normalize_top_k};
  }

  void add_expert(std::vector<torch::Tensor> gate_up, std::vector<int64_t> gate_up_types,
                  std::vector<int64_t> gate_up_rows, torch::Tensor down, int64_t down_type, int64_t down_rows) {
    TORCH_CHECK(!layers.empty() && layers.back().experts && gate_up.size() == 2,
                "DecodeStack.add_expert: set_experts first; gate/up projections expected");
    Experts& E = *layers.back().experts;
    TORCH_CHECK(static_cast<int64_t>(E.gate_up.size()) < E.router.rows[0], "DecodeStack.add_expert: more experts than the router has");
    E.gate_up.push_back(Projection{gate_up, gate_up_types, gate_up_rows, {}});
    E.down.push_back(Projection{{down}, {down_type}, {down_rows}, {}});
  }

  // A bias on projection `which` (numbered as for set_lora) of the last layer added: float32 [outputs].
  void set_bias(int64_t which, torch::Tensor bias) {
    TORCH_CHECK(!layers.empty() && which >= 0 && which < 4, "DecodeStack.set_bias: no such projection");
    TORCH_CHECK(bias.scalar_type() == torch::kFloat32 && bias.dim() == 1 && bias.is_contiguous(),
                "DecodeStack.set_bias: bias must be a contiguous float32 vector");
    Layer& L = layers.back();
    Projection* p[] = {&L.qkv, &L.o, &L.gate_up, &L.down};
    int64_t outputs = 0;
    for (int64_t r : p[which]->rows) outputs += r;
    TORCH_CHECK(bias.size(0) == outputs, "DecodeStack.set_bias: ", bias.size(0), " biases for ", outputs, " outputs");
    p[which]->bias = bias;
  }

  // x: [T, hidden] float32 (one token per sequence); cos/sin: the step's RoPE tables [T, 1, rot],
  // one pair per rope index; k/v: the caches [layers, slots, kv_heads, head_dim]. Returns x after
  // the last layer (before the final norm). column_scales: the low-rank terms' [T or 1, C] scales this
  // pass (None: terms that need them add nothing).
  torch::Tensor step(torch::Tensor x, std::vector<torch::Tensor> cos, std::vector<torch::Tensor> sin, torch::Tensor k_cache,
                     torch::Tensor v_cache, torch::Tensor slot_mapping, torch::Tensor slots, torch::Tensor lens,
                     c10::optional<torch::Tensor> column_scales) {
    TORCH_CHECK(x.dim() == 2 && x.scalar_type() == torch::kFloat32, "DecodeStack: x must be float32 [T, hidden]");
    x = x.contiguous().clone();
    const int64_t T = x.size(0);
    for (size_t i = 0; i < layers.size(); ++i) {
      const Layer& L = layers[i];
      const int64_t q_width = L.heads * L.head_dim, kv_width = L.kv_heads * L.head_dim;
      const torch::Tensor qkv = L.qkv(rms_norm(x, L.attn_norm, eps), column_scales);
      torch::Tensor q = qkv.narrow(1, 0, q_width).view({T, L.heads, L.head_dim});
      torch::Tensor k = qkv.narrow(1, q_width, kv_width).view({T, L.kv_heads, L.head_dim});
      const torch::Tensor v = qkv.narrow(1, q_width + kv_width, kv_width).view({T, L.kv_heads, L.head_dim});
      if (L.q_norm) q = rms_norm(q, *L.q_norm, eps);
      if (L.k_norm) k = rms_norm(k, *L.k_norm, eps);
      rope_(q, cos[L.rope], sin[L.rope]);
      rope_(k, cos[L.rope], sin[L.rope]);
      const torch::Tensor kc = k_cache.select(0, int64_t(i)), vc = v_cache.select(0, int64_t(i));
      kv_write(kc, vc, slot_mapping, k, v);
      const torch::Tensor attn = decode_attention(q, kc, vc, slots, lens, L.scale, L.window, L.softcap);
      torch::Tensor out = L.o(attn.view({T, q_width}), column_scales);
      if (L.post_attn_norm) out = rms_norm(out, *L.post_attn_norm, eps);
      x.add_(out);
      const torch::Tensor h = rms_norm(x, L.ffn_norm, eps);
      if (L.experts) {
        TORCH_CHECK(static_cast<int64_t>(L.experts->gate_up.size()) == L.experts->router.rows[0],
                    "DecodeStack: a mixture layer lacks experts");
        out = mixture(*L.experts, h, L.gelu != 0);
      } else {
        out = L.down(gated(L.gate_up(h, column_scales), L.gelu != 0), column_scales);
      }
      if (L.post_ffn_norm) out = rms_norm(out, *L.post_ffn_norm, eps);
      x.add_(out);
    }
    return x;
  }
};

TORCH_LIBRARY_FRAGMENT(mistralrs_kernels, m) {
  m.class_<DecodeStack>("DecodeStack")
      .def(torch::init<>())
      .def("set_eps", &DecodeStack::set_eps)
      .def("add_layer", &DecodeStack::add_layer)
      .def("set_lora", &DecodeStack::set_lora)
      .def("set_bias", &DecodeStack::set_bias)
      .def("set_experts", &DecodeStack::set_experts)
      .def("add_expert", &DecodeStack::add_expert)
      .def("step", &DecodeStack::step);
}

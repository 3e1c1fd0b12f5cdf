// GGUF blocks -> the repacked layout (quant_layout.h), once at load; and rows of it back to floats
// for embedding lookups (the token embeddings often share the output head's storage).

#include <torch/extension.h>
#include <ATen/Parallel.h>

#include <algorithm>

#include "quant_layout.h"

namespace {

using namespace mrs;

void check_raw(const torch::Tensor& raw, const Layout& L, int64_t n, int64_t k) {
  TORCH_CHECK(raw.scalar_type() == torch::kUInt8 && raw.is_contiguous(), "quant_repack: blocks must be contiguous uint8");
  TORCH_CHECK(k % L.block == 0, "quant_repack: K=", k, " is not a multiple of the block size ", L.block);
  TORCH_CHECK(raw.numel() == n * (k / L.block) * L.block_bytes, "quant_repack: ", raw.numel(), " bytes, expected ",
              n * (k / L.block) * L.block_bytes);
}

// Write one row's group into the packed group (codes and planes) at `lane`.
void put_codes(const Layout& L, uint8_t* group, int lane, const uint8_t* c) {
  uint8_t* codes = group + L.group_header;
  uint8_t* planes = codes + L.code_bytes();
  for (int j = 0; j < 32; ++j) {
    const int chunk = j / 4, byte = 4 * lane + j % 4;
    int rest = c[j];
    if (L.codes == Codes::Bytes) {
      codes[64 * chunk + byte] = c[j];
      continue;
    }
    if (L.codes == Codes::Nibbles) {
      codes[64 * (chunk % 4) + byte] |= uint8_t((rest & 15) << (chunk < 4 ? 0 : 4));
      rest >>= 4;
    }
    const int mask = 2 * (chunk % 4) + (chunk >= 4);
    for (int p = 0; p < L.planes; ++p) {
      if ((rest >> p) & 1) {
        uint64_t bits;
        std::memcpy(&bits, planes + 64 * p + 8 * mask, 8);
        bits |= uint64_t(1) << byte;
        std::memcpy(planes + 64 * p + 8 * mask, &bits, 8);
      }
    }
  }
}

// raw: the GGUF blocks of an [N, K] weight; out: packed_bytes(N, K) zero bytes, which receive the
// packed layout (16-row blocks, each independent of the others).
void repack_into(const torch::Tensor& raw, int64_t qtype, int64_t n, int64_t k, torch::Tensor& out) {
  const Layout L = layout(qtype);
  check_raw(raw, L, n, k);
  TORCH_CHECK(out.scalar_type() == torch::kUInt8 && out.is_contiguous() && out.numel() == packed_bytes(L, n, k),
              "quant_repack_into: out must be ", packed_bytes(L, n, k), " contiguous uint8 bytes");
  const uint8_t* src = raw.data_ptr<uint8_t>();
  uint8_t* dst = out.data_ptr<uint8_t>();
  const int64_t row_bytes = k / L.block * L.block_bytes, groups = k / kGroup, per_block = L.block / kGroup;
  const int64_t block_bytes = (groups / L.unit_groups) * L.unit_bytes();
  at::parallel_for(0, row_blocks(n), 1, [&](int64_t b0, int64_t b1) {
    for (int64_t rb = b0; rb < b1; ++rb) {
      const Cursor cur{L, dst + rb * block_bytes};
      for (int lane = 0; lane < kRows && rb * kRows + lane < n; ++lane) {
        const uint8_t* row = src + (rb * kRows + lane) * row_bytes;
        for (int64_t g = 0; g < groups; ++g) {
          const RawGroup r = read_group(qtype, row + (g / per_block) * L.block_bytes, int(g % per_block));
          uint8_t* unit = const_cast<uint8_t*>(cur.unit(g));
          uint8_t* group = const_cast<uint8_t*>(cur.group(g));
          std::memcpy(unit + 2 * lane, &r.h0, 2);
          if (L.unit_header > 32) std::memcpy(unit + 32 + 2 * lane, &r.h1, 2);
          if (L.group_header) {
            group[lane] = r.sub[0];
            group[16 + lane] = r.sub[1];
          }
          put_codes(L, group, lane, r.c);
        }
      }
    }
  });
}

}  // namespace

torch::Tensor quant_repack(torch::Tensor raw, int64_t qtype, int64_t n, int64_t k) {
  auto out = torch::zeros({packed_bytes(layout(qtype), n, k)}, torch::kUInt8);
  repack_into(raw, qtype, n, k, out);
  return out;
}

// The rows of `raw` repacked into `out`, a slice of a larger packed weight (a large weight is
// repacked in runs of whole 16-row blocks, its file's pages dropped after each run). Zeroes out first.
void quant_repack_into(torch::Tensor raw, int64_t qtype, int64_t n, int64_t k, torch::Tensor out) {
  out.zero_();
  repack_into(raw, qtype, n, k, out);
}

// Rows `ids` as float32 [len(ids), K] (embedding lookups).
torch::Tensor quant_rows(torch::Tensor w, int64_t qtype, int64_t n, int64_t k, torch::Tensor ids) {
  const Layout L = layout(qtype);
  check_packed(w, L, n, k);
  ids = ids.to(torch::kLong).contiguous();
  const int64_t count = ids.numel();
  const int64_t* ip = ids.data_ptr<int64_t>();
  for (int64_t i = 0; i < count; ++i) TORCH_CHECK(ip[i] >= 0 && ip[i] < n, "quant_rows: row ", ip[i], " out of range [0, ", n, ")");
  auto out = torch::empty({count, k}, torch::kFloat32);
  const uint8_t* wp = w.data_ptr<uint8_t>();
  float* op = out.data_ptr<float>();
  const int64_t block_bytes = packed_bytes(L, kRows, k);
  at::parallel_for(0, count, 16, [&](int64_t i0, int64_t i1) {
    for (int64_t i = i0; i < i1; ++i) {
      const int lane = int(ip[i] % kRows);
      unpack_block(qtype, L, wp + (ip[i] / kRows) * block_bytes, lane, lane + 1, k, op + i * k, k);
    }
  });
  return out;
}

TORCH_LIBRARY_FRAGMENT(mistralrs_kernels, m) {
  m.def("quant_repack(Tensor raw, int qtype, int N, int K) -> Tensor");
  m.def("quant_repack_into(Tensor raw, int qtype, int N, int K, Tensor(a!) out) -> ()");
  m.def("quant_rows(Tensor w, int qtype, int N, int K, Tensor ids) -> Tensor");
}

TORCH_LIBRARY_IMPL(mistralrs_kernels, CPU, m) {
  m.impl("quant_repack", &quant_repack);
  m.impl("quant_repack_into", &quant_repack_into);
  m.impl("quant_rows", &quant_rows);
}

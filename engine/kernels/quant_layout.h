// The repacked layout of quantized weights (the CPU kernels' in-memory form), and readers of the
// GGUF blocks it is made from.
//
// Rows are interleaved in blocks of 16 so that one 64-byte register holds 4 consecutive weights of
// each of 16 rows: a dot product with 4 activations broadcast to every lane (vpdpbusd) then works
// on 16 rows at once, and every per-group scale is a 16-lane vector load. This is the idea behind
// llama.cpp's "repack" CPU buffers, written out here for every GGUF type we run.
//
// Per row-block, the K columns are cut into 32-weight groups; groups come in units (1 group, or the
// 8 groups of a K-type's 256-weight super-block), each unit starting with a header of per-row
// values, then per group: a per-row group header, the codes, and extra bit planes.
//
//   codes, Nibbles: 4 chunks of 64 bytes; chunk k, byte 4r+i: low nibble = code of weight 4k+i
//                   of row r, high nibble = code of weight 16+4k+i.
//   codes, Bytes:   8 chunks of 64 bytes; chunk k, byte 4r+i = code of weight 4k+i (Q8_0, signed).
//   codes, Planes:  no nibbles; the codes are their bit planes alone (Q2_K, Q3_K).
//   bit plane p:    8 uint64 masks; mask 2k covers weights 4k+i (bit 4r+i), mask 2k+1 weights
//                   16+4k+i: set bits add 1 << (4 + p) to nibble codes, 1 << p to plane-only codes.
//
// So register "chunk" c in 0..7 always carries weights 4c..4c+3 of every row, and chunks 0-3 /
// 4-7 are the group's two 16-weight halves (the K-types' 16-weight sub-blocks). Every weight is
// w = S * (c - offset) + Z with c an unsigned code, S and Z per row and group (or half).
//
// Sizes equal the GGUF blocks' bytes except for Q4_K/Q5_K/Q3_K (about 3% larger), plus zero rows
// padding N up to a multiple of 16.

#pragma once

#include <torch/extension.h>
#include <c10/util/Half.h>

#include <cstdint>
#include <cstring>

namespace mrs {

constexpr int kRows = 16;  // rows per row-block
constexpr int kGroup = 32;  // weights per group

enum QType : int64_t { Q4_0 = 2, Q4_1 = 3, Q5_0 = 6, Q5_1 = 7, Q8_0 = 8, Q2_K = 10, Q3_K = 11, Q4_K = 12, Q5_K = 13, Q6_K = 14 };

enum class Codes { Nibbles, Bytes, Planes };

struct Layout {
  int block, block_bytes;  // the GGUF block: weights, bytes
  int unit_groups;  // groups per unit (8: a K-type super-block)
  int unit_header;  // bytes per unit: f16 [16] arrays (d, then dmin or m)
  int group_header;  // bytes per group: per-row 8-bit sub-scales
  Codes codes;
  int planes;  // extra bit planes
  int offset;  // integer code offset (w = S (c - offset) + Z)
  bool split;  // per-half (16-weight) scales
  bool min;  // has an additive term Z

  constexpr int code_bytes() const { return codes == Codes::Nibbles ? 256 : codes == Codes::Bytes ? 512 : 0; }
  constexpr int group_bytes() const { return group_header + code_bytes() + 64 * planes; }
  constexpr int unit_bytes() const { return unit_header + unit_groups * group_bytes(); }
};

constexpr Layout layout_of(int64_t t) {
  switch (t) {
    case Q4_0: return {32, 18, 1, 32, 0, Codes::Nibbles, 0, 8, false, false};
    case Q4_1: return {32, 20, 1, 64, 0, Codes::Nibbles, 0, 0, false, true};
    case Q5_0: return {32, 22, 1, 32, 0, Codes::Nibbles, 1, 16, false, false};
    case Q5_1: return {32, 24, 1, 64, 0, Codes::Nibbles, 1, 0, false, true};
    case Q8_0: return {32, 34, 1, 32, 0, Codes::Bytes, 0, 0, false, false};
    case Q2_K: return {256, 84, 8, 64, 32, Codes::Planes, 2, 0, true, true};
    case Q3_K: return {256, 110, 8, 32, 32, Codes::Planes, 3, 4, true, false};
    case Q4_K: return {256, 144, 8, 64, 32, Codes::Nibbles, 0, 0, false, true};
    case Q5_K: return {256, 176, 8, 64, 32, Codes::Nibbles, 1, 0, false, true};
    case Q6_K: return {256, 210, 8, 32, 32, Codes::Nibbles, 2, 32, true, false};
  }
  return {0, 0, 0, 0, 0, Codes::Nibbles, 0, 0, false, false};
}

inline Layout layout(int64_t t) {
  const Layout L = layout_of(t);
  TORCH_CHECK(L.block != 0, "quantized kernels: unsupported GGML type ", t);
  return L;
}

inline int64_t row_blocks(int64_t n) { return (n + kRows - 1) / kRows; }
inline int64_t packed_bytes(const Layout& L, int64_t n, int64_t k) {
  return row_blocks(n) * (k / kGroup / L.unit_groups) * L.unit_bytes();
}

// A packed [n, k] weight of layout L, or a clear error.
inline void check_packed(const torch::Tensor& w, const Layout& L, int64_t n, int64_t k) {
  TORCH_CHECK(w.scalar_type() == torch::kUInt8 && w.is_contiguous(), "quantized kernels: packed weight must be contiguous uint8");
  TORCH_CHECK(k % L.block == 0, "quantized kernels: K=", k, " is not a multiple of the block size ", L.block);
  TORCH_CHECK(w.numel() == packed_bytes(L, n, k), "quantized kernels: packed weight has ", w.numel(), " bytes, expected ",
              packed_bytes(L, n, k));
}

inline float f16(const uint8_t* p) {
  uint16_t h;
  std::memcpy(&h, p, 2);
  return c10::detail::fp16_ieee_to_fp32_value(h);
}

// One group of one row as read from its GGUF block: unsigned codes, and the raw per-row values the
// layout stores (header: f16 bit patterns; sub: the 8-bit per-group or per-half sub-scales).
struct RawGroup {
  uint8_t c[32];
  uint16_t h0, h1;  // unit header values (d; dmin or m)
  uint8_t sub[2];  // Q2_K: scale | min << 4 per half; Q3_K, Q6_K: signed scale per half; Q4_K/Q5_K: sc, m
};

inline uint16_t bits16(const uint8_t* p) {
  uint16_t h;
  std::memcpy(&h, p, 2);
  return h;
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

// Q3_K: signed 6-bit scale i (0..15) from the 12-byte field.
inline int q3k_scale(const uint8_t* s, int i) {
  const int low = i < 8 ? (s[i] & 15) : (s[i - 8] >> 4);
  const int high = (s[8 + i % 4] >> (2 * (i / 4))) & 3;
  return (low | (high << 4)) - 32;
}

// Group g (0 .. block/32 - 1) of a GGUF block b.
inline RawGroup read_group(int64_t t, const uint8_t* b, int g) {
  RawGroup r{};
  switch (t) {
    case Q4_0:
    case Q4_1: {
      const bool affine = t == Q4_1;
      r.h0 = bits16(b);
      if (affine) r.h1 = bits16(b + 2);
      const uint8_t* q = b + (affine ? 4 : 2);
      for (int j = 0; j < 16; ++j) { r.c[j] = q[j] & 15; r.c[j + 16] = q[j] >> 4; }
      break;
    }
    case Q5_0:
    case Q5_1: {
      const bool affine = t == Q5_1;
      r.h0 = bits16(b);
      if (affine) r.h1 = bits16(b + 2);
      uint32_t qh;
      std::memcpy(&qh, b + (affine ? 4 : 2), 4);
      const uint8_t* q = b + (affine ? 8 : 6);
      for (int j = 0; j < 16; ++j) {
        r.c[j] = (q[j] & 15) | (((qh >> j) & 1) << 4);
        r.c[j + 16] = (q[j] >> 4) | (((qh >> (j + 16)) & 1) << 4);
      }
      break;
    }
    case Q8_0:
      r.h0 = bits16(b);
      std::memcpy(r.c, b + 2, 32);
      break;
    case Q2_K: {  // scales[16] | qs[64] | d | dmin
      r.h0 = bits16(b + 80);
      r.h1 = bits16(b + 82);
      r.sub[0] = b[2 * g];
      r.sub[1] = b[2 * g + 1];
      const uint8_t* q = b + 16 + 32 * (g / 4);
      for (int j = 0; j < 32; ++j) r.c[j] = (q[j] >> (2 * (g % 4))) & 3;
      break;
    }
    case Q3_K: {  // hmask[32] | qs[64] | scales[12] | d
      r.h0 = bits16(b + 108);
      r.sub[0] = uint8_t(int8_t(q3k_scale(b + 96, 2 * g)));
      r.sub[1] = uint8_t(int8_t(q3k_scale(b + 96, 2 * g + 1)));
      const uint8_t* q = b + 32 + 32 * (g / 4);
      for (int j = 0; j < 32; ++j) r.c[j] = ((q[j] >> (2 * (g % 4))) & 3) | (((b[j] >> g) & 1) << 2);
      break;
    }
    case Q4_K:
    case Q5_K: {  // d | dmin | scales[12] | (qh[32]) | qs[128]
      const bool five = t == Q5_K;
      r.h0 = bits16(b);
      r.h1 = bits16(b + 2);
      int sc, m;
      k_scale_min(b + 4, g, sc, m);
      r.sub[0] = uint8_t(sc);
      r.sub[1] = uint8_t(m);
      const uint8_t* q = b + (five ? 48 : 16) + 32 * (g / 2);
      for (int j = 0; j < 32; ++j) {
        int v = (q[j] >> (4 * (g & 1))) & 15;
        if (five) v |= ((b[16 + j] >> g) & 1) << 4;
        r.c[j] = uint8_t(v);
      }
      break;
    }
    case Q6_K: {  // ql[128] | qh[64] | scales[16] | d
      r.h0 = bits16(b + 208);
      const int half = g / 4, quarter = g % 4;
      const uint8_t* ql = b + 64 * half + (quarter & 1) * 32;
      const uint8_t* qh = b + 128 + 32 * half;
      r.sub[0] = b[192 + 8 * half + 2 * quarter];
      r.sub[1] = b[192 + 8 * half + 2 * quarter + 1];
      const int nib = quarter >= 2 ? 4 : 0;
      for (int j = 0; j < 32; ++j) r.c[j] = ((ql[j] >> nib) & 15) | (((qh[j] >> (2 * quarter)) & 3) << 4);
      break;
    }
  }
  return r;
}

// Where things are inside a packed row-block.
struct Cursor {
  Layout L;
  const uint8_t* base;  // the row-block's first byte
  const uint8_t* unit(int64_t g) const { return base + (g / L.unit_groups) * L.unit_bytes(); }
  const uint8_t* group(int64_t g) const { return unit(g) + L.unit_header + (g % L.unit_groups) * L.group_bytes(); }
};

// Multiplier and addend of half h (0: weights 0-15, 1: 16-31) of one row's group, from packed
// values: w = S (c - offset) + Z, computed as the reference dequantizers do (f32 products).
inline void row_scale(int64_t t, const uint8_t* unit, const uint8_t* group, int lane, int h, float& S, float& Z) {
  const float d = f16(unit + 2 * lane);
  const float e = f16(unit + 32 + 2 * lane);  // second header array, where the type has one
  const uint8_t s0 = group[lane], s1 = group[16 + lane];
  Z = 0.f;
  switch (t) {
    case Q4_0: case Q5_0: case Q8_0: S = d; return;
    case Q4_1: case Q5_1: S = d; Z = e; return;
    case Q2_K: {
      const uint8_t s = h ? s1 : s0;
      S = d * float(s & 15);
      Z = -(e * float(s >> 4));
      return;
    }
    case Q3_K: case Q6_K: S = d * float(int8_t(h ? s1 : s0)); return;
    case Q4_K: case Q5_K: S = d * float(s0); Z = -(e * float(s1)); return;
  }
}

// Unsigned code of weight j of row `lane` from a packed group.
inline int packed_code(const Layout& L, const uint8_t* group, int lane, int j) {
  const uint8_t* codes = group + L.group_header;
  const int chunk = j / 4, i = j % 4, byte = 4 * lane + i;
  int c = 0;
  if (L.codes == Codes::Bytes) return codes[64 * chunk + byte];  // (Q8_0: the caller reads it signed)
  if (L.codes == Codes::Nibbles) {
    const uint8_t v = codes[64 * (chunk % 4) + byte];
    c = chunk < 4 ? (v & 15) : (v >> 4);
  }
  const uint8_t* planes = codes + L.code_bytes();
  const int mask = 2 * (chunk % 4) + (chunk >= 4), base = L.codes == Codes::Nibbles ? 4 : 0;
  for (int p = 0; p < L.planes; ++p) {
    uint64_t bits;
    std::memcpy(&bits, planes + 64 * p + 8 * mask, 8);
    c |= int((bits >> byte) & 1) << (base + p);
  }
  return c;
}

// Rows [first, last) of a packed row-block as floats: out[(lane - first) * ld + col].
inline void unpack_block(int64_t t, const Layout& L, const uint8_t* block, int first, int last, int64_t k, float* out,
                         int64_t ld) {
  const Cursor cur{L, block};
  float S[2][kRows], Z[2][kRows];
  int c[kRows][kGroup];
  for (int64_t g = 0; g < k / kGroup; ++g) {
    const uint8_t *unit = cur.unit(g), *group = cur.group(g);
    for (int lane = first; lane < last; ++lane) {
      for (int h = 0; h < 2; ++h) row_scale(t, unit, group, lane, h, S[h][lane], Z[h][lane]);
      for (int j = 0; j < kGroup; ++j) c[lane][j] = packed_code(L, group, lane, j);
    }
    for (int lane = first; lane < last; ++lane) {
      float* o = out + (lane - first) * ld + kGroup * g;
      for (int j = 0; j < kGroup; ++j) {
        const int h = j / 16;
        const float q = t == Q8_0 ? float(int8_t(c[lane][j])) : float(c[lane][j] - L.offset);
        o[j] = L.min ? S[h][lane] * q + Z[h][lane] : S[h][lane] * q;
      }
    }
  }
}

}  // namespace mrs

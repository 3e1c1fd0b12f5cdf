// SentencePiece (SPM) tokenization as llama.cpp's llm_tokenizer_spm does it, over a compact vocabulary.
//
// Why native: emulating SPM in the `tokenizers` library needs a BPE model with every two-way split
// of every token as a merge (515k merges for Gemma 3's 262k tokens), 69 MB resident. Here the
// vocabulary is one text buffer, its offsets, the scores and an open-addressing index: ~10 MB.
//
// encode(text, parse_special):
// 1. the text is split on the vocabulary's user-defined tokens (always) and control/unknown tokens
//    (with parse_special), leftmost-longest first, as the `tokenizers` added-token pass does;
// 2. each piece of plain text gets a leading space when the vocabulary adds one (at the start and
//    after every token split off in 1), spaces become U+2581, and it is split into UTF-8 characters;
// 3. adjacent symbols whose concatenation is a vocabulary token merge, highest score first, the
//    leftmost pair on a tie (llama.cpp's comparator);
// 4. a final symbol that is not a token becomes its bytes' <0xXX> tokens (the unknown token when the
//    vocabulary lacks one; consecutive unknowns fuse into one).
#include <torch/extension.h>

#include <algorithm>
#include <cstdio>
#include <queue>
#include <string>
#include <string_view>
#include <unordered_map>
#include <vector>

namespace {

constexpr int8_t kSplitAlways = 1;   // user-defined tokens
constexpr int8_t kSplitSpecial = 2;  // control / unknown tokens, only with parse_special

struct Symbol {
  int32_t prev, next;
  uint32_t start, len;  // in the fragment's bytes
};

struct Bigram {
  int32_t left, right;
  float score;
  uint32_t size;
};

struct BigramOrder {  // std::priority_queue pops the largest: best score, then the leftmost pair
  bool operator()(const Bigram& a, const Bigram& b) const {
    return a.score < b.score || (a.score == b.score && a.left > b.left);
  }
};

size_t utf8_len(unsigned char lead) {
  static const size_t lookup[16] = {1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 2, 2, 3, 4};
  return lookup[lead >> 4];
}

}  // namespace

struct SpmTokenizer : torch::CustomClassHolder {
  std::string texts;
  std::vector<uint32_t> starts;  // token i is texts[starts[i], starts[i + 1])
  std::vector<float> scores;
  std::vector<int32_t> index;  // open addressing on the text's hash: token ids, -1 empty
  uint64_t index_mask = 0;
  std::unordered_map<std::string_view, int32_t> split_tokens;
  std::vector<int8_t> split_kind;
  std::vector<uint32_t> split_lengths[256];  // by first byte: the split tokens' lengths, longest first
  std::vector<bool> split_pairs = std::vector<bool>(65536);  // first two bytes of a split token
  int32_t byte_tokens[256];
  int64_t unk_id;
  bool add_space_prefix;

  SpmTokenizer(torch::Tensor text_bytes, torch::Tensor ends, torch::Tensor token_scores, torch::Tensor kinds,
               int64_t unk, bool space_prefix)
      : unk_id(unk), add_space_prefix(space_prefix) {
    TORCH_CHECK(text_bytes.dtype() == torch::kUInt8 && ends.dtype() == torch::kInt64 &&
                    token_scores.dtype() == torch::kFloat32 && kinds.dtype() == torch::kInt8,
                "SpmTokenizer: uint8 texts, int64 ends, float32 scores and int8 kinds expected");
    const int64_t n = ends.numel();
    TORCH_CHECK(token_scores.numel() == n && kinds.numel() == n, "SpmTokenizer: one score and kind per token");
    TORCH_CHECK(text_bytes.numel() < (int64_t{1} << 32), "SpmTokenizer: vocabulary text over 4 GB");
    const auto bytes = text_bytes.contiguous();
    texts.assign(reinterpret_cast<const char*>(bytes.data_ptr<uint8_t>()), bytes.numel());
    const auto e = ends.contiguous();
    const int64_t* end = e.data_ptr<int64_t>();
    starts.resize(n + 1);
    starts[0] = 0;
    for (int64_t i = 0; i < n; ++i) {
      TORCH_CHECK(end[i] >= starts[i] && end[i] <= static_cast<int64_t>(texts.size()), "SpmTokenizer: bad offsets");
      starts[i + 1] = static_cast<uint32_t>(end[i]);
    }
    const auto s = token_scores.contiguous();
    scores.assign(s.data_ptr<float>(), s.data_ptr<float>() + n);
    uint64_t capacity = 1024;
    while (capacity < static_cast<uint64_t>(n) * 2) capacity *= 2;
    index.assign(capacity, -1);
    index_mask = capacity - 1;
    for (int64_t i = 0; i < n; ++i) {
      uint64_t slot = hash(text(static_cast<int32_t>(i))) & index_mask;
      while (index[slot] >= 0) slot = (slot + 1) & index_mask;
      index[slot] = static_cast<int32_t>(i);
    }

    const auto k = kinds.contiguous();
    split_kind.assign(k.data_ptr<int8_t>(), k.data_ptr<int8_t>() + n);
    for (int64_t i = 0; i < n; ++i) {
      const std::string_view t = text(static_cast<int32_t>(i));
      if (split_kind[i] == 0 || t.empty()) continue;
      split_tokens.emplace(t, static_cast<int32_t>(i));
      const unsigned char first = static_cast<unsigned char>(t[0]);
      auto& lengths = split_lengths[first];
      if (std::find(lengths.begin(), lengths.end(), t.size()) == lengths.end())
        lengths.push_back(static_cast<uint32_t>(t.size()));
      if (t.size() > 1) split_pairs[first << 8 | static_cast<unsigned char>(t[1])] = true;
    }
    for (auto& lengths : split_lengths) std::sort(lengths.rbegin(), lengths.rend());

    for (int b = 0; b < 256; ++b) {  // llama.cpp's byte_to_token: "<0xXX>", else the byte itself
      char name[8];
      std::snprintf(name, sizeof name, "<0x%02X>", b);
      int32_t id = find(name);
      if (id < 0) {
        const char single = static_cast<char>(b);
        id = find(std::string_view(&single, 1));
      }
      byte_tokens[b] = id;
    }
  }

  std::string_view text(int32_t id) const {
    return std::string_view(texts.data() + starts[id], starts[id + 1] - starts[id]);
  }

  static uint64_t hash(std::string_view t) {  // FNV-1a
    uint64_t h = 1469598103934665603ull;
    for (const char c : t) h = (h ^ static_cast<unsigned char>(c)) * 1099511628211ull;
    return h;
  }

  int32_t find(std::string_view t) const {
    for (uint64_t slot = hash(t) & index_mask;; slot = (slot + 1) & index_mask) {
      const int32_t id = index[slot];
      if (id < 0 || text(id) == t) return id;
    }
  }

  int64_t token_to_id(const std::string& t) const { return find(t); }

  void encode_piece(const std::string& piece, std::vector<int64_t>& out) const {
    std::vector<Symbol> symbols;
    symbols.reserve(piece.size());
    for (uint32_t offs = 0; offs < piece.size();) {
      const uint32_t len = static_cast<uint32_t>(
          std::min(utf8_len(static_cast<unsigned char>(piece[offs])), piece.size() - offs));
      const int32_t index = static_cast<int32_t>(symbols.size());
      symbols.push_back({index - 1, offs + len == piece.size() ? -1 : index + 1, offs, len});
      offs += len;
    }
    std::priority_queue<Bigram, std::vector<Bigram>, BigramOrder> queue;
    auto try_add = [&](int32_t left, int32_t right) {
      if (left < 0 || right < 0) return;
      const uint32_t size = symbols[left].len + symbols[right].len;
      const int32_t id = find(std::string_view(piece.data() + symbols[left].start, size));
      if (id >= 0) queue.push({left, right, scores[id], size});
    };
    for (int32_t i = 1; i < static_cast<int32_t>(symbols.size()); ++i) try_add(i - 1, i);
    while (!queue.empty()) {
      const Bigram b = queue.top();
      queue.pop();
      Symbol& left = symbols[b.left];
      Symbol& right = symbols[b.right];
      if (left.len == 0 || right.len == 0 || left.len + right.len != b.size) continue;  // stale
      left.len += right.len;
      right.len = 0;
      left.next = right.next;
      if (right.next >= 0) symbols[right.next].prev = b.left;
      try_add(left.prev, b.left);
      try_add(b.left, left.next);
    }
    bool last_unknown = false;
    for (int32_t i = symbols.empty() ? -1 : 0; i != -1; i = symbols[i].next) {
      const Symbol& sym = symbols[i];
      const int32_t id = find(std::string_view(piece.data() + sym.start, sym.len));
      if (id >= 0) {
        out.push_back(id);
        last_unknown = false;
        continue;
      }
      bool all_bytes = true;
      for (uint32_t j = 0; j < sym.len; ++j) all_bytes &= byte_tokens[static_cast<unsigned char>(piece[sym.start + j])] >= 0;
      if (all_bytes) {
        for (uint32_t j = 0; j < sym.len; ++j) out.push_back(byte_tokens[static_cast<unsigned char>(piece[sym.start + j])]);
        last_unknown = false;
      } else {
        TORCH_CHECK(unk_id >= 0, "SpmTokenizer: a character has no token, no byte tokens and there is no unknown token");
        if (!last_unknown) out.push_back(unk_id);
        last_unknown = true;
      }
    }
  }

  void encode_plain(std::string_view raw, bool after_token, std::vector<int64_t>& out) const {
    std::string piece;
    piece.reserve(raw.size() * 3 + 3);
    if (add_space_prefix && after_token) piece += "\xE2\x96\x81";
    for (const char c : raw) {
      if (c == ' ')
        piece += "\xE2\x96\x81";
      else
        piece += c;
    }
    encode_piece(piece, out);
  }

  std::vector<int64_t> encode(const std::string& input, bool parse_special) const {
    std::vector<int64_t> out;
    const std::string_view all(input);
    size_t plain_start = 0;
    bool after_token = true;  // the text's start counts as one (llama.cpp: "prefix with space if first token")
    for (size_t pos = 0; pos < all.size();) {
      int32_t match = -1;
      uint32_t match_len = 0;
      const unsigned char first = static_cast<unsigned char>(all[pos]);
      const bool pair = pos + 1 < all.size() && split_pairs[first << 8 | static_cast<unsigned char>(all[pos + 1])];
      for (const uint32_t len : split_lengths[first]) {
        if (len > all.size() - pos || (len > 1 && !pair)) continue;
        const auto it = split_tokens.find(all.substr(pos, len));
        const int8_t kind = it == split_tokens.end() ? 0 : split_kind[it->second];
        if (kind == kSplitAlways || (parse_special && kind == kSplitSpecial)) {
          match = it->second;
          match_len = len;
          break;
        }
      }
      if (match < 0) {
        ++pos;
        continue;
      }
      if (pos > plain_start) {
        encode_plain(all.substr(plain_start, pos - plain_start), after_token, out);
      }
      out.push_back(match);
      after_token = true;
      pos += match_len;
      plain_start = pos;
    }
    if (plain_start < all.size()) encode_plain(all.substr(plain_start), after_token, out);
    return out;
  }
};

TORCH_LIBRARY_FRAGMENT(mistralrs_kernels, m) {
  m.class_<SpmTokenizer>("SpmTokenizer")
      .def(torch::init<torch::Tensor, torch::Tensor, torch::Tensor, torch::Tensor, int64_t, bool>())
      .def("encode", &SpmTokenizer::encode)
      .def("token_to_id", &SpmTokenizer::token_to_id);
}

// tokenizer.h: Hugging Face `tokenizer.json` BPE tokenizers (byte-level and byte-fallback) in C,
// producing the same ids as the Rust `tokenizers` library (0.23) does.
//
// Encoding, in the library's order (tokenizer/mod.rs encode_single_sequence):
//   1. Added tokens (`added_tokens`, special or not) are split out of the raw text first.
//      Tokens with normalized=false are matched on the raw text; then each remaining piece is
//      normalized and the normalized=true tokens are matched on it (AddedVocabulary::
//      extract_and_normalize). Matching is leftmost-longest, non-overlapping; `single_word`
//      drops a match touching a word character (Unicode \w) on either side; `lstrip` / `rstrip`
//      widen a match over the whitespace before / after it. An added token's id is its id in
//      model.vocab when present there, otherwise the next id after the vocabulary.
//   2. normalizer: null, NFC, Prepend, Replace (String pattern), Sequence of these.
//   3. pre_tokenizer: Sequence, Split (Regex or String pattern; behaviours Removed, Isolated,
//      MergedWithPrevious, MergedWithNext, Contiguous; invert), ByteLevel (add_prefix_space,
//      use_regex with the GPT-2 regex, then bytes -> the GPT-2 byte-to-unicode alphabet),
//      Digits. Regexes run through PCRE2 with UTF + UCP, so \p{L}, \p{N}, (?i:...) and \s
//      behave as Oniguruma does for these patterns. Empty pieces are dropped.
//   4. model BPE: each piece's characters are looked up in the vocabulary (byte_fallback:
//      <0xNN> tokens; unk_token with fuse_unk), then merged by rank with a priority queue
//      (lowest rank first, leftmost first), as models/bpe/word.rs merge_all. ignore_merges
//      looks the whole piece up first. Results for pieces shorter than 256 bytes are cached.
//   5. post_processor (only with add_special_tokens): TemplateProcessing (single sequence),
//      RobertaProcessing, BertProcessing, ByteLevel (no id change), Sequence.
// Unsupported component types, BPE dropout > 0 and malformed files are load errors that name
// the file and the JSON path. `truncation` / `padding` in the file are ignored (callers cut).
//
// Decoding: ids -> token strings (added tokens by content, missing ids skipped, specials
// skipped on request), then the decoder chain: ByteLevel (then UTF-8 with U+FFFD for invalid
// sequences, as String::from_utf8_lossy), ByteFallback, Fuse, Strip, Replace (String),
// Sequence; without a decoder the tokens are joined with " ".
//
// Thread safety: a tokenizer is immutable after loading except for its merge cache and regex
// scratch, so one fb_tok must not encode on two threads at once (load one per thread).
#ifndef FB_IO_TOKENIZER_H
#define FB_IO_TOKENIZER_H

#include "common/fb.h"

typedef struct fb_tok fb_tok;

// A growable array of token ids. Zero-initialise ({0}); free with fb_ids_free.
typedef struct fb_ids {
    int32_t *v;
    size_t n, cap;
} fb_ids;

// Appends one id (grows the array; never fails).
void fb_ids_push(fb_ids *a, int32_t id);
// Frees the storage and zeroes the struct.
void fb_ids_free(fb_ids *a);

// Loads a tokenizer.json file. Returns 0 and a new tokenizer in *out (free with fb_tok_free),
// or -1 with err naming the file and the offending component or key.
int fb_tok_load(const char *path, fb_tok **out, fb_err *err);

// The same from JSON text in memory; `name` is used in messages (e.g. the path it came from).
int fb_tok_load_string(const char *json, size_t len, const char *name, fb_tok **out, fb_err *err);

// Frees a tokenizer (NULL is fine).
void fb_tok_free(fb_tok *t);

// Encodes UTF-8 text and APPENDS its ids to *out. add_special_tokens applies the
// post-processor (as `tokenizer.encode(text, add_special_tokens=True)`); chat renderings are
// encoded without it, as transformers' apply_chat_template does. Returns 0, or -1 when the
// text is not valid UTF-8 (err gives the byte offset) or the model cannot represent a
// character (BPE without unk/byte fallback drops it silently, as the library does; an
// unk_token missing from the vocabulary is the error case).
int fb_tok_encode(fb_tok *t, const char *text, size_t len, int add_special_tokens, fb_ids *out,
                  fb_err *err);

// Decodes ids to UTF-8 text as `tokenizer.decode(ids, skip_special_tokens)`. On success *out is
// a NUL-terminated malloc'd string (caller frees) of length *out_len. Ids outside the
// vocabulary are skipped, as in the library. Returns -1 only on an internal decoder error.
int fb_tok_decode(const fb_tok *t, const int32_t *ids, size_t n, int skip_special_tokens,
                  char **out, size_t *out_len, fb_err *err);

// The id of a token string (added tokens first, then the model vocabulary), or -1.
int32_t fb_tok_id(const fb_tok *t, const char *token);

// The string of an id (added token content or vocabulary entry; NUL-terminated, owned by the
// tokenizer), or NULL when no token has this id.
const char *fb_tok_token(const fb_tok *t, int32_t id);

// 1 if the id is an added token marked special (skipped by skip_special_tokens), else 0.
int fb_tok_is_special(const fb_tok *t, int32_t id);

// One past the largest id (model vocabulary and added tokens): the embedding rows needed.
int32_t fb_tok_n_ids(const fb_tok *t);

// The name given at load time (the path for fb_tok_load).
const char *fb_tok_name(const fb_tok *t);

#endif

// dataset.c: JSONL datasets, deterministic sampling, records -> token ids (see dataset.h).
#include "io/dataset.h"
#include "common/cancel.h"

#include <errno.h>
#include <fcntl.h>
#include <string.h>
#include <unistd.h>

typedef struct {
    uint64_t off;   // byte offset of the line in its file
    uint64_t line;  // 1-based line number
    uint32_t len;   // bytes, without the newline
    uint32_t file;
} line_ref;

struct fb_dataset {
    char **paths;
    int *fds;
    size_t nfiles;
    line_ref *lines;
    size_t n, cap;
};

void fb_ds_opts_default(fb_ds_opts *o) {
    memset(o, 0, sizeof *o);
    o->seed = 42;
    o->min_len = 1;
    o->text_add_special = 1;
    o->chat.tmpl = FB_CHAT_MINIMAX_M2;
}

// The record kinds, in the order they are looked for.
enum { REC_INPUT_IDS, REC_MESSAGES, REC_CONVERSATIONS, REC_TEXT, REC_NONE };
static const struct {
    const char *key;
    json_type type;
} REC_KEYS[] = {
    [REC_INPUT_IDS] = {"input_ids", JSON_ARRAY},
    [REC_MESSAGES] = {"messages", JSON_ARRAY},
    [REC_CONVERSATIONS] = {"conversations", JSON_ARRAY},
    [REC_TEXT] = {"text", JSON_STRING},
};

static const struct {
    const char *from, *role;
} SHAREGPT_ROLES[] = {
    {"human", "user"}, {"user", "user"}, {"gpt", "assistant"}, {"assistant", "assistant"},
    {"system", "system"}, {"tool", "tool"},
};

static const char *const MESSAGE_ROLES[] = {"system", "user", "assistant", "tool"};

// Which kind a record is, after checking its shape; REC_NONE with err set when it is bad.
static int record_kind(json_t *rec, fb_err *err) {
    if (!json_is_object(rec)) return fb_fail(err, "not a JSON object"), REC_NONE;
    json_t *kw = json_object_get(rec, "chat_template_kwargs");
    if (kw && !json_is_object(kw)) return fb_fail(err, "'chat_template_kwargs' must be an object"), REC_NONE;
    for (int k = 0; k < REC_NONE; k++) {
        json_t *v = json_object_get(rec, REC_KEYS[k].key);
        if (!v) continue;
        if (json_typeof(v) != REC_KEYS[k].type)
            return fb_fail(err, "'%s' must be a %s", REC_KEYS[k].key,
                           REC_KEYS[k].type == JSON_ARRAY ? "list" : "string"),
                   REC_NONE;
        size_t n = json_array_size(v);
        for (size_t i = 0; k != REC_TEXT && i < n; i++) {
            json_t *e = json_array_get(v, i);
            if (k == REC_INPUT_IDS) {
                if (!json_is_integer(e) || json_integer_value(e) < 0 || json_integer_value(e) > INT32_MAX)
                    return fb_fail(err, "input_ids[%zu] is not a token id", i), REC_NONE;
                continue;
            }
            if (!json_is_object(e)) return fb_fail(err, "%s[%zu] is not an object", REC_KEYS[k].key, i), REC_NONE;
            json_t *role = json_object_get(e, k == REC_MESSAGES ? "role" : "from");
            if (!json_is_string(role))
                return fb_fail(err, "%s[%zu] has no '%s'", REC_KEYS[k].key, i, k == REC_MESSAGES ? "role" : "from"),
                       REC_NONE;
            int known = 0;
            if (k == REC_MESSAGES) {
                for (size_t r = 0; r < sizeof MESSAGE_ROLES / sizeof MESSAGE_ROLES[0]; r++)
                    known |= strcmp(json_string_value(role), MESSAGE_ROLES[r]) == 0;
            } else {
                for (size_t r = 0; r < sizeof SHAREGPT_ROLES / sizeof SHAREGPT_ROLES[0]; r++)
                    known |= strcmp(json_string_value(role), SHAREGPT_ROLES[r].from) == 0;
                if (!json_is_string(json_object_get(e, "value")))
                    return fb_fail(err, "conversations[%zu] has no 'value' string", i), REC_NONE;
            }
            if (!known)
                return fb_fail(err, "%s[%zu]: unknown role '%s' (%s)", REC_KEYS[k].key, i, json_string_value(role),
                               k == REC_MESSAGES ? "system, user, assistant, tool"
                                                 : "human, user, gpt, assistant, system, tool"),
                       REC_NONE;
        }
        return k;
    }
    return fb_fail(err, "no 'input_ids', 'messages', 'conversations' or 'text'"), REC_NONE;
}

static int is_blank(const char *s, size_t n) {
    for (size_t i = 0; i < n; i++)
        if (s[i] != ' ' && s[i] != '\t' && s[i] != '\r' && s[i] != '\n') return 0;
    return 1;
}

static void add_line(fb_dataset *ds, line_ref r) {
    if (ds->n == ds->cap) {
        ds->cap = ds->cap ? ds->cap * 2 : 1024;
        ds->lines = fb_realloc(ds->lines, ds->cap * sizeof *ds->lines);
    }
    ds->lines[ds->n++] = r;
}

// The longest JSONL line (one record) fourbit reads. A record is parsed whole (jansson) when
// the file is indexed and again when selected, so a line costs several times its size in
// memory; 32 MiB is ~8M tokens of text, far beyond any --seq-len in use, and keeps a stray
// 100 MB line from costing gigabytes.
#define FB_DS_MAX_LINE_BYTES (32u << 20)

// Reads one line (with its '\n', if any) into *buf, never holding more than max + 1 bytes.
// Returns the bytes consumed from the file (0 at EOF); *too_long is set when the line is longer
// than max (the rest of it is not read).
static size_t read_line_bounded(FILE *f, char **buf, size_t *cap, size_t max, int *too_long) {
    size_t n = 0;
    *too_long = 0;
    int c;
    while ((c = getc_unlocked(f)) != EOF) {
        if (n + 1 >= *cap) {
            *cap = *cap ? *cap * 2 : 4096;
            *buf = fb_realloc(*buf, *cap);
        }
        (*buf)[n++] = (char)c;
        if (c == '\n') break;
        if (n > max) {
            *too_long = 1;
            break;
        }
    }
    return n;
}

static int index_file(fb_dataset *ds, uint32_t fi, fb_err *err) {
    const char *path = ds->paths[fi];
    FILE *f = fopen(path, "rb");
    if (!f) return fb_fail(err, "%s: cannot open: %s", path, strerror(errno));
    char *line = NULL;
    size_t cap = 0, got;
    uint64_t off = 0, lineno = 0;
    int rc = 0, too_long = 0;
    while ((got = read_line_bounded(f, &line, &cap, FB_DS_MAX_LINE_BYTES, &too_long)) > 0) {
        lineno++;
        if ((lineno & 1023) == 0 && fb_cancel_check("indexing the dataset", err)) {
            rc = -1;
            break;
        }
        if (too_long) {
            rc = fb_fail(err, "%s:%llu: line longer than %u MiB (the limit for one JSONL record)", path,
                         (unsigned long long)lineno, FB_DS_MAX_LINE_BYTES >> 20);
            break;
        }
        size_t n = got, skip = 0;
        uint64_t loff = off;
        off += (uint64_t)got;
        while (n && (line[n - 1] == '\n' || line[n - 1] == '\r')) n--;
        if (lineno == 1 && n >= 3 && memcmp(line, "\xEF\xBB\xBF", 3) == 0) skip = 3;
        if (is_blank(line + skip, n - skip)) continue;
        json_error_t je;
        json_t *rec = json_loadb(line + skip, n - skip, JSON_ALLOW_NUL, &je);
        if (!rec) {
            rc = fb_fail(err, "%s:%llu: invalid JSON at column %d: %s", path, (unsigned long long)lineno, je.column,
                         je.text);
            break;
        }
        fb_err why;
        int kind = record_kind(rec, &why);
        json_decref(rec);
        if (kind == REC_NONE) {
            rc = fb_fail(err, "%s:%llu: %s", path, (unsigned long long)lineno, why.msg);
            break;
        }
        add_line(ds, (line_ref){loff + skip, lineno, (uint32_t)(n - skip), fi});
    }
    if (!rc && ferror(f)) rc = fb_fail(err, "%s: read error: %s", path, strerror(errno));
    free(line);
    fclose(f);
    return rc;
}

int fb_ds_open(const char *const *paths, size_t npaths, fb_dataset **out, fb_err *err) {
    *out = NULL;
    if (!npaths) return fb_fail(err, "no dataset files given");
    fb_dataset *ds = fb_calloc(1, sizeof *ds);
    ds->nfiles = npaths;
    ds->paths = fb_calloc(npaths, sizeof *ds->paths);
    ds->fds = fb_malloc(npaths * sizeof *ds->fds);
    for (size_t i = 0; i < npaths; i++) ds->fds[i] = -1;
    for (size_t i = 0; i < npaths; i++) {
        ds->paths[i] = fb_strdup(paths[i]);
        if (index_file(ds, (uint32_t)i, err)) {
            fb_ds_close(ds);
            return -1;
        }
        ds->fds[i] = open(paths[i], O_RDONLY | O_CLOEXEC);
        if (ds->fds[i] < 0) {
            fb_fail(err, "%s: cannot open: %s", paths[i], strerror(errno));
            fb_ds_close(ds);
            return -1;
        }
    }
    *out = ds;
    return 0;
}

void fb_ds_close(fb_dataset *ds) {
    if (!ds) return;
    for (size_t i = 0; i < ds->nfiles; i++) {
        if (ds->fds[i] >= 0) close(ds->fds[i]);
        free(ds->paths[i]);
    }
    free(ds->fds);
    free(ds->paths);
    free(ds->lines);
    free(ds);
}

size_t fb_ds_count(const fb_dataset *ds) { return ds->n; }

void fb_ds_where(const fb_dataset *ds, size_t i, const char **path, size_t *line) {
    FB_ASSERT(i < ds->n);
    *path = ds->paths[ds->lines[i].file];
    *line = (size_t)ds->lines[i].line;
}

int fb_ds_record(fb_dataset *ds, size_t i, json_t **out, fb_err *err) {
    *out = NULL;
    FB_ASSERT(i < ds->n);
    const line_ref *r = &ds->lines[i];
    const char *path = ds->paths[r->file];
    char *b = fb_malloc(r->len ? r->len : 1);
    size_t done = 0;
    while (done < r->len) {
        ssize_t k = pread(ds->fds[r->file], b + done, r->len - done, (off_t)(r->off + done));
        if (k <= 0) {
            free(b);
            return fb_fail(err, "%s:%llu: read error: %s", path, (unsigned long long)r->line,
                           k < 0 ? strerror(errno) : "file shrank since it was indexed");
        }
        done += (size_t)k;
    }
    json_error_t je;
    *out = json_loadb(b, r->len, JSON_ALLOW_NUL, &je);
    free(b);
    if (!*out)
        return fb_fail(err, "%s:%llu: invalid JSON (file changed since it was indexed?): %s", path,
                       (unsigned long long)r->line, je.text);
    return 0;
}

// ShareGPT conversations -> messages.
static json_t *sharegpt_messages(json_t *conv) {
    json_t *msgs = json_array();
    for (size_t i = 0; i < json_array_size(conv); i++) {
        json_t *e = json_array_get(conv, i);
        const char *from = json_string_value(json_object_get(e, "from")), *role = "user";
        for (size_t r = 0; r < sizeof SHAREGPT_ROLES / sizeof SHAREGPT_ROLES[0]; r++)
            if (strcmp(from, SHAREGPT_ROLES[r].from) == 0) role = SHAREGPT_ROLES[r].role;
        json_t *m = json_object();
        json_object_set_new(m, "role", json_string(role));
        json_object_set(m, "content", json_object_get(e, "value"));
        json_array_append_new(msgs, m);
    }
    return msgs;
}

// The tokenizer for a record that needs one: *tp, else loaded from o->tokenizer_path into *tp
// (the caller frees it), else an error naming the record.
static int need_tok(const fb_ds_opts *o, fb_tok **tp, const char *path, size_t line, fb_err *err) {
    if (*tp) return 0;
    if (!o->tokenizer_path)
        return fb_fail(err, "%s:%zu: this record needs a tokenizer and none was given", path, line);
    fb_err why;
    if (fb_tok_load(o->tokenizer_path, tp, &why))
        return fb_fail(err, "%s:%zu: this record needs the tokenizer: %s", path, line, why.msg);
    return 0;
}

// Encodes text, but when `budget` > 0 possibly only a prefix of it: enough to give at least
// `budget` ids, all equal to the first ids of the whole text. The prefix is cut just after
// an ASCII letter followed by a space: the byte-level pre-tokenizers in use (GPT-2, and the
// Llama-3 / MiniMax-M2 Split regex) end a letter-word there whatever follows, and BPE works
// within one pre-token, so every id before the cut is the one the whole text gives. The
// prefix grows (x4) until it gives budget + 8 ids (8: room for tokens a post-processor
// appends) or is the whole text. Only what --seq-len can use is tokenized: a 100 MB record
// costs its prefix, not gigabytes of ids.
static int encode_budget(fb_tok *t, const char *text, size_t len, int add_special, size_t budget, fb_ids *out,
                         fb_err *err) {
    size_t base = out->n;
    for (size_t want = budget ? 8 * budget + 4096 : len; budget && want < len; want *= 4) {
        size_t c = want;
        while (c + 1 < len && !(text[c] == ' ' && ((text[c - 1] | 0x20) >= 'a' && (text[c - 1] | 0x20) <= 'z')))
            c++;
        if (c + 1 >= len) break;  // no safe cut after `want`: the whole text
        if (fb_tok_encode(t, text, c, add_special, out, err)) return -1;
        if (out->n - base >= budget + 8) return 0;
        out->n = base;
    }
    return fb_tok_encode(t, text, len, add_special, out, err);
}

static int record_ids(fb_dataset *ds, size_t i, const fb_ds_opts *o, fb_tok *check, fb_tok **tp, size_t budget,
                      fb_ids *out, fb_err *err);

int fb_ds_record_ids(fb_dataset *ds, size_t i, const fb_ds_opts *o, fb_tok *t, fb_ids *out, fb_err *err) {
    fb_tok *use = t;
    int rc = record_ids(ds, i, o, t, &use, 0, out, err);
    if (use != t) fb_tok_free(use);
    return rc;
}

// fb_ds_record_ids with a token budget (0 = none): at least `budget` ids when the record has
// that many, each equal to the record's full encoding (encode_budget). `check` (the caller's
// tokenizer, may be NULL) bounds input_ids; *tp is the tokenizer for text, loaded on first need.
static int record_ids(fb_dataset *ds, size_t i, const fb_ds_opts *o, fb_tok *check, fb_tok **tp, size_t budget,
                      fb_ids *out, fb_err *err) {
    json_t *rec;
    if (fb_ds_record(ds, i, &rec, err)) return -1;
    const char *path;
    size_t line;
    fb_ds_where(ds, i, &path, &line);
    fb_err why;
    int rc = 0, kind = record_kind(rec, &why);
    switch (kind) {
    case REC_INPUT_IDS: {
        json_t *ids = json_object_get(rec, "input_ids");
        int32_t nids = check ? fb_tok_n_ids(check) : INT32_MAX;  // no tokenizer: the model's vocab bounds them
        for (size_t k = 0; k < json_array_size(ids); k++) {
            json_int_t v = json_integer_value(json_array_get(ids, k));
            if (v >= nids) {
                rc = fb_fail(err, "%s:%zu: input_ids[%zu] = %lld is outside the tokenizer's %d ids", path, line, k,
                             (long long)v, nids);
                break;
            }
            fb_ids_push(out, (int32_t)v);
            if (budget && k + 1 >= budget + 8) break;  // the rest cannot be used
        }
        break;
    }
    case REC_MESSAGES:
    case REC_CONVERSATIONS: {
        json_t *msgs = kind == REC_MESSAGES ? json_incref(json_object_get(rec, "messages"))
                                            : sharegpt_messages(json_object_get(rec, "conversations"));
        char *text = NULL;
        size_t len = 0;
        if (fb_chat_render_kw(&o->chat, msgs, json_object_get(rec, "tools"), json_object_get(rec, "chat_template_kwargs"),
                              &text, &len, &why))
            rc = fb_fail(err, "%s:%zu: %s", path, line, why.msg);
        else if (!(rc = need_tok(o, tp, path, line, err)) && encode_budget(*tp, text, len, 0, budget, out, &why))
            rc = fb_fail(err, "%s:%zu: %s", path, line, why.msg);
        free(text);
        json_decref(msgs);
        break;
    }
    case REC_TEXT: {
        json_t *s = json_object_get(rec, "text");
        if (!(rc = need_tok(o, tp, path, line, err)) &&
            encode_budget(*tp, json_string_value(s), json_string_length(s), o->text_add_special, budget, out, &why))
            rc = fb_fail(err, "%s:%zu: %s", path, line, why.msg);
        break;
    }
    default: rc = fb_fail(err, "%s:%zu: %s", path, line, why.msg);
    }
    json_decref(rec);
    return rc;
}

static uint64_t splitmix64(uint64_t *state) {
    uint64_t z = (*state += 0x9E3779B97F4A7C15ull);
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
    return z ^ (z >> 31);
}

void fb_ds_shuffle(size_t *idx, size_t n, uint64_t seed) {
    for (size_t i = 0; i < n; i++) idx[i] = i;
    uint64_t st = seed;
    for (size_t i = n; i-- > 1;) {
        size_t j = (size_t)(splitmix64(&st) % (uint64_t)(i + 1));
        size_t x = idx[i];
        idx[i] = idx[j];
        idx[j] = x;
    }
}

int fb_ds_build(fb_dataset *ds, const fb_ds_opts *o, fb_tok *t, fb_ds_set *out, fb_err *err) {
    memset(out, 0, sizeof *out);
    size_t n = ds->n;
    out->n_records = n;
    size_t *order = fb_malloc((n ? n : 1) * sizeof *order);
    if (o->no_shuffle) {
        for (size_t i = 0; i < n; i++) order[i] = i;
    } else {
        fb_ds_shuffle(order, n, o->seed);
    }
    size_t cap = 0;
    fb_ids ids = {0};
    fb_tok *use = t;  // t, or the tokenizer loaded when a record first needs one
    for (size_t k = 0; k < n && !(o->samples && out->n >= o->samples); k++) {
        ids.n = 0;
        out->n_visited++;
        if (fb_cancel_check("tokenizing the samples", err)) {
            if (use != t) fb_tok_free(use);
            fb_ids_free(&ids);
            free(order);
            fb_ds_set_free(out);
            return -1;
        }
        // Tokenize only what can be used: seq_len ids (one more tells truncation), min_len.
        size_t budget = o->seq_len ? (o->seq_len > o->min_len ? o->seq_len : o->min_len) + 1 : 0;
        if (record_ids(ds, order[k], o, t, &use, budget, &ids, err)) {
            if (use != t) fb_tok_free(use);
            fb_ids_free(&ids);
            free(order);
            fb_ds_set_free(out);
            return -1;
        }
        size_t len = ids.n;
        if (len < o->min_len) {
            out->n_skipped_short++;
            continue;
        }
        if (o->seq_len && len > o->seq_len) {
            if (o->skip_long) {
                out->n_skipped_long++;
                continue;
            }
            len = o->seq_len;
            out->n_truncated++;
        }
        if (out->n == cap) {
            cap = cap ? cap * 2 : 64;
            out->s = fb_realloc(out->s, cap * sizeof *out->s);
        }
        fb_ds_sample *s = &out->s[out->n++];
        s->ids = fb_malloc((len ? len : 1) * sizeof *s->ids);
        memcpy(s->ids, ids.v, len * sizeof *s->ids);
        s->n = len;
        s->record = order[k];
        out->total_tokens += len;
    }
    if (use != t) fb_tok_free(use);
    fb_ids_free(&ids);
    free(order);
    return 0;
}

void fb_ds_set_free(fb_ds_set *s) {
    for (size_t i = 0; i < s->n; i++) free(s->s[i].ids);
    free(s->s);
    memset(s, 0, sizeof *s);
}

int fb_ds_write_jsonl(const fb_ds_set *s, FILE *f, const char *name, fb_err *err) {
    for (size_t i = 0; i < s->n; i++) {
        fputs("{\"input_ids\": [", f);
        for (size_t k = 0; k < s->s[i].n; k++) fprintf(f, k ? ", %d" : "%d", s->s[i].ids[k]);
        fputs("]}\n", f);
    }
    if (fflush(f) != 0 || ferror(f)) return fb_fail(err, "%s: write error: %s", name, strerror(errno));
    return 0;
}

size_t fb_split_list(const char *list, char **buf, const char ***items) {
    *buf = fb_strdup(list);
    size_t n = 1;
    for (const char *p = list; *p; p++) n += *p == ',';
    *items = fb_malloc(n * sizeof(char *));
    n = 0;
    char *save = NULL;
    for (char *t = strtok_r(*buf, ",", &save); t; t = strtok_r(NULL, ",", &save)) (*items)[n++] = t;
    return n;
}

void fb_ds_tokens_free(fb_ds_tokens *t) {
    if (!t) return;
    fb_ds_set_free(&t->set);
    free(t->ids);
    free(t->starts);
    memset(t, 0, sizeof *t);
}

int fb_ds_load_tokens(const char *path_list, const fb_ds_opts *o, fb_tok *tok, int vocab,
                      fb_ds_tokens *S, fb_err *err) {
    memset(S, 0, sizeof *S);
    char *buf;
    const char **paths;
    size_t npaths = fb_split_list(path_list, &buf, &paths);
    fb_dataset *ds;
    int rc = npaths ? fb_ds_open(paths, npaths, &ds, err) : fb_fail(err, "no dataset given");
    if (rc) {
        free(buf);
        free(paths);
        return -1;
    }
    rc = fb_ds_build(ds, o, tok, &S->set, err);
    if (!rc && S->set.n == 0)
        rc = fb_fail(err, "%s: no usable sample among %zu records", paths[0], S->set.n_records);
    if (!rc) {
        S->n = S->set.n;
        S->starts = fb_malloc((S->n + 1) * sizeof(size_t));
        S->ids = fb_malloc(S->set.total_tokens * sizeof(int32_t) + 1);
        S->starts[0] = 0;
        for (size_t i = 0; i < S->n && !rc; i++) {
            const fb_ds_sample *x = &S->set.s[i];
            for (size_t t = 0; t < x->n && !rc; t++)
                if (x->ids[t] < 0 || x->ids[t] >= vocab) {
                    const char *path;
                    size_t line;
                    fb_ds_where(ds, x->record, &path, &line);
                    rc = fb_fail(err, "%s:%zu: token id %d (position %zu) is outside the model's "
                                      "vocabulary [0, %d)", path, line, x->ids[t], t, vocab);
                }
            memcpy(S->ids + S->n_tok, x->ids, x->n * sizeof(int32_t));
            S->n_tok += x->n;
            S->starts[i + 1] = S->n_tok;
        }
    }
    fb_ds_close(ds);
    free(buf);
    free(paths);
    if (rc) fb_ds_tokens_free(S);
    return rc;
}

// test_dataset.c: JSONL reading, the documented shuffle and the sample selection against
// tests/golden/tokenizer/dataset.golden.json (made by scripts/gen-tokenizer-golden.py: ids from
// transformers' apply_chat_template / tokenizers, selection from a Python re-implementation
// of dataset.h's splitmix64 Fisher-Yates); bad lines must be errors naming file and line.
#include "io/dataset.h"
#include "test.h"

#include <unistd.h>

#define TDIR GOLDEN_DIR "/tokenizer"

static char tmpdir[] = "/tmp/fb_test_dataset_XXXXXX";

static const char *write_tmp(const char *name, const char *content) {
    static char path[512];
    snprintf(path, sizeof path, "%s/%s", tmpdir, name);
    FILE *f = fopen(path, "wb");
    REQUIRE(f, "create %s", path);
    fputs(content, f);
    fclose(f);
    return path;
}

// Opening must fail with a message containing every string in want (NULL-terminated).
static void expect_open_error(const char *name, const char *content, const char *const *want) {
    const char *path = write_tmp(name, content);
    fb_dataset *ds = NULL;
    fb_err err = {{0}};
    int rc = fb_ds_open(&path, 1, &ds, &err);
    int ok = rc == -1 && ds == NULL;
    for (size_t i = 0; ok && want[i]; i++) ok = strstr(err.msg, want[i]) != NULL;
    CHECK(ok, "%s: expected an error with '%s'..., got rc %d: %s", name, want[0], rc, err.msg);
    fb_ds_close(ds);
}

// Opening succeeds, building fails naming file:line.
static void expect_build_error(fb_tok *t, const char *name, const char *content, const char *want) {
    const char *path = write_tmp(name, content);
    fb_dataset *ds = NULL;
    fb_err err = {{0}};
    REQUIRE(fb_ds_open(&path, 1, &ds, &err) == 0, "%s: %s", name, err.msg);
    fb_ds_opts o;
    fb_ds_opts_default(&o);
    o.no_shuffle = 1;
    fb_ds_set set;
    int rc = fb_ds_build(ds, &o, t, &set, &err);
    CHECK(rc == -1 && strstr(err.msg, want) && strstr(err.msg, name), "%s: expected '%s', got rc %d: %s", name, want,
          rc, err.msg);
    fb_ds_close(ds);
}

int main(void) {
    REQUIRE(mkdtemp(tmpdir), "mkdtemp");
    json_error_t je;
    json_t *g = json_load_file(TDIR "/dataset.golden.json", 0, &je);
    REQUIRE(g, "dataset.golden.json: %s", je.text);
    fb_tok *t = NULL;
    fb_err err = {{0}};
    REQUIRE(fb_tok_load(TDIR "/o200k-mini.json", &t, &err) == 0, "%s", err.msg);

    // The shuffle itself.
    json_t *sc = json_object_get(g, "shuffle_check");
    size_t n = (size_t)json_integer_value(json_object_get(sc, "n"));
    size_t idx[64];
    fb_ds_shuffle(idx, n, (uint64_t)json_integer_value(json_object_get(sc, "seed")));
    int same = 1;
    for (size_t i = 0; i < n; i++) same &= (json_integer_value(json_array_get(json_object_get(sc, "order"), i)) == (json_int_t)idx[i]);
    CHECK(same, "splitmix64 Fisher-Yates order differs from the Python reference");

    const char *path = TDIR "/sample.jsonl";
    fb_dataset *ds = NULL;
    REQUIRE(fb_ds_open(&path, 1, &ds, &err) == 0, "%s", err.msg);
    CHECK(fb_ds_count(ds) == (size_t)json_integer_value(json_object_get(g, "n_records")), "record count %zu",
          fb_ds_count(ds));

    json_t *settings = json_object_get(g, "settings");
    size_t n_samples = 0, n_samples_ok = 0, n_tok = 0;
    for (size_t si = 0; si < json_array_size(settings); si++) {
        json_t *s = json_array_get(settings, si);
        fb_ds_opts o;
        fb_ds_opts_default(&o);
        o.samples = (size_t)json_integer_value(json_object_get(s, "samples"));
        o.seq_len = (size_t)json_integer_value(json_object_get(s, "seq_len"));
        o.seed = (uint64_t)json_integer_value(json_object_get(s, "seed"));
        o.skip_long = json_is_true(json_object_get(s, "skip_long"));
        o.no_shuffle = !json_is_true(json_object_get(s, "shuffle"));
        fb_ds_set set;
        REQUIRE(fb_ds_build(ds, &o, t, &set, &err) == 0, "setting %zu: %s", si, err.msg);
        json_t *picked = json_object_get(s, "picked");
        CHECK(set.n == json_array_size(picked), "setting %zu: %zu samples, expected %zu", si, set.n,
              json_array_size(picked));
        CHECK(set.n_skipped_long == (size_t)json_integer_value(json_object_get(s, "skipped_long")) &&
                  set.n_truncated == (size_t)json_integer_value(json_object_get(s, "truncated")),
              "setting %zu: skipped_long %zu truncated %zu", si, set.n_skipped_long, set.n_truncated);
        for (size_t k = 0; k < set.n && k < json_array_size(picked); k++) {
            json_t *p = json_array_get(picked, k), *ids = json_object_get(p, "ids");
            size_t ne = json_array_size(ids), i = 0;
            while (i < ne && i < set.s[k].n && json_integer_value(json_array_get(ids, i)) == set.s[k].ids[i]) i++;
            int ok = set.s[k].record == (size_t)json_integer_value(json_object_get(p, "record")) && i == ne &&
                     set.s[k].n == ne;
            n_samples++;
            n_samples_ok += (size_t)ok;
            n_tok += ne;
            CHECK(ok, "setting %zu sample %zu: record %zu (expected %lld), ids differ at %zu of %zu", si, k,
                  set.s[k].record, (long long)json_integer_value(json_object_get(p, "record")), i, ne);
        }
        fb_ds_set_free(&set);
    }
    printf("dataset: %zu/%zu selected samples identical (%zu tokens) over %zu settings\n", n_samples_ok, n_samples,
           n_tok, json_array_size(settings));

    // --dump-tokens format.
    {
        fb_ds_opts o;
        fb_ds_opts_default(&o);
        o.samples = 2;
        o.seq_len = 5;
        fb_ds_set set;
        REQUIRE(fb_ds_build(ds, &o, t, &set, &err) == 0, "%s", err.msg);
        char *mem = NULL;
        size_t memlen = 0;
        FILE *f = open_memstream(&mem, &memlen);
        CHECK(fb_ds_write_jsonl(&set, f, "mem", &err) == 0, "write: %s", err.msg);
        fclose(f);
        char expect[512];
        int w = 0;
        for (size_t k = 0; k < set.n; k++) {
            w += snprintf(expect + w, sizeof expect - (size_t)w, "{\"input_ids\": [");
            for (size_t i = 0; i < set.s[k].n; i++)
                w += snprintf(expect + w, sizeof expect - (size_t)w, i ? ", %d" : "%d", set.s[k].ids[i]);
            w += snprintf(expect + w, sizeof expect - (size_t)w, "]}\n");
        }
        CHECK(set.n == 2 && set.total_tokens == 10 && strcmp(mem, expect) == 0, "dump: %s", mem);
        free(mem);
        fb_ds_set_free(&set);
    }

    // Two files: records numbered across them, located by file and line.
    {
        const char *two[] = {path, path};
        fb_dataset *d2 = NULL;
        REQUIRE(fb_ds_open(two, 2, &d2, &err) == 0, "%s", err.msg);
        CHECK(fb_ds_count(d2) == 2 * fb_ds_count(ds), "two files: %zu", fb_ds_count(d2));
        const char *p1, *p2;
        size_t l1, l2;
        fb_ds_where(ds, 5, &p1, &l1);
        fb_ds_where(d2, fb_ds_count(ds) + 5, &p2, &l2);
        CHECK(l1 == l2 && l1 > 6, "line numbers count blank lines: %zu %zu", l1, l2);  // sample.jsonl has blank lines
        fb_ds_close(d2);
    }

    // Bad lines.
    expect_open_error("bad_json.jsonl", "{\"text\": \"a\"}\n\n{\"text\": \"b\"\n", (const char *const[]){"bad_json.jsonl:3:", "invalid JSON", NULL});
    expect_open_error("no_key.jsonl", "{\"text\": \"a\"}\n{\"prompt\": \"b\"}\n", (const char *const[]){"no_key.jsonl:2:", "no 'input_ids'", NULL});
    expect_open_error("not_obj.jsonl", "[1, 2]\n", (const char *const[]){"not_obj.jsonl:1:", "not a JSON object", NULL});
    expect_open_error("role.jsonl", "{\"messages\": [{\"role\": \"human\", \"content\": \"x\"}]}\n", (const char *const[]){"role.jsonl:1:", "unknown role 'human'", NULL});
    expect_open_error("ids.jsonl", "{\"input_ids\": [1, -2]}\n", (const char *const[]){"ids.jsonl:1:", "input_ids[1]", NULL});
    expect_open_error("text_type.jsonl", "{\"text\": 5}\n", (const char *const[]){"text_type.jsonl:1:", "'text' must be a string", NULL});
    expect_open_error("sharegpt.jsonl", "{\"conversations\": [{\"from\": \"human\"}]}\n", (const char *const[]){"sharegpt.jsonl:1:", "'value'", NULL});
    {
        const char *none = "/nonexistent/x.jsonl";
        fb_dataset *d3 = NULL;
        CHECK(fb_ds_open(&none, 1, &d3, &err) == -1 && strstr(err.msg, none), "missing file: %s", err.msg);
    }
    expect_build_error(t, "range.jsonl", "{\"input_ids\": [1, 2]}\n{\"input_ids\": [99999999]}\n", "range.jsonl:2:");
    expect_build_error(t, "tool.jsonl",
                       "{\"messages\": [{\"role\": \"user\", \"content\": \"u\"}, {\"role\": \"tool\", \"content\": \"r\"}]}\n",
                       "tool.jsonl:1:");

    // Empty samples are skipped (min_len 1), CRLF and a BOM are accepted.
    {
        const char *p = write_tmp("edge.jsonl", "\xEF\xBB\xBF{\"text\": \"\"}\r\n{\"text\": \"hi\"}\r\n  \r\n");
        fb_dataset *d4 = NULL;
        REQUIRE(fb_ds_open(&p, 1, &d4, &err) == 0, "%s", err.msg);
        fb_ds_opts o;
        fb_ds_opts_default(&o);
        fb_ds_set set;
        REQUIRE(fb_ds_build(d4, &o, t, &set, &err) == 0, "%s", err.msg);
        CHECK(fb_ds_count(d4) == 2 && set.n == 1 && set.n_skipped_short == 1 && set.s[0].record == 1, "edge: %zu %zu",
              fb_ds_count(d4), set.n);
        fb_ds_set_free(&set);
        fb_ds_close(d4);
    }

    fb_ds_close(ds);
    fb_tok_free(t);
    json_decref(g);
    // Clean up the temporary files.
    static const char *names[] = {"bad_json.jsonl", "no_key.jsonl", "not_obj.jsonl", "role.jsonl", "ids.jsonl",
                                  "text_type.jsonl", "sharegpt.jsonl", "range.jsonl", "tool.jsonl", "edge.jsonl"};
    for (size_t i = 0; i < sizeof names / sizeof names[0]; i++) {
        char p[600];
        snprintf(p, sizeof p, "%s/%s", tmpdir, names[i]);
        unlink(p);
    }
    rmdir(tmpdir);
    TEST_MAIN_END();
}

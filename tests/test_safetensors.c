// test_safetensors.c: the reader accepts valid files and rejects each malformed case with its
// own message (one case per loader rule); checkpoint directories and the index; the staged
// sharded writer (layout, alignment, shard cut, manifest, resume, refusals).
#include <dirent.h>
#include <sys/stat.h>
#include <unistd.h>

#include "io/checkpoint.h"
#include "st_build.h"
#include "test.h"

static char dir[256];

static char *P(const char *name) {
    static char buf[4][512];
    static int k;
    k = (k + 1) % 4;
    snprintf(buf[k], sizeof buf[k], "%s/%s", dir, name);
    return buf[k];
}

// Opens path and expects failure with `want` in the message (or success when want is NULL).
static void expect_open(const char *label, const char *path, const char *want) {
    fb_st_file *f = NULL;
    fb_err e = {{0}};
    int rc = fb_st_open(path, &f, &e);
    if (!want) {
        CHECK(rc == 0, "%s: should open, got: %s", label, e.msg);
    } else {
        CHECK(rc != 0, "%s: should be rejected", label);
        CHECK(rc == 0 || strstr(e.msg, want) != NULL, "%s: message '%s' lacks '%s'", label, e.msg, want);
        CHECK(rc == 0 || strstr(e.msg, path) != NULL, "%s: message '%s' does not name the file", label, e.msg);
    }
    fb_st_close(f);
}

static void reader_rules(void) {
    const char *ok = "{\"__metadata__\":{\"format\":\"pt\"},\"b\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[4,12]},"
                     "\"a\":{\"dtype\":\"BF16\",\"shape\":[2],\"data_offsets\":[0,4]}}";
    stb_write_raw(P("ok.st"), ok, -1, NULL, 12, 1);
    expect_open("valid file", P("ok.st"), NULL);
    fb_st_file *f;
    fb_err e;
    REQUIRE(fb_st_open(P("ok.st"), &f, &e) == 0, "%s", e.msg);
    CHECK(f->n_tensors == 2 && !strcmp(f->tensors[0].name, "a"), "tensors sorted by offset");
    CHECK(fb_st_find(f, "b") && fb_st_find(f, "b")->offset == 8 + strlen(ok) + 4, "absolute offset");
    CHECK(fb_st_meta(f, "format") && !strcmp(fb_st_meta(f, "format"), "pt"), "metadata");
    unsigned char buf[8];
    CHECK(fb_st_read(f, fb_st_find(f, "b"), 0, buf, 8, &e) == 0 && buf[0] == 1, "read");
    CHECK(fb_st_read(f, fb_st_find(f, "b"), 4, buf, 8, &e) != 0 && strstr(e.msg, "leaves the tensor"), "read past end");
    fb_st_close(f);

    // 0-d scalars, zero-element tensors, empty header, every dtype name
    stb_write_raw(P("scalar.st"),
                  "{\"s\":{\"dtype\":\"F64\",\"shape\":[],\"data_offsets\":[0,8]},"
                  "\"z\":{\"dtype\":\"F8_E8M0\",\"shape\":[2,0],\"data_offsets\":[8,8]}}", -1, NULL, 8, 0);
    expect_open("0-d and zero-element tensors", P("scalar.st"), NULL);
    stb_write_raw(P("empty.st"), "{}", -1, NULL, 0, 0);
    expect_open("empty header", P("empty.st"), NULL);
    stb_write_raw(P("padded.st"), "{}      ", -1, NULL, 0, 0);
    expect_open("header padded with spaces", P("padded.st"), NULL);
    const char *dts[] = {"BOOL", "U8", "I8", "F8_E5M2", "F8_E4M3", "F8_E8M0", "I16", "U16", "F16", "BF16",
                         "I32", "U32", "F32", "I64", "U64", "F64"};
    for (size_t i = 0; i < sizeof dts / sizeof *dts; i++) {
        fb_dtype d;
        CHECK(fb_dtype_from_name(dts[i], &d) == 0 && !strcmp(fb_dtypes[d].name, dts[i]), "dtype %s", dts[i]);
    }

    // One case per rule.
    FILE *tiny = fopen(P("tiny.st"), "wb");
    fwrite("abc", 1, 3, tiny);
    fclose(tiny);
    expect_open("shorter than 8 bytes", P("tiny.st"), "header too small");
    stb_write_raw(P("huge.st"), "{}", 100000001, NULL, 0, 0);
    expect_open("header length over 100 MB", P("huge.st"), "header too large");
    stb_write_raw(P("beyond.st"), "{}", 4000, NULL, 0, 0);
    expect_open("header beyond the file", P("beyond.st"), "invalid header length");
    stb_write_raw(P("utf8.st"), "{\"\xc3\x28\":{\"dtype\":\"U8\",\"shape\":[1],\"data_offsets\":[0,1]}}", -1, NULL, 1, 0);
    expect_open("invalid UTF-8", P("utf8.st"), "not valid UTF-8");
    stb_write_raw(P("overlong.st"), "{\"\xc0\xaf\":{\"dtype\":\"U8\",\"shape\":[1],\"data_offsets\":[0,1]}}", -1, NULL, 1, 0);
    expect_open("overlong UTF-8", P("overlong.st"), "not valid UTF-8");
    stb_write_raw(P("json.st"), "{\"a\":{\"dtype\":\"U8\",", -1, NULL, 0, 0);
    expect_open("invalid JSON", P("json.st"), "not valid JSON");
    stb_write_raw(P("array.st"), "[1, 2]  ", -1, NULL, 0, 0);
    expect_open("header not an object", P("array.st"), "not a JSON object");
    stb_write_raw(P("dup.st"),
                  "{\"a\":{\"dtype\":\"U8\",\"shape\":[1],\"data_offsets\":[0,1]},"
                  "\"a\":{\"dtype\":\"U8\",\"shape\":[1],\"data_offsets\":[1,2]}}", -1, NULL, 2, 0);
    expect_open("duplicate tensor name", P("dup.st"), "duplicate");
    stb_write_raw(P("dtype.st"), "{\"a\":{\"dtype\":\"F128\",\"shape\":[1],\"data_offsets\":[0,16]}}", -1, NULL, 16, 0);
    expect_open("unknown dtype", P("dtype.st"), "unknown dtype 'F128'");
    stb_write_raw(P("missing.st"), "{\"a\":{\"dtype\":\"U8\",\"data_offsets\":[0,1]}}", -1, NULL, 1, 0);
    expect_open("missing shape", P("missing.st"), "missing field 'shape'");
    stb_write_raw(P("extra.st"), "{\"a\":{\"dtype\":\"U8\",\"shape\":[1],\"data_offsets\":[0,1],\"x\":1}}", -1, NULL, 1, 0);
    expect_open("unknown field", P("extra.st"), "unknown field 'x'");
    stb_write_raw(P("negshape.st"), "{\"a\":{\"dtype\":\"U8\",\"shape\":[-1],\"data_offsets\":[0,1]}}", -1, NULL, 1, 0);
    expect_open("negative dimension", P("negshape.st"), "shape[0] is not a non-negative integer");
    stb_write_raw(P("fshape.st"), "{\"a\":{\"dtype\":\"U8\",\"shape\":[1.5],\"data_offsets\":[0,1]}}", -1, NULL, 1, 0);
    expect_open("fractional dimension", P("fshape.st"), "shape[0] is not a non-negative integer");
    stb_write_raw(P("offs.st"), "{\"a\":{\"dtype\":\"U8\",\"shape\":[1],\"data_offsets\":[0]}}", -1, NULL, 1, 0);
    expect_open("data_offsets of one element", P("offs.st"), "data_offsets is not [begin, end]");
    stb_write_raw(P("rev.st"), "{\"a\":{\"dtype\":\"U8\",\"shape\":[0],\"data_offsets\":[1,0]}}", -1, NULL, 1, 0);
    expect_open("end before begin", P("rev.st"), "end 0 < begin 1");
    stb_write_raw(P("size.st"), "{\"a\":{\"dtype\":\"F32\",\"shape\":[3],\"data_offsets\":[0,8]}}", -1, NULL, 8, 0);
    expect_open("size not shape x width", P("size.st"), "need 12");
    stb_write_raw(P("ovf.st"),
                  "{\"a\":{\"dtype\":\"F64\",\"shape\":[4294967296,4294967296],\"data_offsets\":[0,8]}}", -1, NULL, 8, 0);
    expect_open("shape product overflow", P("ovf.st"), "overflows");
    stb_write_raw(P("gap.st"),
                  "{\"a\":{\"dtype\":\"U8\",\"shape\":[1],\"data_offsets\":[0,1]},"
                  "\"b\":{\"dtype\":\"U8\",\"shape\":[1],\"data_offsets\":[2,3]}}", -1, NULL, 3, 0);
    expect_open("gap between tensors", P("gap.st"), "gap");
    stb_write_raw(P("overlap.st"),
                  "{\"a\":{\"dtype\":\"U16\",\"shape\":[1],\"data_offsets\":[0,2]},"
                  "\"b\":{\"dtype\":\"U8\",\"shape\":[1],\"data_offsets\":[1,2]}}", -1, NULL, 2, 0);
    expect_open("overlapping tensors", P("overlap.st"), "overlap");
    stb_write_raw(P("start.st"), "{\"a\":{\"dtype\":\"U8\",\"shape\":[1],\"data_offsets\":[1,2]}}", -1, NULL, 2, 0);
    expect_open("first tensor not at 0", P("start.st"), "begins at 1");
    stb_write_raw(P("trail.st"), "{\"a\":{\"dtype\":\"U8\",\"shape\":[1],\"data_offsets\":[0,1]}}", -1, NULL, 5, 0);
    expect_open("trailing bytes", P("trail.st"), "trailing bytes");
    stb_write_raw(P("trunc.st"), "{\"a\":{\"dtype\":\"U8\",\"shape\":[100],\"data_offsets\":[0,100]}}", -1, NULL, 50, 0);
    expect_open("truncated payload", P("trunc.st"), "truncated");
    stb_write_raw(P("meta.st"), "{\"__metadata__\":{\"format\":1}}", -1, NULL, 0, 0);
    expect_open("non-string metadata", P("meta.st"), "__metadata__ value of 'format' is not a string");
    expect_open("missing file", P("nope.st"), "cannot open");
}

static void mk_shard(const char *name, const char *t1, const char *t2) {
    char h[512];
    snprintf(h, sizeof h,
             "{\"%s\":{\"dtype\":\"U8\",\"shape\":[2],\"data_offsets\":[0,2]},"
             "\"%s\":{\"dtype\":\"U8\",\"shape\":[2],\"data_offsets\":[2,4]}}", t1, t2);
    stb_write_raw(P(name), h, -1, NULL, 4, 7);
}

static void expect_ckpt(const char *label, const char *path, const char *want) {
    fb_ckpt *c = NULL;
    fb_err e = {{0}};
    int rc = fb_ckpt_open(path, &c, &e);
    if (!want) CHECK(rc == 0, "%s: should open: %s", label, e.msg);
    else CHECK(rc != 0 && strstr(e.msg, want), "%s: want '%s', got rc %d '%s'", label, want, rc, e.msg);
    fb_ckpt_close(c);
}

static void checkpoint_dirs(void) {
    char sub[300];
    snprintf(sub, sizeof sub, "%s/ck", dir);
    mkdir(sub, 0755);
    mk_shard("ck/m-1.safetensors", "a", "b");
    mk_shard("ck/m-2.safetensors", "c", "d");
    stb_write_text(P("ck/config.json"), "{\"model_type\":\"x\"}");
    const char *good = "{\"metadata\":{\"total_size\":8},\"weight_map\":{\"a\":\"m-1.safetensors\",\"b\":\"m-1.safetensors\","
                       "\"c\":\"m-2.safetensors\",\"d\":\"m-2.safetensors\"}}";
    stb_write_text(P("ck/model.safetensors.index.json"), good);
    expect_ckpt("valid sharded checkpoint", sub, NULL);
    fb_ckpt *c;
    fb_err e;
    if (fb_ckpt_open(sub, &c, &e) == 0) {
        CHECK(c->n_tensors == 4 && c->n_files == 2 && c->config, "4 tensors in 2 files with config");
        CHECK(fb_ckpt_find(c, "d") && fb_ckpt_find(c, "d")->file == 1, "lookup");
        fb_ckpt_close(c);
    }
    stb_write_text(P("ck/model.safetensors.index.json"),
                   "{\"weight_map\":{\"a\":\"m-1.safetensors\",\"b\":\"m-2.safetensors\",\"c\":\"m-2.safetensors\",\"d\":\"m-2.safetensors\"}}");
    expect_ckpt("index names the wrong file", sub, "tensor b is listed in m-2.safetensors but");
    stb_write_text(P("ck/model.safetensors.index.json"),
                   "{\"weight_map\":{\"a\":\"m-1.safetensors\",\"b\":\"m-1.safetensors\",\"c\":\"m-2.safetensors\"}}");
    expect_ckpt("tensor missing from the index", sub, "tensor d in m-2.safetensors is missing from the index");
    stb_write_text(P("ck/model.safetensors.index.json"),
                   "{\"weight_map\":{\"a\":\"m-1.safetensors\",\"b\":\"m-1.safetensors\",\"x\":\"m-1.safetensors\","
                   "\"c\":\"m-2.safetensors\",\"d\":\"m-2.safetensors\"}}");
    expect_ckpt("index lists a tensor the file lacks", sub, "tensor x is listed in m-1.safetensors but that file does not hold it");
    stb_write_text(P("ck/model.safetensors.index.json"), good);
    mk_shard("ck/m-3.safetensors", "e", "f");
    expect_ckpt("shard not in the index", sub, "shard m-3.safetensors is in the directory but not in the index");
    mk_shard("ck/m-3.safetensors", "a", "f");
    stb_write_text(P("ck/model.safetensors.index.json"),
                   "{\"weight_map\":{\"a\":\"m-1.safetensors\",\"b\":\"m-1.safetensors\",\"c\":\"m-2.safetensors\","
                   "\"d\":\"m-2.safetensors\",\"f\":\"m-3.safetensors\"}}");
    expect_ckpt("tensor in two shards", sub, "tensor a is in both");
    unlink(P("ck/m-3.safetensors"));
    unlink(P("ck/model.safetensors.index.json"));
    expect_ckpt("two shards, no index", sub, "no model.safetensors.index.json");
    stb_write_text(P("ck/model.safetensors.index.json"), "{\"weight_map\": [1]}");
    expect_ckpt("index without weight_map object", sub, "no \"weight_map\" object");
    stb_write_text(P("ck/model.safetensors.index.json"), good);
    stb_write_text(P("ck/config.json"), "{\"model_type\":");
    expect_ckpt("broken config.json", sub, "config.json: invalid JSON");
    expect_ckpt("single file as a checkpoint", P("ok.st"), NULL);
}

static int count_files(const char *d) {
    DIR *dd = opendir(d);
    if (!dd) return -1;
    int n = 0;
    struct dirent *e;
    while ((e = readdir(dd)))
        if (e->d_name[0] != '.') n++;
    closedir(dd);
    return n;
}

static void writer(void) {
    char dst[300], src[300];
    snprintf(dst, sizeof dst, "%s/out", dir);
    snprintf(src, sizeof src, "%s/ck", dir);
    fb_err e = {{0}};
    const char *mk[] = {"fourbit.test"}, *mv[] = {"v\"1"};
    fb_cw_opts o = {.max_shard_size = 1500, .tool = "test", .n_meta = 1, .meta_keys = mk, .meta_vals = mv};
    fb_cw *w = fb_cw_create(dst, src, &o, &e);
    REQUIRE(w, "create: %s", e.msg);
    int64_t s1[] = {1}, s2[] = {2}, s3[] = {256};
    CHECK(fb_cw_add(w, "u8", FB_U8, 1, s2, &e) == 0, "add");           // 2 bytes
    CHECK(fb_cw_add(w, "f32", FB_F32, 1, s1, &e) == 1, "add");          // 4 bytes
    CHECK(fb_cw_add(w, "big", FB_F32, 1, s3, &e) == 2, "add");          // 1024 bytes
    CHECK(fb_cw_add(w, "big2", FB_BF16, 1, s3, &e) == 3, "add");        // 512 bytes -> second shard
    CHECK(fb_cw_add(w, "u8", FB_U8, 1, s2, &e) < 0 && strstr(e.msg, "declared twice"), "duplicate output name");
    int ns = fb_cw_plan(w, &e);
    CHECK(ns == 2, "two shards under a 1500-byte limit, got %d", ns);
    // big2 is 512 bytes of BF16 written with 1024-byte pattern writes: write it by hand below.
    int rc = 0;
    for (int s = 0; s < ns && !rc; s++) {
        REQUIRE(fb_cw_shard_begin(w, s, &e) == 0, "%s", e.msg);
        const int *idx;
        int n = fb_cw_shard_tensors(w, s, &idx);
        if (s == 0) CHECK(n == 3 && idx[0] == 1 && idx[1] == 2 && idx[2] == 0, "layout by alignment: f32 first, u8 last");
        for (int k = 0; k < n; k++) {
            unsigned char buf[1024];
            size_t len = idx[k] == 0 ? 2 : idx[k] == 1 ? 4 : idx[k] == 2 ? 1024 : 512;
            memset(buf, 0x10 + idx[k], sizeof buf);
            rc |= fb_cw_write(w, idx[k], 0, buf, len, &e);
        }
        if (s == 1) CHECK(fb_cw_write(w, 3, 500, "xxxxxxxxxxxxxxxx", 16, &e) != 0 && strstr(e.msg, "past its"), "write past a tensor");
        rc |= fb_cw_shard_end(w, s, &e);
    }
    CHECK(rc == 0, "writes: %s", e.msg);
    CHECK(fb_cw_finish(w, &e) == 0, "finish: %s", e.msg);
    CHECK(fb_cw_commit(w, &e) == 0, "commit: %s", e.msg);
    fb_ckpt *c;
    REQUIRE(fb_ckpt_open(dst, &c, &e) == 0, "reopen output: %s", e.msg);
    CHECK(c->n_files == 2 && c->has_index && c->n_tensors == 4, "2 shards + index");
    for (size_t i = 0; i < c->n_tensors; i++) {
        const fb_st_tensor *t = c->tensors[i].t;
        CHECK(t->offset % (uint64_t)(fb_dtypes[t->dtype].bits / 8) == 0, "%s naturally aligned", t->name);
    }
    const fb_st_file *f0 = c->files[0];
    CHECK(f0->data_start % 8 == 0, "header padded to 8");
    CHECK(fb_st_meta(f0, "format") && !strcmp(fb_st_meta(f0, "format"), "pt"), "format pt");
    CHECK(fb_st_meta(f0, "fourbit.test") && !strcmp(fb_st_meta(f0, "fourbit.test"), "v\"1"), "provenance escaped");
    json_t *ts = json_object_get(json_object_get(c->index_json, "metadata"), "total_size");
    CHECK(json_integer_value(ts) == 2 + 4 + 1024 + 512, "total_size = payload bytes");
    fb_ckpt_close(c);
    char mp[400];
    snprintf(mp, sizeof mp, "%s/fourbit-manifest.json", dst);
    json_t *man = json_load_file(mp, 0, NULL);
    json_t *fe = json_object_get(json_object_get(man, "files"), "model-00001-of-00002.safetensors");
    char hex[33];
    char sp[400];
    snprintf(sp, sizeof sp, "%s/model-00001-of-00002.safetensors", dst);
    CHECK(fb_file_xxh128(sp, hex, &e) == 0 && fe && !strcmp(hex, json_string_value(json_object_get(fe, "xxh3_128"))),
          "manifest digest matches the file");
    CHECK(json_object_get(json_object_get(man, "files"), "model.safetensors.index.json") != NULL, "index in manifest");
    json_decref(man);
    char stg[400];
    snprintf(stg, sizeof stg, "%s.partial", dst);
    CHECK(access(stg, F_OK) != 0, "no staging directory left after commit");

    // Refusals.
    CHECK(fb_cw_create(dst, src, &o, &e) == NULL && strstr(e.msg, "not empty"), "non-empty dst without force: %s", e.msg);
    char inside[400];
    snprintf(inside, sizeof inside, "%s/sub", src);
    CHECK(fb_cw_create(inside, src, &o, &e) == NULL && strstr(e.msg, "inside"), "dst inside src: %s", e.msg);
    CHECK(fb_cw_create(src, src, &o, &e) == NULL && strstr(e.msg, "inside"), "dst equal to src: %s", e.msg);
    CHECK(fb_cw_create(dir, src, &o, &e) == NULL && strstr(e.msg, "inside the output"), "src inside dst: %s", e.msg);
    char noparent[400];
    snprintf(noparent, sizeof noparent, "%s/no/such/dir", dir);
    CHECK(fb_cw_create(noparent, NULL, &o, &e) == NULL && strstr(e.msg, "does not exist"), "missing parent");

    // Abort leaves nothing behind; resume keeps verified shards.
    char d2[300];
    snprintf(d2, sizeof d2, "%s/out2", dir);
    fb_cw *w2 = fb_cw_create(d2, NULL, &o, &e);
    REQUIRE(w2, "%s", e.msg);
    fb_cw_add(w2, "big", FB_F32, 1, s3, &e);
    fb_cw_add(w2, "big2", FB_F32, 1, s3, &e);
    fb_cw_plan(w2, &e);
    fb_cw_shard_begin(w2, 0, &e);
    unsigned char buf[1024];
    memset(buf, 3, sizeof buf);
    fb_cw_write(w2, 0, 0, buf, 1024, &e);
    CHECK(fb_cw_shard_end(w2, 0, &e) == 0, "%s", e.msg);
    fb_cw_detach(w2);  // as if killed after shard 1
    snprintf(stg, sizeof stg, "%s.partial", d2);
    CHECK(count_files(stg) >= 2, "staging kept for resume");
    o.resume = 1;
    w2 = fb_cw_create(d2, NULL, &o, &e);
    REQUIRE(w2, "%s", e.msg);
    fb_cw_add(w2, "big", FB_F32, 1, s3, &e);
    fb_cw_add(w2, "big2", FB_F32, 1, s3, &e);
    fb_cw_plan(w2, &e);
    CHECK(fb_cw_shard_begin(w2, 0, &e) == 1, "verified shard skipped on resume");
    CHECK(fb_cw_shard_begin(w2, 1, &e) == 0, "unfinished shard rewritten");
    fb_cw_write(w2, 1, 0, buf, 1024, &e);
    CHECK(fb_cw_shard_end(w2, 1, &e) == 0, "%s", e.msg);
    CHECK(fb_cw_finish(w2, &e) == 0 && fb_cw_commit(w2, &e) == 0, "%s", e.msg);
    CHECK(count_files(d2) == 4, "2 shards + index + manifest");

    // A shard missing bytes is refused at shard end.
    char d3[300];
    snprintf(d3, sizeof d3, "%s/out3", dir);
    o.resume = 0;
    fb_cw *w3 = fb_cw_create(d3, NULL, &o, &e);
    fb_cw_add(w3, "big", FB_F32, 1, s3, &e);
    fb_cw_plan(w3, &e);
    fb_cw_shard_begin(w3, 0, &e);
    fb_cw_write(w3, 0, 0, buf, 1000, &e);
    CHECK(fb_cw_shard_end(w3, 0, &e) != 0 && strstr(e.msg, "1000 of 1024"), "short shard refused: %s", e.msg);
    fb_cw_abort(w3);
    snprintf(stg, sizeof stg, "%s.partial", d3);
    CHECK(access(stg, F_OK) != 0 && access(d3, F_OK) != 0, "abort leaves nothing behind");
}

int main(void) {
    snprintf(dir, sizeof dir, "/tmp/fb-test-st-XXXXXX");
    REQUIRE(mkdtemp(dir), "mkdtemp");
    reader_rules();
    checkpoint_dirs();
    writer();
    char cmd[400];
    snprintf(cmd, sizeof cmd, "rm -rf '%s'", dir);
    if (system(cmd)) fprintf(stderr, "cleanup failed\n");
    TEST_MAIN_END();
}

// test_fp8_cli.c: fp8-dequant and st-diff as a user runs them. Golden output via st-diff;
// each refusal (dst inside/equal to src, non-empty dst, missing or mis-shaped scale, NaN code,
// truncated shard, lying header, full disk) exits 1 naming the file and tensor and leaves
// nothing behind; a run killed with SIGKILL and resumed gives byte-identical output; the
// input is never modified.
#include <dirent.h>
#include <signal.h>
#include <sys/mount.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include "io/checkpoint.h"
#include "st_build.h"
#include "test.h"

static char dir[256], bin[256];

static int run(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
static int run(const char *fmt, ...) {
    char cmd[4096];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(cmd, sizeof cmd, fmt, ap);
    va_end(ap);
    char full[4500];
    snprintf(full, sizeof full, "%s >%s/log 2>&1", cmd, dir);
    int st = system(full);
    return WIFEXITED(st) ? WEXITSTATUS(st) : 128 + WTERMSIG(st);
}

static int log_has(const char *s) {
    char p[300];
    snprintf(p, sizeof p, "%s/log", dir);
    FILE *f = fopen(p, "r");
    if (!f) return 0;
    static char buf[1 << 16];
    size_t n = fread(buf, 1, sizeof buf - 1, f);
    buf[n] = 0;
    fclose(f);
    int ok = strstr(buf, s) != NULL;
    if (!ok) fprintf(stderr, "    log: %s", buf);
    return ok;
}

static int exists(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
static int exists(const char *fmt, ...) {
    char p[600];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(p, sizeof p, fmt, ap);
    va_end(ap);
    return access(p, F_OK) == 0;
}

// A one-shard FP8 checkpoint in `name` with weight "w.weight" [rows, cols] and the scale
// header given by the caller (or the right one), plus config.json.
static void make_fp8(const char *name, int rows, int cols, const char *scale_decl, int scale_elems, unsigned char fill,
                     int omit_scale) {
    char d[400], h[1024], p[500];
    snprintf(d, sizeof d, "%s/%s", dir, name);
    mkdir(d, 0755);
    size_t wbytes = (size_t)rows * (size_t)cols;
    if (omit_scale)
        snprintf(h, sizeof h, "{\"w.weight\":{\"dtype\":\"F8_E4M3\",\"shape\":[%d,%d],\"data_offsets\":[0,%zu]}}", rows,
                 cols, wbytes);
    else
        snprintf(h, sizeof h,
                 "{\"w.weight_scale_inv\":{\"dtype\":\"F32\",\"shape\":%s,\"data_offsets\":[0,%d]},"
                 "\"w.weight\":{\"dtype\":\"F8_E4M3\",\"shape\":[%d,%d],\"data_offsets\":[%d,%zu]}}",
                 scale_decl, 4 * scale_elems, rows, cols, 4 * scale_elems, 4 * (size_t)scale_elems + wbytes);
    size_t total = (omit_scale ? 0 : 4 * (size_t)scale_elems) + wbytes;
    unsigned char *buf = fb_malloc(total);
    for (int i = 0; !omit_scale && i < scale_elems; i++) {
        float one = 0.5f;
        memcpy(buf + 4 * i, &one, 4);
    }
    memset(buf + (omit_scale ? 0 : 4 * (size_t)scale_elems), fill, wbytes);
    snprintf(p, sizeof p, "%s/model.safetensors", d);
    stb_write_raw(p, h, -1, buf, total, 0);
    free(buf);
    snprintf(p, sizeof p, "%s/config.json", d);
    stb_write_text(p, "{\"model_type\":\"t\",\"quantization_config\":{\"quant_method\":\"fp8\",\"weight_block_size\":[128,128]}}");
}

static void refusal(const char *label, const char *src_name, const char *want) {
    int rc = run("%s/fp8-dequant -q %s/%s %s/out-r", bin, dir, src_name, dir);
    CHECK(rc == 1, "%s: exit %d, want 1", label, rc);
    CHECK(log_has(want), "%s: message lacks '%s'", label, want);
    CHECK(!exists("%s/out-r", dir) && !exists("%s/out-r.partial", dir), "%s: output left behind", label);
}

static void golden(void) {
    int rc = run("%s/fp8-dequant -q --json --max-shard-size 400KB %s/minimax %s/o1", bin, GOLDEN_DIR "/fp8", dir);
    CHECK(rc == 0, "dequant golden minimax: exit %d", rc);
    CHECK(log_has("\"fp8_weights\":20"), "json summary");
    rc = run("%s/st-diff --common %s/o1 %s/minimax_expected.safetensors", bin, dir, GOLDEN_DIR "/fp8");
    CHECK(rc == 0, "output equals PyTorch's dequant: st-diff exit %d", rc);
    CHECK(log_has("20 equal, 0 different"), "all 20 FP8 weights compared");
    // unquantized tensors copied unchanged (router gate and bias stay F32)
    rc = run("%s/st-diff --common %s/o1 %s/minimax", bin, dir, GOLDEN_DIR "/fp8");
    CHECK(rc == 1 && log_has("15 equal, 20 different, 0 only in A"), "copied tensors identical, scales dropped");
    CHECK(!exists("%s/o1/model-00001-of-00001.safetensors", dir) && exists("%s/o1/model-00002-of-00005.safetensors", dir),
          "re-sharded under --max-shard-size (5 shards of <= 400 kB)");
    CHECK(exists("%s/o1/tokenizer_config.json", dir) && exists("%s/o1/generation_config.json", dir), "side files copied");
    char p[400];
    snprintf(p, sizeof p, "%s/o1/config.json", dir);
    json_t *cfg = json_load_file(p, 0, NULL);
    CHECK(cfg && !json_object_get(cfg, "quantization_config") && json_object_get(cfg, "num_local_experts"),
          "config.json: quantization_config removed, the rest kept");
    json_decref(cfg);
    rc = run("%s/fp8-dequant -q %s/deepseek %s/o2", bin, GOLDEN_DIR "/fp8", dir);
    CHECK(rc == 0, "dequant deepseek partial tiles: exit %d", rc);
    rc = run("%s/st-diff --common %s/o2 %s/deepseek_expected.safetensors", bin, dir, GOLDEN_DIR "/fp8");
    CHECK(rc == 0, "DeepSeek partial edge tiles equal PyTorch's: exit %d", rc);
    // dry run writes nothing
    rc = run("%s/fp8-dequant --dry-run %s/minimax %s/o3", bin, GOLDEN_DIR "/fp8", dir);
    CHECK(rc == 0 && log_has("dequantize 20 FP8 weights") && !exists("%s/o3", dir) && !exists("%s/o3.partial", dir),
          "dry run");
    CHECK(run("%s/fp8-dequant --help", bin) == 0 && log_has("--resume"), "--help");
    CHECK(run("%s/fp8-dequant --threads 0 a b", bin) == 2 && log_has("--threads"), "bad --threads is a usage error");
    CHECK(run("%s/fp8-dequant onlyone", bin) == 2, "missing DST is a usage error");
    CHECK(run("%s/fp8-dequant --bogus a b", bin) == 2 && log_has("unknown option"), "unknown option");
    CHECK(run("%s/st-diff %s/o1 %s/o1", bin, dir, dir) == 0, "st-diff of a checkpoint with itself");
    CHECK(run("%s/st-diff %s/o1 %s/nonexistent", bin, dir, dir) == 2, "st-diff unreadable input exits 2");
}

static void refusals(void) {
    make_fp8("good", 256, 256, "[2,2]", 4, 0x38, 0);
    struct stat good_mtime;
    char gp[400];
    snprintf(gp, sizeof gp, "%s/good/model.safetensors", dir);
    stat(gp, &good_mtime);
    run("cp %s %s/good.copy", gp, dir);
    CHECK(run("%s/fp8-dequant -q %s/good %s/good-out", bin, dir, dir) == 0, "good input");
    CHECK(run("%s/fp8-dequant -q %s/good %s/good-out", bin, dir, dir) == 1 && log_has("not empty"),
          "non-empty DST refused without --force");
    CHECK(run("%s/fp8-dequant -q --force %s/good %s/good-out", bin, dir, dir) == 0, "--force replaces");
    CHECK(run("%s/fp8-dequant -q %s/good %s/good/sub", bin, dir, dir) == 1 && log_has("inside"), "DST inside SRC");
    CHECK(run("%s/fp8-dequant -q %s/good %s/good", bin, dir, dir) == 1 && log_has("inside"), "DST equal to SRC");
    CHECK(!exists("%s/good/sub", dir) && !exists("%s/good/sub.partial", dir), "nothing created inside SRC");
    make_fp8("noscale", 256, 256, "", 0, 0x38, 1);
    refusal("missing weight_scale_inv", "noscale", "tensor w.weight: F8_E4M3 weight without its block scale w.weight_scale_inv");
    make_fp8("badscale", 256, 256, "[2,3]", 6, 0x38, 0);
    refusal("mis-shaped weight_scale_inv", "badscale", "tensor w.weight_scale_inv: shape [2, 3] but weight w.weight [256, 256]");
    make_fp8("nan", 256, 256, "[2,2]", 4, 0x7F, 0);
    refusal("NaN code", "nan", "tensor w.weight: NaN code at [0, 0]");
    CHECK(run("%s/fp8-dequant -q --allow-nan %s/nan %s/nan-out", bin, dir, dir) == 0, "--allow-nan converts NaN codes");
    // truncated shard: cut the file
    make_fp8("trunc", 256, 256, "[2,2]", 4, 0x38, 0);
    char p[400];
    snprintf(p, sizeof p, "%s/trunc/model.safetensors", dir);
    CHECK(truncate(p, 3000) == 0, "truncate");
    refusal("truncated shard", "trunc", "truncated");
    // a header that lies about the size of a tensor
    make_fp8("lie", 256, 256, "[2,2]", 4, 0x38, 0);
    snprintf(p, sizeof p, "%s/lie/model.safetensors", dir);
    FILE *f = fopen(p, "r+b");
    fseek(f, 8, SEEK_SET);
    char hdr[256];
    size_t n = fread(hdr, 1, sizeof hdr - 1, f);
    hdr[n] = 0;
    char *q = strstr(hdr, "[256,256]");
    if (q) {
        memcpy(q, "[256,255]", 9);
        fseek(f, 8 + (q - hdr), SEEK_SET);
        fwrite(q, 1, 9, f);
    }
    fclose(f);
    refusal("header lying about a size", "lie", "need 65280");
    // the input is never modified (size, contents and mtime unchanged after every run above)
    struct stat st;
    snprintf(p, sizeof p, "%s/good/model.safetensors", dir);
    stat(p, &st);
    CHECK(st.st_mtime == good_mtime.st_mtime && st.st_size == good_mtime.st_size &&
          run("cmp %s/good/model.safetensors %s/good.copy", dir, dir) == 0, "input untouched");
}

static void full_disk(void) {
    char mnt[400];
    snprintf(mnt, sizeof mnt, "%s/small", dir);
    mkdir(mnt, 0755);
    if (mount("tmpfs", mnt, "tmpfs", 0, "size=256k") != 0) {
        printf("full-disk case skipped: cannot mount a small tmpfs here (needs root)\n");
        return;
    }
    int rc = run("%s/fp8-dequant -q %s/minimax %s/small/out", bin, GOLDEN_DIR "/fp8", dir);
    CHECK(rc == 1 && log_has("no space left on device"), "full disk: exit %d", rc);
    CHECK(!exists("%s/small/out", dir) && !exists("%s/small/out.partial", dir), "full disk: nothing left behind");
    umount(mnt);
}

// Builds a larger FP8 checkpoint (12 tensors of 1024x1024), kills a run with SIGKILL once its
// first shard is in place, resumes, and compares with an uninterrupted run byte for byte.
static void kill_and_resume(void) {
    char d[400], p[500];
    snprintf(d, sizeof d, "%s/big", dir);
    mkdir(d, 0755);
    size_t hcap = 1 << 16, hl = 0;
    char *h = fb_malloc(hcap);
    hl += (size_t)snprintf(h + hl, hcap - hl, "{");
    size_t off = 0, W = 1024 * 1024;
    for (int t = 0; t < 12; t++) {
        hl += (size_t)snprintf(h + hl, hcap - hl, "%s\"l%02d.weight_scale_inv\":{\"dtype\":\"F32\",\"shape\":[8,8],\"data_offsets\":[%zu,%zu]},",
                               t ? "," : "", t, off, off + 256);
        off += 256;
        hl += (size_t)snprintf(h + hl, hcap - hl, "\"l%02d.weight\":{\"dtype\":\"F8_E4M3\",\"shape\":[1024,1024],\"data_offsets\":[%zu,%zu]}",
                               t, off, off + W);
        off += W;
    }
    snprintf(h + hl, hcap - hl, "}");
    unsigned char *buf = fb_malloc(off);
    uint64_t x = 7;
    for (size_t i = 0; i < off; i++) {
        x ^= x << 13; x ^= x >> 7; x ^= x << 17;
        unsigned char b = (unsigned char)x;
        buf[i] = (b & 0x7F) == 0x7F ? 0 : b;
    }
    for (int t = 0; t < 12; t++)
        for (int k = 0; k < 64; k++) {
            float s = 0.001f * (float)(k + 1);
            memcpy(buf + (size_t)t * (W + 256) + 4 * (size_t)k, &s, 4);
        }
    snprintf(p, sizeof p, "%s/model.safetensors", d);
    stb_write_raw(p, h, -1, buf, off, 0);
    free(buf);
    free(h);
    snprintf(p, sizeof p, "%s/config.json", d);
    stb_write_text(p, "{\"quantization_config\":{\"quant_method\":\"fp8\",\"weight_block_size\":[128,128]}}");

    CHECK(run("%s/fp8-dequant -q --max-shard-size 2MB %s %s/ref", bin, d, dir) == 0, "uninterrupted run");
    // SIGKILL in the middle of the 5th shard (one tensor = one 2 MiB write per shard here).
    int rc = run("FOURBIT_FAULT_KILL_AFTER_WRITES=5 %s/fp8-dequant -q --threads 1 --max-shard-size 2MB %s %s/res", bin, d, dir);
    int killed = rc == 128 + SIGKILL && !exists("%s/res", dir) && exists("%s/res.partial/model-00004-of-00012.safetensors", dir) &&
                 exists("%s/res.partial/model-00005-of-00012.safetensors.tmp", dir);
    CHECK(killed, "a run was killed mid-way");
    CHECK(exists("%s/res.partial/fourbit-manifest.json", dir), "manifest of finished shards survives SIGKILL");
    CHECK(run("%s/fp8-dequant --resume --json --max-shard-size 2MB %s %s/res", bin, d, dir) == 0, "resume");
    CHECK(log_has("\"resumed_shards\":4"), "resume kept the 4 verified shards");
    CHECK(run("cmp %s/ref/model-00001-of-00012.safetensors %s/res/model-00001-of-00012.safetensors && "
              "cmp %s/ref/model-00012-of-00012.safetensors %s/res/model-00012-of-00012.safetensors && "
              "cmp %s/ref/model.safetensors.index.json %s/res/model.safetensors.index.json && "
              "cmp %s/ref/fourbit-manifest.json %s/res/fourbit-manifest.json",
              dir, dir, dir, dir, dir, dir, dir, dir) == 0,
          "resumed output byte-identical to an uninterrupted run");
    // resume after a change of options rewrites instead of trusting stale shards
    CHECK(run("%s/fp8-dequant -q --max-shard-size 3MB %s %s/res2", bin, d, dir) == 0, "other shard size");
}

int main(void) {
    const char *b = getenv("BUILD");
    snprintf(bin, sizeof bin, "%s/bin", b ? b : "build");
    snprintf(dir, sizeof dir, "/tmp/fb-test-cli-XXXXXX");
    REQUIRE(mkdtemp(dir), "mkdtemp");
    golden();
    refusals();
    full_disk();
    kill_and_resume();
    run("rm -rf %s", dir);
    TEST_MAIN_END();
}

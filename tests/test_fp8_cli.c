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
#include "cli_util.h"
#include "test.h"



// A one-shard FP8 checkpoint in `name` with weight "w.weight" [rows, cols] and the scale
// header given by the caller (or the right one), plus config.json.
static void make_fp8(const char *name, int rows, int cols, const char *scale_decl, int scale_elems, unsigned char fill,
                     int omit_scale) {
    char d[400], h[1024], p[500];
    snprintf(d, sizeof d, "%s/%s", cli_dir, name);
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
    int rc = cli_run("%s/fp8-dequant -q %s/%s %s/out-r", cli_bin, cli_dir, src_name, cli_dir);
    CHECK(rc == 1, "%s: exit %d, want 1", label, rc);
    CHECK(cli_log_has(want), "%s: message lacks '%s'", label, want);
    CHECK(!cli_exists("%s/out-r", cli_dir) && !cli_exists("%s/out-r.partial", cli_dir), "%s: output left behind", label);
}

static void golden(void) {
    int rc = cli_run("%s/fp8-dequant -q --json --max-shard-size 400KB %s/minimax %s/o1", cli_bin, GOLDEN_DIR "/fp8", cli_dir);
    CHECK(rc == 0, "dequant golden minimax: exit %d", rc);
    CHECK(cli_log_has("\"fp8_weights\":20"), "json summary");
    rc = cli_run("%s/st-diff --common %s/o1 %s/minimax_expected.safetensors", cli_bin, cli_dir, GOLDEN_DIR "/fp8");
    CHECK(rc == 0, "output equals PyTorch's dequant: st-diff exit %d", rc);
    CHECK(cli_log_has("20 equal, 0 different"), "all 20 FP8 weights compared");
    // unquantized tensors copied unchanged (router gate and bias stay F32)
    rc = cli_run("%s/st-diff --common %s/o1 %s/minimax", cli_bin, cli_dir, GOLDEN_DIR "/fp8");
    CHECK(rc == 1 && cli_log_has("15 equal, 20 different, 0 only in A"), "copied tensors identical, scales dropped");
    CHECK(!cli_exists("%s/o1/model-00001-of-00001.safetensors", cli_dir) && cli_exists("%s/o1/model-00002-of-00005.safetensors", cli_dir),
          "re-sharded under --max-shard-size (5 shards of <= 400 kB)");
    CHECK(cli_exists("%s/o1/tokenizer_config.json", cli_dir) && cli_exists("%s/o1/generation_config.json", cli_dir), "side files copied");
    char p[400];
    snprintf(p, sizeof p, "%s/o1/config.json", cli_dir);
    json_t *cfg = json_load_file(p, 0, NULL);
    CHECK(cfg && !json_object_get(cfg, "quantization_config") && json_object_get(cfg, "num_local_experts"),
          "config.json: quantization_config removed, the rest kept");
    json_decref(cfg);
    rc = cli_run("%s/fp8-dequant -q %s/deepseek %s/o2", cli_bin, GOLDEN_DIR "/fp8", cli_dir);
    CHECK(rc == 0, "dequant deepseek partial tiles: exit %d", rc);
    rc = cli_run("%s/st-diff --common %s/o2 %s/deepseek_expected.safetensors", cli_bin, cli_dir, GOLDEN_DIR "/fp8");
    CHECK(rc == 0, "DeepSeek partial edge tiles equal PyTorch's: exit %d", rc);
    // dry run writes nothing
    rc = cli_run("%s/fp8-dequant --dry-run %s/minimax %s/o3", cli_bin, GOLDEN_DIR "/fp8", cli_dir);
    CHECK(rc == 0 && cli_log_has("dequantize 20 FP8 weights") && !cli_exists("%s/o3", cli_dir) && !cli_exists("%s/o3.partial", cli_dir),
          "dry run");
    CHECK(cli_run("%s/fp8-dequant --help", cli_bin) == 0 && cli_log_has("--resume"), "--help");
    CHECK(cli_run("%s/fp8-dequant --threads 0 a b", cli_bin) == 2 && cli_log_has("--threads"), "bad --threads is a usage error");
    CHECK(cli_run("%s/fp8-dequant onlyone", cli_bin) == 2, "missing DST is a usage error");
    CHECK(cli_run("%s/fp8-dequant --bogus a b", cli_bin) == 2 && cli_log_has("unknown option"), "unknown option");
    CHECK(cli_run("%s/st-diff %s/o1 %s/o1", cli_bin, cli_dir, cli_dir) == 0, "st-diff of a checkpoint with itself");
    CHECK(cli_run("%s/st-diff %s/o1 %s/nonexistent", cli_bin, cli_dir, cli_dir) == 2, "st-diff unreadable input exits 2");
}

static void refusals(void) {
    make_fp8("good", 256, 256, "[2,2]", 4, 0x38, 0);
    struct stat good_mtime;
    char gp[400];
    snprintf(gp, sizeof gp, "%s/good/model.safetensors", cli_dir);
    stat(gp, &good_mtime);
    cli_run("cp %s %s/good.copy", gp, cli_dir);
    CHECK(cli_run("%s/fp8-dequant -q %s/good %s/good-out", cli_bin, cli_dir, cli_dir) == 0, "good input");
    CHECK(cli_run("%s/fp8-dequant -q %s/good %s/good-out", cli_bin, cli_dir, cli_dir) == 1 && cli_log_has("not empty"),
          "non-empty DST refused without --force");
    CHECK(cli_run("%s/fp8-dequant -q --force %s/good %s/good-out", cli_bin, cli_dir, cli_dir) == 0, "--force replaces");
    CHECK(cli_run("%s/fp8-dequant -q %s/good %s/good/sub", cli_bin, cli_dir, cli_dir) == 1 && cli_log_has("inside"), "DST inside SRC");
    CHECK(cli_run("%s/fp8-dequant -q %s/good %s/good", cli_bin, cli_dir, cli_dir) == 1 && cli_log_has("inside"), "DST equal to SRC");
    CHECK(!cli_exists("%s/good/sub", cli_dir) && !cli_exists("%s/good/sub.partial", cli_dir), "nothing created inside SRC");
    make_fp8("noscale", 256, 256, "", 0, 0x38, 1);
    refusal("missing weight_scale_inv", "noscale", "tensor w.weight: F8_E4M3 weight without its block scale w.weight_scale_inv");
    make_fp8("badscale", 256, 256, "[2,3]", 6, 0x38, 0);
    refusal("mis-shaped weight_scale_inv", "badscale", "tensor w.weight_scale_inv: shape [2, 3] but weight w.weight [256, 256]");
    make_fp8("nan", 256, 256, "[2,2]", 4, 0x7F, 0);
    refusal("NaN code", "nan", "tensor w.weight: NaN code at [0, 0]");
    CHECK(cli_run("%s/fp8-dequant -q --allow-nan %s/nan %s/nan-out", cli_bin, cli_dir, cli_dir) == 0, "--allow-nan converts NaN codes");
    // truncated shard: cut the file
    make_fp8("trunc", 256, 256, "[2,2]", 4, 0x38, 0);
    char p[400];
    snprintf(p, sizeof p, "%s/trunc/model.safetensors", cli_dir);
    CHECK(truncate(p, 3000) == 0, "truncate");
    refusal("truncated shard", "trunc", "truncated");
    // a header that lies about the size of a tensor
    make_fp8("lie", 256, 256, "[2,2]", 4, 0x38, 0);
    snprintf(p, sizeof p, "%s/lie/model.safetensors", cli_dir);
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
    snprintf(p, sizeof p, "%s/good/model.safetensors", cli_dir);
    stat(p, &st);
    CHECK(st.st_mtime == good_mtime.st_mtime && st.st_size == good_mtime.st_size &&
          cli_run("cmp %s/good/model.safetensors %s/good.copy", cli_dir, cli_dir) == 0, "input untouched");
}

static void full_disk(void) {
    char mnt[400];
    snprintf(mnt, sizeof mnt, "%s/small", cli_dir);
    mkdir(mnt, 0755);
    if (mount("tmpfs", mnt, "tmpfs", 0, "size=256k") != 0) {
        printf("full-disk case skipped: cannot mount a small tmpfs here (needs root)\n");
        return;
    }
    int rc = cli_run("%s/fp8-dequant -q %s/minimax %s/small/out", cli_bin, GOLDEN_DIR "/fp8", cli_dir);
    CHECK(rc == 1 && cli_log_has("no space left on device"), "full disk: exit %d", rc);
    CHECK(!cli_exists("%s/small/out", cli_dir) && !cli_exists("%s/small/out.partial", cli_dir), "full disk: nothing left behind");
    umount(mnt);
}

// Builds a larger FP8 checkpoint (12 tensors of 1024x1024), kills a run with SIGKILL once its
// first shard is in place, resumes, and compares with an uninterrupted run byte for byte.
static void kill_and_resume(void) {
    char d[400], p[500];
    snprintf(d, sizeof d, "%s/big", cli_dir);
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

    CHECK(cli_run("%s/fp8-dequant -q --max-shard-size 2MB %s %s/ref", cli_bin, d, cli_dir) == 0, "uninterrupted run");
    // SIGKILL in the middle of the 5th shard (one tensor = one 2 MiB write per shard here).
    int rc = cli_run("FOURBIT_FAULT_KILL_AFTER_WRITES=5 %s/fp8-dequant -q --threads 1 --max-shard-size 2MB %s %s/res", cli_bin, d, cli_dir);
    int killed = rc == 128 + SIGKILL && !cli_exists("%s/res", cli_dir) && cli_exists("%s/res.partial/model-00004-of-00012.safetensors", cli_dir) &&
                 cli_exists("%s/res.partial/model-00005-of-00012.safetensors.tmp", cli_dir);
    CHECK(killed, "a run was killed mid-way");
    CHECK(cli_exists("%s/res.partial/fourbit-manifest.json", cli_dir), "manifest of finished shards survives SIGKILL");
    CHECK(cli_run("%s/fp8-dequant --resume --json --max-shard-size 2MB %s %s/res", cli_bin, d, cli_dir) == 0, "resume");
    CHECK(cli_log_has("\"resumed_shards\":4"), "resume kept the 4 verified shards");
    CHECK(cli_run("cmp %s/ref/model-00001-of-00012.safetensors %s/res/model-00001-of-00012.safetensors && "
              "cmp %s/ref/model-00012-of-00012.safetensors %s/res/model-00012-of-00012.safetensors && "
              "cmp %s/ref/model.safetensors.index.json %s/res/model.safetensors.index.json && "
              "cmp %s/ref/fourbit-manifest.json %s/res/fourbit-manifest.json",
              cli_dir, cli_dir, cli_dir, cli_dir, cli_dir, cli_dir, cli_dir, cli_dir) == 0,
          "resumed output byte-identical to an uninterrupted run");
    // resume after a change of options rewrites instead of trusting stale shards
    CHECK(cli_run("%s/fp8-dequant -q --max-shard-size 3MB %s %s/res2", cli_bin, d, cli_dir) == 0, "other shard size");
}

// Split jobs over one staging directory, then a merge: the result is byte-identical to one
// run; the merge refuses to start without the jobs' directory.
static void split_jobs(void) {
    const char *src = GOLDEN_DIR "/fp8/minimax";
    CHECK(cli_run("%s/fp8-dequant -q --max-shard-size 300KB %s %s/one", cli_bin, src, cli_dir) == 0, "single run");
    CHECK(cli_run("%s/fp8-dequant -q --merge --shard-count 3 %s %s/split", cli_bin, src, cli_dir) == 1 &&
              cli_log_has("run the split jobs"), "merge before any job is refused");
    for (int i = 0; i < 3; i++)
        CHECK(cli_run("%s/fp8-dequant -q --max-shard-size 300KB --shard-index %d --shard-count 3 %s %s/split", cli_bin, i,
                      src, cli_dir) == 0, "split job %d", i);
    CHECK(!cli_exists("%s/split", cli_dir) && cli_exists("%s/split.partial/fourbit-manifest.job-1-of-3.json", cli_dir),
          "jobs leave their shards in the shared staging directory, nothing in place");
    CHECK(cli_run("%s/fp8-dequant --json --merge --shard-count 3 --max-shard-size 300KB %s %s/split", cli_bin, src,
                  cli_dir) == 0 && cli_log_has("\"resumed_shards\":7"), "merge verifies the 7 shards the jobs wrote");
    CHECK(cli_run("cd %s/one && for f in *; do cmp \"$f\" ../split/\"$f\" || exit 1; done", cli_dir) == 0 &&
              !cli_exists("%s/split/fourbit-manifest.job-0-of-3.json", cli_dir),
          "merged output byte-identical to a single run (manifest included)");
    CHECK(cli_run("%s/fp8-dequant -q --shard-index 3 --shard-count 3 %s %s/bad", cli_bin, src, cli_dir) != 0,
          "shard index out of range refused");
}

// Issue 12 item 9: finite inputs whose product overflows (FP8 4.0 x scale_inv 3e38) gave
// Inf outputs and exit 0; the writer now refuses any non-finite float output unless
// --allow-nan, naming the tensor and the first index.
static void overflow(void) {
    make_fp8("huge", 256, 256, "[2,2]", 4, 0x48, 0);  // every weight 4.0
    char p[500];
    snprintf(p, sizeof p, "%s/huge/model.safetensors", cli_dir);
    FILE *f = fopen(p, "r+b");
    REQUIRE(f, "open %s", p);
    unsigned char l8[8];
    REQUIRE(fread(l8, 1, 8, f) == 8, "header length");
    uint64_t hl = 0;
    for (int i = 0; i < 8; i++) hl |= (uint64_t)l8[i] << (8 * i);
    float big = 3e38f;  // finite, and a legal F32 scale
    fseek(f, (long)(8 + hl), SEEK_SET);
    for (int i = 0; i < 4; i++) fwrite(&big, 4, 1, f);
    fclose(f);
    refusal("overflowing scale", "huge", "output tensor w.weight: element 0 is Inf or NaN");
    CHECK(cli_run("%s/fp8-dequant -q --allow-nan %s/huge %s/huge-out", cli_bin, cli_dir, cli_dir) == 0,
          "--allow-nan writes it anyway");
}

// Issue 12 item 7: --force used to delete a directory DST.replaced that fourbit never made.
static void force_keeps_replaced(void) {
    make_fp8("rsrc", 256, 256, "[2,2]", 4, 0x38, 0);
    CHECK(cli_run("%s/fp8-dequant -q %s/rsrc %s/rdst", cli_bin, cli_dir, cli_dir) == 0, "first run");
    cli_run("mkdir -p %s/rdst.replaced && echo mine > %s/rdst.replaced/keep", cli_dir, cli_dir);
    CHECK(cli_run("%s/fp8-dequant -q --force %s/rsrc %s/rdst", cli_bin, cli_dir, cli_dir) == 0, "--force run");
    CHECK(cli_exists("%s/rdst.replaced/keep", cli_dir), "an unrelated DST.replaced survives --force");
    CHECK(cli_run("ls -d %s/rdst.replaced-* 2>/dev/null | grep -q .", cli_dir) != 0, "the moved-aside DST is removed");
}

int main(void) {
    const char *b = getenv("BUILD");
    snprintf(cli_bin, sizeof cli_bin, "%s/bin", b ? b : "build");
    snprintf(cli_dir, sizeof cli_dir, "/tmp/fb-test-cli-XXXXXX");
    REQUIRE(mkdtemp(cli_dir), "mkdtemp");
    golden();
    refusals();
    overflow();
    force_keeps_replaced();
    full_disk();
    kill_and_resume();
    split_jobs();
    cli_run("rm -rf %s", cli_dir);
    TEST_MAIN_END();
}

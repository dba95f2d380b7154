// calibrate.c: the calibration job (see calibrate.h).
#include "jobs/calibrate.h"

#include <string.h>

#include "calib/identity.h"
#include "common/sha256.h"
#include "cuda/cuengine.h"
#include "io/dataset.h"

int fb_calibrate_run(fb_wsrc *src, const fb_model_config *cfg, const fb_ds_tokens *S,
                     const fb_calibrate_opts *o, fb_calibrate_result *res, fb_err *err) {
    memset(res, 0, sizeof *res);
    int n_layers = o->max_layers > 0 && o->max_layers < cfg->n_layers ? o->max_layers : cfg->n_layers;
    fb_calib_stats *st = fb_calib_stats_new(cfg->n_layers, cfg->n_experts);
    fb_engine_opts eo = o->engine;
    eo.stats = st;
    double t0 = fb_now();
    int rc = -1;
    char *pathbuf = NULL, *digests = NULL, *shas = NULL, *id_layers = NULL;
    const char **paths = NULL;
    fb_engine *eng = o->use_cuda ? fb_engine_cuda_new(src, cfg, &eo, err) : fb_engine_cpu_new(src, cfg, &eo, err);
    if (!eng || fb_engine_set_tokens(eng, S->ids, S->n_tok, S->starts, S->n, err)) goto out;
    for (int l = 0; l < n_layers; l++) {
        if (o->layer_start) o->layer_start(o->layer_user, l, n_layers);
        if (fb_engine_layer(eng, l, err)) goto out;
    }
    res->seconds = fb_now() - t0;
    res->timing = fb_engine_get_timing(eng);

    // Provenance.
    size_t npaths = fb_split_list(o->dataset, &pathbuf, &paths);
    char digest[33] = "", sha[65], s_samples[32], s_len[32], s_seed[32], s_tokh[32];
    digests = fb_calloc(npaths + 1, 34);
    shas = fb_calloc(npaths + 1, 66);
    for (size_t i = 0; i < npaths; i++) {
        // sha256 too: what a model card reader checks with sha256sum
        if (fb_file_xxh128(paths[i], digest, err) || fb_file_sha256(paths[i], sha, err)) goto out;
        if (i) strcat(digests, ","), strcat(shas, ",");
        strcat(digests, digest);
        strcat(shas, sha);
    }
    uint64_t h = 1469598103934665603ull;  // FNV-1a 64 of the token ids (little-endian int32)
    for (size_t i = 0; i < S->n_tok; i++)
        for (int b = 0; b < 4; b++) h = (h ^ ((uint32_t)S->ids[i] >> (8 * b) & 0xFF)) * 1099511628211ull;
    snprintf(s_samples, sizeof s_samples, "%zu", S->n);
    snprintf(s_len, sizeof s_len, "%d", o->seq_len);
    snprintf(s_seed, sizeof s_seed, "%llu", (unsigned long long)o->seed);
    snprintf(s_tokh, sizeof s_tokh, "%016llx", (unsigned long long)h);
    // The source's identity, which nvfp4-quantize --calib compares with its own.
    char id_cfg[33];
    fb_source *ids = NULL;
    int idrc = fb_source_open(o->model, &ids, err) || fb_source_identity(ids, n_layers, id_cfg, &id_layers, err);
    fb_source_close(ids);
    if (idrc) goto out;
    const char *mk[] = {"tool", "version", "model", "dataset", "dataset_xxh128", "samples",
                        "seq_len", "seed", "skip_long", "template", "tokens_fnv1a64", FB_ID_KEY_CONFIG, FB_ID_KEY_LAYERS,
                        "dataset_sha256", "precision"};
    const char *prec = o->engine.bf16 ? "bf16" : o->use_cuda && !o->engine.gemm_f32 ? "f32, bf16 GEMM inputs" : "f32";
    const char *mv[] = {o->tool, FB_VERSION, o->model, o->dataset, digests, s_samples, s_len, s_seed,
                        o->skip_long ? "true" : "false", o->template_name, s_tokh, id_cfg, id_layers, shas, prec};
    if (fb_calib_stats_write(st, o->out, sizeof mk / sizeof mk[0], mk, mv, err)) goto out;
    res->stats = st;
    res->n_layers = n_layers;
    st = NULL;
    rc = 0;
out:
    fb_engine_free(eng);
    fb_calib_stats_free(st);
    free(pathbuf);
    free(paths);
    free(digests);
    free(shas);
    free(id_layers);
    return rc;
}

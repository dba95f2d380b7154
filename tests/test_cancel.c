// test_cancel.c: issue 12 item 5. SIGINT / SIGTERM used to be noticed only in the writers'
// loops, so a long recipe parse, plan or dataset pass could not be stopped. Each long loop
// now polls the cancellation flag; with the flag set, each returns -1 with "interrupted"
// (and without it, the same call succeeds: the check is what makes the difference).
#include <signal.h>
#include <string.h>
#include <unistd.h>

#include "common/cancel.h"
#include "io/dataset.h"
#include "quant/recipe.h"
#include "quant/scheme.h"
#include "test.h"

static void recipe_and_plan(void) {
    fb_recipe r;
    fb_err err;
    fb_cancel_request();
    CHECK(fb_recipe_load("recipes/minimax-w4a16.yaml", &r, &err) == -1 && strstr(err.msg, "interrupted"),
          "recipe parse stops: %s", err.msg);
    fb_cancel_reset();
    REQUIRE(fb_recipe_load("recipes/minimax-w4a16.yaml", &r, &err) == 0, "recipe: %s", err.msg);
    static const int64_t shape[2] = {256, 256};
    fb_tensor_desc t[2] = {{"model.layers.0.self_attn.q_proj.weight", 2, shape},
                           {"model.layers.0.self_attn.k_proj.weight", 2, shape}};
    fb_plan p;
    fb_cancel_request();
    CHECK(fb_plan_build(&r.cfg, t, 2, &p, &err) == -1 && strstr(err.msg, "interrupted"), "plan stops: %s", err.msg);
    fb_cancel_reset();
    CHECK(fb_plan_build(&r.cfg, t, 2, &p, &err) == 0, "plan without the flag: %s", err.msg);
    fb_plan_free(&p);
    fb_recipe_free(&r);
}

static void dataset(void) {
    char path[] = "/tmp/fb-test-cancel-XXXXXX";
    int fd = mkstemp(path);
    REQUIRE(fd >= 0, "mkstemp");
    FILE *f = fdopen(fd, "w");
    for (int i = 0; i < 5000; i++) fprintf(f, "{\"input_ids\": [%d]}\n", i % 50 + 1);
    fclose(f);
    const char *paths[1] = {path};
    fb_dataset *ds = NULL;
    fb_err err;
    fb_cancel_request();
    CHECK(fb_ds_open(paths, 1, &ds, &err) == -1 && strstr(err.msg, "interrupted"), "indexing stops: %s", err.msg);
    fb_cancel_reset();
    CHECK(fb_ds_open(paths, 1, &ds, &err) == 0, "indexing without the flag: %s", err.msg);
    fb_ds_close(ds);
    unlink(path);
}

// The handler: the first SIGINT sets the flag (the process goes on), as the tools rely on.
static void handler(void) {
    fb_cancel_reset();
    fb_cancel_install();
    raise(SIGINT);
    CHECK(fb_cancelled() == 1, "SIGINT sets the flag");
    fb_cancel_reset();
    raise(SIGTERM);
    CHECK(fb_cancelled() == 1, "SIGTERM sets the flag");
    fb_cancel_reset();
}

int main(void) {
    recipe_and_plan();
    dataset();
    handler();
    TEST_MAIN_END();
}

// test_sha256.c: SHA-256 against the FIPS 180-2 appendix B test vectors (independent of
// fourbit), fed whole and in uneven pieces (the block buffering), and a file.
#include "common/sha256.h"

#include <stdio.h>
#include <string.h>
#include <unistd.h>

#include "test.h"

static void hex_of(const void *p, size_t n, size_t piece, char out[65]) {
    fb_sha256 s;
    fb_sha256_init(&s);
    const unsigned char *b = p;
    for (size_t off = 0; off < n; off += piece) fb_sha256_update(&s, b + off, n - off < piece ? n - off : piece);
    fb_sha256_hex(&s, out);
}

int main(void) {
    static const struct {
        const char *msg, *want;
    } v[] = {
        {"", "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"},
        {"abc", "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"},
        {"abcdbcdecdefdefgefghfghighijhijkijkljklmklmnlmnomnopnopq",
         "248d6a61d20638b8e5c026930c3e6039a33ce45964ff2167f6ecedd419db06c1"},
    };
    char h[65];
    for (size_t i = 0; i < sizeof v / sizeof v[0]; i++) {
        size_t n = strlen(v[i].msg);
        static const size_t pieces[] = {1, 3, 63, 64, 1000};
        for (size_t k = 0; k < sizeof pieces / sizeof pieces[0]; k++) {
            hex_of(v[i].msg, n, pieces[k], h);
            CHECK(!strcmp(h, v[i].want), "'%s' in pieces of %zu: %s, want %s", v[i].msg, pieces[k], h, v[i].want);
        }
    }
    // one million 'a' (FIPS 180-2 B.3), in pieces that straddle blocks
    static char a[1000000];
    memset(a, 'a', sizeof a);
    const char *want = "cdc76e5c9914fb9281a1c7e284d73e67f1809a48a497200e046d39ccc7112cd0";
    hex_of(a, sizeof a, 777, h);
    CHECK(!strcmp(h, want), "million a: %s", h);
    char path[] = "/tmp/fb-test-sha256-XXXXXX";
    int fd = mkstemp(path);
    REQUIRE(fd >= 0, "mkstemp");
    FILE *f = fdopen(fd, "wb");
    fwrite(a, 1, sizeof a, f);
    fclose(f);
    fb_err err;
    CHECK(fb_file_sha256(path, h, &err) == 0 && !strcmp(h, want), "file: %s", h);
    unlink(path);
    CHECK(fb_file_sha256("/nonexistent/x", h, &err) == -1 && strstr(err.msg, "/nonexistent/x"), "missing file named");
    TEST_MAIN_END();
}

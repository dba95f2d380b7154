// dtype.c: the dtype traits table (see dtype.h).
#include "common/dtype.h"

#include <string.h>

const fb_dtype_traits fb_dtypes[FB_DTYPE_COUNT] = {
    [FB_BOOL] = {"BOOL", 8, 0},           [FB_F4] = {"F4", 4, 1},
    [FB_F6_E2M3] = {"F6_E2M3", 6, 1},     [FB_F6_E3M2] = {"F6_E3M2", 6, 1},
    [FB_U8] = {"U8", 8, 0},               [FB_I8] = {"I8", 8, 0},
    [FB_F8_E5M2] = {"F8_E5M2", 8, 1},     [FB_F8_E4M3] = {"F8_E4M3", 8, 1},
    [FB_F8_E8M0] = {"F8_E8M0", 8, 1},     [FB_F8_E4M3FNUZ] = {"F8_E4M3FNUZ", 8, 1},
    [FB_F8_E5M2FNUZ] = {"F8_E5M2FNUZ", 8, 1},
    [FB_I16] = {"I16", 16, 0},            [FB_U16] = {"U16", 16, 0},
    [FB_F16] = {"F16", 16, 1},            [FB_BF16] = {"BF16", 16, 1},
    [FB_I32] = {"I32", 32, 0},            [FB_U32] = {"U32", 32, 0},
    [FB_F32] = {"F32", 32, 1},            [FB_I64] = {"I64", 64, 0},
    [FB_U64] = {"U64", 64, 0},            [FB_F64] = {"F64", 64, 1},
    [FB_C64] = {"C64", 64, 1},
};

int fb_dtype_from_name(const char *name, fb_dtype *out) {
    for (int i = 0; i < FB_DTYPE_COUNT; i++) {
        if (strcmp(fb_dtypes[i].name, name) == 0) {
            *out = (fb_dtype)i;
            return 0;
        }
    }
    return -1;
}


// dtype.h: the tensor element types fourbit reads and writes, one traits table (name as the
// safetensors header spells it, bits per element, floating point or not) that drives every
// dtype dispatch. Number formats (the conversions) are quant/formats.h.
#ifndef FB_COMMON_DTYPE_H
#define FB_COMMON_DTYPE_H

// Every dtype the current safetensors Rust crate accepts. Order = the crate's declaration
// order (increasing alignment), which the writer uses to lay tensors out naturally aligned.
typedef enum fb_dtype {
    FB_BOOL, FB_F4, FB_F6_E2M3, FB_F6_E3M2, FB_U8, FB_I8, FB_F8_E5M2, FB_F8_E4M3,
    FB_F8_E8M0, FB_F8_E4M3FNUZ, FB_F8_E5M2FNUZ, FB_I16, FB_U16, FB_F16, FB_BF16,
    FB_I32, FB_U32, FB_F32, FB_I64, FB_U64, FB_F64, FB_C64,
    FB_DTYPE_COUNT
} fb_dtype;

typedef struct fb_dtype_traits {
    const char *name;  // safetensors header string, e.g. "F8_E4M3"
    int bits;          // bits per element (4, 6, 8, 16, 32, 64)
    int is_float;      // 1 for floating-point formats (NaN/Inf scans apply)
} fb_dtype_traits;

extern const fb_dtype_traits fb_dtypes[FB_DTYPE_COUNT];

// Looks up a dtype by its header string; returns 0 and sets *out, or -1 if unknown.
int fb_dtype_from_name(const char *name, fb_dtype *out);

#endif

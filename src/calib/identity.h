// identity.h: which model a calibration statistics file was made from.
//
// Statistics from another model give wrong input scales silently (issue 17: a W4A4 run with
// another model's statistics exited 0 with KL 0.133 instead of 0.102). `calibrate` records the
// source's identity in the statistics file's __metadata__, and `nvfp4-quantize --calib`
// compares it with its own source before using the file:
//   source_config_xxh3_128   xxh3-128 of config.json without the keys that describe storage,
//                            not the model (quantization_config, torch_dtype, dtype,
//                            transformers_version, _name_or_path), dumped with sorted keys;
//   source_layers_xxh3_128   one xxh3-128 per decoder layer, comma-separated, over the layer's
//                            tensors in name order: name, logical dtype, shape, and the first and
//                            last rows as f32 values as the tools read them (FP8 dequantized).
// Values as read, not bytes as stored: the FP8 release and its fp8-dequant BF16 copy have the
// same identity (the quantizer's output is byte-identical from either). Two rows per tensor,
// not every weight: the quantizer checks this before its job, and reading a 230 GB source
// twice to check it would double the run; a fine-tune or a different training changes the
// first and last rows of every tensor, so it is caught. A model that differs only inside
// middle rows is not.
#ifndef FB_CALIB_IDENTITY_H
#define FB_CALIB_IDENTITY_H

#include "quant/source.h"

#define FB_ID_KEY_CONFIG "source_config_xxh3_128"
#define FB_ID_KEY_LAYERS "source_layers_xxh3_128"

// Computes the identity of the first n_layers decoder layers of s: config_hex (32 hex digits
// + NUL) and *layers, a malloc'ed comma-separated list of n_layers digests (the caller
// frees). Fails naming the tensor on a read error.
int fb_source_identity(const fb_source *s, int n_layers, char config_hex[33], char **layers, fb_err *err);

// Compares the identity recorded in the statistics file at stats_path with s. Returns 0 when
// they match, 1 when the file records none (made before fourbit recorded it: nothing to
// compare), -1 with err saying what differs (the config, or the first layer whose weights
// differ) or why the file could not be read.
int fb_identity_check(const fb_source *s, const char *stats_path, fb_err *err);

#endif

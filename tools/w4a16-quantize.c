// w4a16-quantize: BF16 or FP8 checkpoint + recipe -> int4 group-128 W4A16 checkpoint, in the
// compressed-tensors pack-quantized format or AutoRound's auto_round:auto_gptq packing.
// Thin: src/quant/quantize.c.
#include "quantize_main.h"

int main(int argc, char **argv) {
    return fb_quantize_main(argc, argv, "w4a16-quantize", 1u << FB_QK_W4A16, 1,
                            "Quantizes SRC (BF16, or FP8 block-scaled dequantized in memory) with an llm-compressor\n"
                            "recipe (scheme W4A16: int4 symmetric, group 128, round to nearest) into a\n"
                            "compressed-tensors pack-quantized checkpoint (bit-exact with compressed-tensors 0.19),\n"
                            "or with --format auto_round into AutoRound's GPTQ packing (auto-round 0.16 iters=0 RTN:\n"
                            "qweight/qzeros/scales). The output is validated before it is renamed into place.");
}

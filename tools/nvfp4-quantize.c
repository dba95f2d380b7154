// nvfp4-quantize: BF16 or FP8 checkpoint + recipe -> compressed-tensors NVFP4 (W4A4, with
// --calib) or NVFP4A16 checkpoint (or ModelOpt NVFP4 with --format modelopt) that vLLM and
// transformers load. Thin: src/quant/quantize.c.
#include "quantize_main.h"

int main(int argc, char **argv) {
    return fb_quantize_main(argc, argv, "nvfp4-quantize", (1u << FB_QK_NVFP4) | (1u << FB_QK_NVFP4A16), 2,
                            "Quantizes SRC (BF16, or FP8 block-scaled dequantized in memory) with an llm-compressor\n"
                            "recipe (scheme NVFP4 or NVFP4A16, targets, ignore) into a compressed-tensors\n"
                            "nvfp4-pack-quantized checkpoint, bit-exact with compressed-tensors 0.19, or with\n"
                            "--format modelopt into NVIDIA ModelOpt's NVFP4 checkpoint (hf_quant_config.json,\n"
                            "bit-exact with nvidia-modelopt 0.47's export; vLLM --quantization modelopt). NVFP4 (W4A4)\n"
                            "needs --calib STATS from `calibrate` for input_global_scale; NVFP4A16 does not. The\n"
                            "output is validated with the validate-ignore-list rules before it is renamed into place.");
}

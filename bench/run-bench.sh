#!/bin/sh
# make bench: every figure in BENCHMARKS.md, measured in one run on this machine.
#
#   make bench                         all of it (needs ~12 GB free under $FOURBIT_BENCH_DIR)
#   FOURBIT_BENCH_DIR=/fast/disk make bench
#   BENCH_SKIP_LAYER=1 make bench      only the kernel / validator / calibration benches
#
# 1. kernels, one thread: FP8 dequant, NVFP4, W4A16, AutoRound vs the Python reference tools
#    (PyTorch / compressed-tensors / auto-round) on the same [1536, 3072] tensor, same CPU.
# 2. a full-size synthetic MiniMax-M2 layer in the official FP8 layout (~3.7 GB,
#    bench/gen_minimax_layer.c): the I/O floor (read the input to /dev/null + write an
#    output-sized file with fdatasync), then fp8-dequant, FP8 -> NVFP4A16 and FP8 -> W4A16,
#    reap-prune (256 -> 192 experts, FP8 kept as stored),
#    each from a cold page cache when the kernel lets us drop it (root), with wall time,
#    GB/s and peak RSS; ratios to the floor and to fp8-dequant.
# 3. validate-ignore-list on 96k/192k-tensor synthetic headers (bench/bench_validate.c).
# 4. the calibration forward (bench/bench_calib.c); GPTQ per full-size Linear on the CPU and the
#    projection to a layer (bench/bench_gptq.c); AutoRound on one expert (bench/bench_autoround.c).
# 5. the CUDA layer benchmark (bench/bench_cuda_layer.c), when a GPU is present; AutoRound's block
#    tuning on the GPU (bench/bench_cuda_autoround.c); GPTQ's Hessians and solves for one layer on
#    the GPU (bench/bench_cuda_gptq.c).
set -u
: "${BUILD:=build}"
DIR=${FOURBIT_BENCH_DIR:-/tmp/fourbit-bench}
B=$BUILD/bin
mkdir -p "$DIR"
THREADS=$(nproc)

drop_caches() {
    sync
    if echo 3 > /proc/sys/vm/drop_caches 2>/dev/null; then COLD=cold; else COLD="warm (cannot drop caches: not root)"; fi
}
# secs CMD...: run, print wall seconds
secs() { s=$(date +%s.%N); "$@" >/dev/null 2>&1; rc=$?; e=$(date +%s.%N); echo "$e $s" | awk '{printf "%.3f", $1-$2}'; return $rc; }
json_get() { python3 -c "import json,sys; d=json.loads(sys.stdin.readline()); print(d$1)" 2>/dev/null; }

echo "== fourbit bench on $(nproc) cores, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | sed 's/^ //') =="
echo
echo "-- 1. kernels, one thread, [1536, 3072] --"
K=$($BUILD/bench/bench_fp8)
echo "fp8 dequant (fourbit): $K"
R=$(python3 bench/fp8_reference.py 2>/dev/null || echo '{}')
echo "fp8 dequant (PyTorch reference): $R"
KE=$(echo "$K" | json_get "['elements_per_s']"); RE=$(echo "$R" | json_get "['elements_per_s']")
[ -n "$KE" ] && [ -n "$RE" ] && echo "$KE $RE" | awk '{printf "  => %.0f M elements/s per thread, %.1fx PyTorch (%.0f M)\n", $1/1e6, $1/$2, $2/1e6}'
$BUILD/bench/bench_quant 5 | tail -n 4
python3 bench/quant_reference.py 3 2>/dev/null | tail -n 4 || echo "  (compressed-tensors / auto-round not installed: pip install compressed-tensors==0.18.0 auto-round==0.16.1)"
echo

if [ "${BENCH_SKIP_LAYER:-0}" != 1 ]; then
    echo "-- 2. full-size synthetic MiniMax-M2 layer (FP8 official layout) in $DIR --"
    SRC=$DIR/layer-fp8
    if [ ! -f "$SRC/model.safetensors.index.json" ]; then
        echo "generating $SRC ..."
        $BUILD/bench/gen_minimax_layer --shard-size 2GB "$SRC" || exit 1
    fi
    IN_BYTES=$(du -sb "$SRC" | cut -f1)
    # The BF16 output is twice the FP8 payload plus the copied tensors: take it from a dry run.
    OUT_BYTES=$($B/fp8-dequant --dry-run "$SRC" "$DIR/x" | awk '/write/ {print $5*1e9}')
    echo "input $(echo $IN_BYTES | awk '{printf "%.2f GB", $1/1e9}'), BF16 output $(echo $OUT_BYTES | awk '{printf "%.2f GB", $1/1e9}')"
    rm -rf "$DIR/out-bf16" "$DIR/out-nvfp4a16" "$DIR/out-w4a16" "$DIR/floor.bin"
    drop_caches
    T_READ=$(secs sh -c "cat $SRC/*.safetensors > /dev/null")
    drop_caches
    MB=$(echo $OUT_BYTES | awk '{printf "%d", $1/1048576}')
    T_WRITE=$(secs dd if=/dev/zero of="$DIR/floor.bin" bs=1M count="$MB" conv=fdatasync)
    rm -f "$DIR/floor.bin"
    T_FLOOR=$(echo "$T_READ $T_WRITE" | awk '{printf "%.3f", $1+$2}')
    echo "I/O floor ($COLD): read input $T_READ s + write output-sized file $T_WRITE s = $T_FLOOR s"
    drop_caches
    J=$($B/fp8-dequant -q --json --threads $THREADS "$SRC" "$DIR/out-bf16")
    T_DQ=$(echo "$J" | json_get "['seconds']"); RSS_DQ=$(echo "$J" | json_get "['peak_rss_bytes']")
    echo "fp8-dequant ($COLD, $THREADS threads): $T_DQ s, $(echo "$IN_BYTES $T_DQ" | awk '{printf "%.2f", $1/1e9/$2}') GB/s of input, peak RSS $(echo $RSS_DQ | awk '{printf "%.0f MiB", $1/1048576}'), $(echo "$T_DQ $T_FLOOR" | awk '{printf "%.2fx", $1/$2}') the I/O floor"
    rm -rf "$DIR/out-bf16"
    for sch in nvfp4a16 w4a16; do
        drop_caches
        if [ $sch = w4a16 ]; then tool=w4a16-quantize; else tool=nvfp4-quantize; fi
        J=$($B/$tool -q --json --threads $THREADS --recipe recipes/minimax-$sch.yaml "$SRC" "$DIR/out-$sch")
        T=$(echo "$J" | json_get "['seconds']"); RSS=$(echo "$J" | json_get "['peak_rss_bytes']")
        EPS=$(echo "$J" | json_get "['quantized_elements_per_s']")
        echo "FP8 -> $sch ($COLD): $T s, $(echo "$T $T_DQ" | awk '{printf "%.2fx", $1/$2}') fp8-dequant, $(echo "$EPS $THREADS" | awk '{printf "%.0f M quantized elements/s (%.0f M per thread)", $1/1e6, $1/1e6/$2}'), peak RSS $(echo $RSS | awk '{printf "%.0f MiB", $1/1048576}')"
        rm -rf "$DIR/out-$sch"
    done
    # reap-prune: keep 192 of the 256 experts (the REAP-172B ratio; every 4th expert goes,
    # given as a --keep map since the synthetic layer has no calibration statistics). Its floor:
    # the read of the whole input above + writing a file of the pruned size.
    MAP=$DIR/keep192.json
    { printf '{"retained": {"model.layers.0.block_sparse_moe": ['; seq 0 255 | awk '$1 % 4 != 3' | paste -sd, | tr -d '\n'; printf ']}}\n'; } > "$MAP"
    P_BYTES=$($B/reap-prune --dry-run --keep "$MAP" "$SRC" "$DIR/x" | awk '/write/ {print $5*1e9}')
    drop_caches
    MB=$(echo $P_BYTES | awk '{printf "%d", $1/1048576}')
    T_WP=$(secs dd if=/dev/zero of="$DIR/floor.bin" bs=1M count="$MB" conv=fdatasync)
    rm -f "$DIR/floor.bin"
    T_PFLOOR=$(echo "$T_READ $T_WP" | awk '{printf "%.3f", $1+$2}')
    rm -rf "$DIR/out-pruned"
    drop_caches
    J=$($B/reap-prune -q --json --threads $THREADS --keep "$MAP" "$SRC" "$DIR/out-pruned")
    T=$(echo "$J" | json_get "['seconds']"); RSS=$(echo "$J" | json_get "['peak_rss_bytes']")
    echo "reap-prune 256 -> 192 experts ($COLD): $T s, $(echo $P_BYTES | awk '{printf "%.2f GB", $1/1e9}') written, I/O floor $T_READ + $T_WP = $T_PFLOOR s, $(echo "$T $T_PFLOOR" | awk '{printf "%.2fx", $1/$2}') the floor, peak RSS $(echo $RSS | awk '{printf "%.0f MiB", $1/1048576}')"
    rm -rf "$DIR/out-pruned"
    echo
fi

echo "-- 3. validate-ignore-list on full-size synthetic headers --"
$BUILD/bench/bench_validate "$DIR" 2>&1 | grep -E "^(fp8|nvfp4|broken)"
echo
echo "-- 4. calibration forward --"
$BUILD/bench/bench_calib 2>&1 | tail -n 12
echo "-- 4a. the routed forward of the AutoRound loop's passes, full-size layer, 8 x 2048 tokens --"
$BUILD/bench/bench_calib --tokens 16384 --seq 2048 --routed 2>&1 | sed -n '/full-size/,/peak RSS/p'
echo "-- 4b. GPTQ per full-size Linear (CPU, $THREADS threads) --"
$BUILD/bench/bench_gptq --threads "$THREADS" 2>&1
echo
echo "-- 4c. AutoRound SignRound, one full-size expert MLP, 2048 tokens (BENCH_AR_ITERS, default 200) --"
$BUILD/bench/bench_autoround --iters "${BENCH_AR_ITERS:-200}" 2>&1 | tail -n 2
echo
echo "-- 5. CUDA: one full-size layer on the GPU vs cuBLAS bf16 peak (needs a GPU; skipped otherwise) --"
if [ -x "$BUILD/bench/bench_cuda_layer" ]; then $BUILD/bench/bench_cuda_layer 2>&1 | tail -n 12; else echo "  (not built: no nvcc)"; fi
echo "-- 5b. CUDA: AutoRound's block tuning, one full-size MiniMax-M2 block (BENCH_CUAR_ITERS, default 10; needs a GPU) --"
$BUILD/bench/bench_cuda_autoround --iters "${BENCH_CUAR_ITERS:-10}" 2>&1 | tail -n 6
echo "-- 5c. CUDA: GPTQ's work for one full-size MiniMax-M2 layer, 64 x 2048 tokens (needs a GPU) --"
$BUILD/bench/bench_cuda_gptq --threads "${BENCH_CUGPTQ_THREADS:-1}" 2>&1 | tail -n 6

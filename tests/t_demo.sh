#!/bin/sh
# t_demo: `make demo` (scripts/demo.sh) checks each quantized output against its recipe's
# fourbit: thresholds with ref-runner's exit status, prints pass / MISS with the numbers behind
# the verdict, explains a miss (issue 17 item 3), and every output gets its own model card.
. tests/lib.sh
M=models/tiny-minimax-m2
if ! ls $M/*.safetensors >/dev/null 2>&1 || [ ! -x "$BIN/ref-runner" ]; then
    echo "t_demo: $M or ref-runner absent, skipped"; ok; finish; exit $?
fi
expect_rc 0 "demo" -- env DEMO_OUT="$T_TMP/demo" BUILD="$BUILD" sh scripts/demo.sh
for d in "nvfp4 \(W4A4\)" "modelopt \(W4A4\)" nvfp4a16 w4a16 w4a16-autoround; do
    expect_out "^$d: .*  (pass|MISS): KL [0-9.]+ (<=|>) [0-9.]+, top-1 [0-9.]+ (>=|<) [0-9.]+$" "$d: verdict against the recipe thresholds"
done
# the verdict is ref-runner's: rerun one check by hand and compare
"$BIN/ref-runner" -q --reference $M --quantized "$T_TMP/demo/w4a16" --data data/demo-chat.jsonl --samples 8 --seq-len 256 \
    --recipe recipes/minimax-w4a16.yaml 2>/dev/null; rrc=$?
if [ $rrc = 1 ]; then expect_out "^w4a16: .*MISS" "w4a16: a MISS where ref-runner exits 1"
else expect_out "^w4a16: .*pass" "w4a16: pass where ref-runner exits 0"; fi
if grep -q "MISS" "$T_TMP/out"; then expect_out "A MISS here is expected of the embedded model" "a miss is explained"; fi
for d in bf16 nvfp4 nvfp4-modelopt nvfp4a16 w4a16 w4a16-autoround; do
    cmp -s "$T_TMP/demo/$d/README.md" $M/README.md && fail "$d: the source card was copied" || ok
done
for d in nvfp4 nvfp4-modelopt nvfp4a16 w4a16 w4a16-autoround; do
    grep -q "^## Measured quality (ref-runner)" "$T_TMP/demo/$d/README.md" && ok || fail "$d: no measured table in the card"
done
finish

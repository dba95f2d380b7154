#!/bin/sh
# t_card: the model card every writer puts in DST (issue 14 part 3, issue 17 item 1): the
# source's README.md is never copied; the card has Hugging Face front matter (base_model,
# base_model_relation, library_name, tags, the source card's license), says what was done
# (tool, scheme per module group, ignore list, embedded recipe, calibration data, sizes,
# serving lines) and lists what of the source was not carried over (subfolders, hidden files,
# training logs), also in the --json summary. Side files a loader needs are still copied.
. tests/lib.sh
M=models/tiny-minimax-m2
if ! ls $M/*.safetensors >/dev/null 2>&1; then
    echo "t_card: $M absent, skipped"; ok; finish; exit $?
fi
D=tests/golden/model-quant/calib-ids.jsonl
S="$T_TMP/src"
cp -r $M "$S"
mkdir -p "$S/figures" "$S/docs"
echo png > "$S/figures/bench.png"; echo doc > "$S/docs/usage.md"
echo '*.safetensors filter=lfs diff=lfs merge=lfs -text' > "$S/.gitattributes"
printf -- '---\nlicense: other\nlicense_name: modified-mit\nlicense_link: LICENSE\npipeline_tag: text-generation\n---\n# The FP8 source card\nBenchmarks of the FP8 release.\n' > "$S/README.md"
echo "MIT, modified" > "$S/LICENSE"

"$BIN/calibrate" -q --model "$S" --dataset $D --samples 4 -o "$T_TMP/stats.safetensors" || fail "calibrate"
run() {  # run NAME TOOL ARGS...: writes $T_TMP/NAME with --json, output in $T_TMP/NAME.json
    n=$1; shift
    "$@" "$S" "$T_TMP/$n" > "$T_TMP/$n.json" 2> "$T_TMP/$n.err" && ok || { fail "$n: $(cat "$T_TMP/$n.err")"; }
}
run bf16 "$BIN/fp8-dequant" --json
run nvfp4 "$BIN/nvfp4-quantize" --json --recipe recipes/minimax.yaml --calib "$T_TMP/stats.safetensors"
run nvfp4a16 "$BIN/nvfp4-quantize" --json --recipe recipes/minimax-nvfp4a16.yaml
run w4a16 "$BIN/w4a16-quantize" --json --recipe recipes/minimax-w4a16.yaml
run autoround "$BIN/w4a16-quantize" --json --recipe recipes/minimax-w4a16.yaml --format auto_round

# has FILE PATTERN DESC: grep -E in FILE
has() { if grep -Eq -- "$2" "$1"; then ok; else fail "$3: $1 lacks /$2/"; fi; }
for d in bf16 nvfp4 nvfp4a16 w4a16 autoround; do
    C="$T_TMP/$d/README.md"
    [ -f "$C" ] && ok || { fail "$d: no README.md"; continue; }
    cmp -s "$C" "$S/README.md" && fail "$d: the source card was copied" || ok
    grep -q "Benchmarks of the FP8 release" "$C" && fail "$d: source card text in the output card" || ok
    [ "$(head -1 "$C")" = "---" ] && ok || fail "$d: no YAML front matter"
    has "$C" "^base_model: src$" "$d: base_model"
    has "$C" "^library_name: transformers$" "$d: library_name"
    has "$C" "^license: other$" "$d: license copied from the source card"
    has "$C" "^license_name: modified-mit$" "$d: license_name copied"
    has "$C" "^- fourbit$" "$d: tags"
    has "$C" "written by fourbit [0-9.]+ \`" "$d: tool and version"
    has "$C" "^## Serving" "$d: serving lines"
    has "$C" "^- \`figures/\`: subfolder" "$d: figures/ listed as not carried over"
    has "$C" "^- \`docs/\`: subfolder" "$d: docs/ listed"
    has "$C" "^- \`.gitattributes\`" "$d: .gitattributes listed"
    has "$C" "^- \`train-log.json\`: training log" "$d: train-log.json listed"
    has "$C" "^- \`README.md\`: the source's model card" "$d: the source card listed"
    for f in tokenizer.json tokenizer_config.json chat_template.jinja generation_config.json LICENSE; do
        [ -f "$T_TMP/$d/$f" ] && cmp -s "$T_TMP/$d/$f" "$S/$f" && ok || fail "$d: $f not copied"
    done
    for f in train-log.json .gitattributes figures docs; do
        [ -e "$T_TMP/$d/$f" ] && fail "$d: $f copied" || ok
    done
    has "$T_TMP/$d.json" '"not_carried_over":\[\{"name":".gitattributes"' "$d: --json lists what was not carried over"
    has "$T_TMP/$d.json" '"name":"figures/"' "$d: --json lists figures/"
    grep -q README.md "$T_TMP/$d/fourbit-manifest.json" && fail "$d: README.md in the manifest" || ok
    "$BIN/validate-ignore-list" "$T_TMP/$d" > /dev/null 2>&1 && ok || fail "$d: output does not validate"
done
grep -q "base_model_relation" "$T_TMP/bf16/README.md" && fail "bf16: a dequant is not a quantization" || ok
for d in nvfp4 nvfp4a16 w4a16 autoround; do
    C="$T_TMP/$d/README.md"
    has "$C" "^base_model_relation: quantized$" "$d: relation"
    has "$C" "^## Scheme per module group" "$d: plan"
    has "$C" "block_sparse_moe.gate.weight +keep .*ignored by 're:\.\*block_sparse_moe" "$d: the gate rule in the plan"
    has "$C" "^- \`lm_head\`$" "$d: ignore list as applied"
    has "$C" "^## Recipe" "$d: recipe section"
    has "$C" "^      targets: \[Linear\]$" "$d: recipe embedded verbatim"
done
has "$T_TMP/nvfp4/README.md" "^- nvfp4$" "nvfp4: scheme tag"
has "$T_TMP/nvfp4/README.md" "dataset \| \`$D\`" "nvfp4: calibration dataset"
has "$T_TMP/nvfp4/README.md" "samples \| 4 \|" "nvfp4: calibration samples"
# the dataset's sha256 as coreutils computes it (independent of fourbit)
has "$T_TMP/nvfp4/README.md" "dataset sha256 \| \`$(sha256sum $D | cut -d' ' -f1)\` \|" "nvfp4: calibration data sha256 = sha256sum's"
has "$T_TMP/nvfp4/README.md" "chat template \| [^|]*chat_template.jinja" "nvfp4: template (the checkpoint's own, --template auto)"
has "$T_TMP/nvfp4/README.md" "Blackwell.*native NVFP4 W4A4" "nvfp4: Blackwell serving line"
has "$T_TMP/nvfp4/README.md" "Hopper.*Marlin" "nvfp4: Hopper serving line"
has "$T_TMP/nvfp4a16/README.md" "^none \(weight-only scheme" "nvfp4a16: no calibration"
has "$T_TMP/autoround/README.md" "^- auto-round$" "autoround: tag"
has "$T_TMP/w4a16/README.md" "int4 weight-only through Marlin" "w4a16: serving line"
has "$T_TMP/nvfp4.err" "not carried over from .*README.md" "text summary lists what was not carried over"
has "$T_TMP/nvfp4.err" "^  figures/ +subfolder" "text summary lists figures/"
finish

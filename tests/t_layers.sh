#!/bin/sh
# t_layers.sh: dependencies point one way. A file in src/<folder>/ may include headers of its own
# folder and of folders BELOW it in this order, never of a folder above (no cycles):
#
#   common -> io -> arch -> quant -> calib -> cuda -> jobs      (tools/ may include anything)
#
#   common  errors, allocation, threads, progress, CLI tables
#   io      safetensors, checkpoints, datasets, tokenizer, chat templates
#   arch    the architecture table (one file per model family)
#   quant   number formats, kernels, recipes, schemes and the plan, the validator
#   calib   the CPU engine (layer forward), weight sources, statistics
#   cuda    the CUDA engine
#   jobs    whole jobs as library functions (quantize, the reference runner)
# A new folder must be added here, at its place, or this test fails.
ORDER="common io arch quant calib cuda jobs"
pass=0; fail=0
rank() { i=0; for f in $ORDER; do [ "$f" = "$1" ] && { echo $i; return; }; i=$((i + 1)); done; echo -1; }
for dir in src/*/; do
    d=$(basename "$dir")
    rd=$(rank "$d")
    if [ "$rd" -lt 0 ]; then
        echo "FAIL: src/$d/ is not in the layer order of tests/t_layers.sh ($ORDER)"; fail=$((fail + 1)); continue
    fi
    for f in "$dir"*; do
        [ -f "$f" ] || continue
        # #include "folder/file.h" lines
        for inc in $(sed -n 's/^[[:space:]]*#[[:space:]]*include[[:space:]]*"\([a-z_]*\)\/[^"]*".*/\1/p' "$f" | sort -u); do
            ri=$(rank "$inc")
            if [ "$ri" -lt 0 ]; then
                echo "FAIL: $f includes \"$inc/...\", which is no src/ folder"; fail=$((fail + 1))
            elif [ "$ri" -gt "$rd" ]; then
                echo "FAIL: $f (src/$d, layer $rd) includes \"$inc/...\" (layer $ri): dependencies must point down ($ORDER)"
                fail=$((fail + 1))
            else
                pass=$((pass + 1))
            fi
        done
    done
done
# Inside a folder, files depend one way too: an edge "b a" for each a.c/a.h that includes the
# same folder's b.h (x_priv.h is x's private header, the same node), and tsort finds any loop.
edges=$(mktemp); trap 'rm -f "$edges"' EXIT
for dir in src/*/; do
    d=$(basename "$dir")
    for f in "$dir"*.c "$dir"*.h; do
        [ -f "$f" ] || continue
        s=$(basename "$f"); s=${s%.*}; s=${s%_priv}
        for inc in $(sed -n "s/^[[:space:]]*#[[:space:]]*include[[:space:]]*\"$d\/\([a-z0-9_]*\)\.h\".*/\1/p" "$f" | sort -u); do
            inc=${inc%_priv}
            [ "$inc" != "$s" ] && echo "$d/$inc $d/$s" >> "$edges"
        done
    done
done
if loop=$(tsort "$edges" 2>&1 >/dev/null) && [ -z "$loop" ]; then
    pass=$((pass + 1))
else
    echo "FAIL: files include each other inside a folder (a cycle):"; echo "$loop" | sed 's/^/  /'
    fail=$((fail + 1))
fi
echo "t_layers.sh: $pass passed, $fail failed"
[ "$fail" = 0 ]

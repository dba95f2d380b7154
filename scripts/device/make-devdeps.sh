#!/bin/sh
# Builds .devdeps/ (git-ignored) for running fourbit on the lent GPU machine, which has nvcc and
# PyTorch but none of fourbit's Debian libraries and no network: Debian's .debs of OpenBLAS,
# libyaml, jansson, xxHash and PCRE2 (unpacked there into /tmp/devroot by .devdeps/env.sh), the
# OpenBLAS headers, and a pkg-config stand-in that points the Makefile at them. About 9 MB, so
# it fits the device call's carry limit next to the tree. Run here (Debian, apt-get download
# needs no root), from the repository root; then in a device call: carry [".devdeps"], and start
# the command with `. .devdeps/env.sh`. The call scripts beside this one (call-*.sh) do.
set -eu
D=.devdeps
rm -rf "$D" && mkdir -p "$D/debs" "$D/bin"
(cd "$D/debs" && apt-get download libyaml-dev libyaml-0-2 libjansson-dev libjansson4 libxxhash-dev libxxhash0 \
    libpcre2-dev libpcre2-8-0 libopenblas-dev libopenblas0 libopenblas0-pthread libgfortran5 >/dev/null)
# the OpenBLAS headers without libopenblas-pthread-dev's 5 MB static library
T=$(mktemp -d)
(cd "$T" && apt-get download libopenblas-pthread-dev >/dev/null && dpkg -x libopenblas-pthread-dev_*.deb root)
tar czf "$D/obinc.tgz" -C "$T/root" usr/include
rm -rf "$T"
cat > "$D/bin/pkg-config" <<'P'
#!/bin/sh
# pkg-config stand-in on the device: the Debian libraries unpacked under /tmp/devroot
R=/tmp/devroot
L=$R/usr/lib/x86_64-linux-gnu
for a in "$@"; do
  case "$a" in
    --exists) exit 0;;
    --cflags) printf -- "-I%s/usr/include -I%s/usr/include/x86_64-linux-gnu/openblas-pthread " "$R" "$R";;
    --libs) printf -- "-L%s -L%s/openblas-pthread -Wl,-rpath,%s -Wl,-rpath,%s/openblas-pthread -lyaml -ljansson -lxxhash -lpcre2-8 -lopenblas " "$L" "$L" "$L" "$L";;
  esac
done
echo
P
chmod +x "$D/bin/pkg-config"
cat > "$D/env.sh" <<'E'
# . .devdeps/env.sh on the device: fourbit's Debian libraries unpacked under /tmp/devroot
D=$(pwd)/.devdeps R=/tmp/devroot
if [ ! -d $R ]; then
  mkdir -p $R && for f in $D/debs/*.deb; do dpkg -x $f $R; done && tar xzf $D/obinc.tgz -C $R
  ln -sf libopenblasp-r0.3.21.so $R/usr/lib/x86_64-linux-gnu/openblas-pthread/libopenblas.so
fi
export PATH=$D/bin:$PATH:/usr/local/cuda/bin
export LD_LIBRARY_PATH=$R/usr/lib/x86_64-linux-gnu:$R/usr/lib/x86_64-linux-gnu/openblas-pthread${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}
export NCCL_NVLS_ENABLE=0 TORCH_SYMM_MEM_DISABLE_MULTICAST=1 NVSHMEM_DISABLE_NVLS=1
E
du -sh "$D"

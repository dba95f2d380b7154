# fourbit: one C library (build/libfourbit.a), thin tools (build/bin/*), tests, benchmarks.
#
#   make              build the library and every tool
#   make test         build, then run every test (unit, golden, bad-input, CLI)
#   make test SAN=1   the same under AddressSanitizer + UndefinedBehaviorSanitizer
#   make demo         the main job on the embedded model (see README.md)
#   make bench        benchmarks that print ratios measured in one run (BENCHMARKS.md)
#   make install      the tools into $(DESTDIR)$(PREFIX)/bin, the recipes into
#                     $(DESTDIR)$(PREFIX)/share/fourbit/recipes (PREFIX=/usr/local by default)
#   make CUDA=0       build without the optional CUDA code even when nvcc is present
#   make fuzz         build and run every libFuzzer harness tests/fuzz/fuzz_*.c (clang),
#                     FUZZ_SECONDS=N each (default 30)
#   make CROSS=aarch64-linux-gnu-   cross-build (into build-aarch64/; CUDA off; the :arm64
#                     Debian packages found through PKG_CONFIG); scripts/cross-aarch64.sh
#                     installs the toolchain and runs the tests under qemu-aarch64-static
#
# Knobs (all overridable on the command line or in the environment): CC, AR, PKG_CONFIG, OPT,
# CROSS, SAN, CUDA, NVCC, CUDA_ARCH, BUILD.
#
# Sources are found by wildcard: src/<module>/*.c go into the library, tools/<name>.c become
# build/bin/<name>, tests/test_<name>.c become build/tests/test_<name>. Adding a file needs
# no edit here.

# CROSS is a toolchain prefix. CC and AR are make built-ins (`?=` would never apply), so the
# prefix replaces them only where they still hold make's defaults.
comma    := ,
CROSS    ?=
ifeq ($(origin CC),default)
CC       := $(CROSS)gcc
ifeq ($(CROSS),)
CC       := cc
endif
endif
ifeq ($(origin AR),default)
AR       := $(CROSS)ar
endif
# Debian ships no <triplet>-pkg-config wrapper for its cross compilers: point pkg-config at
# the multiarch .pc files of the :arm64 (or other) packages instead.
ifeq ($(CROSS),)
PKG_CONFIG ?= pkg-config
else
PKG_CONFIG ?= env PKG_CONFIG_LIBDIR=/usr/lib/$(patsubst %-,%,$(CROSS))/pkgconfig:/usr/share/pkgconfig pkg-config
endif
OPT      ?= -O2
SAN      ?= 0
CUDA     ?= auto
NVCC     ?= nvcc
# Machine code (SASS) for Hopper (H100/H200, sm_90), datacenter Blackwell (B200, sm_100),
# RTX Blackwell (sm_120) and DGX Spark's GB10 (sm_121), plus compute_90 PTX that the driver
# JIT-compiles on any later GPU. The CUDA path is only used by ref-runner / calibrate
# --device cuda. Override with e.g. CUDA_ARCH="-gencode arch=compute_90,code=sm_90".
CUDA_ARCH ?= -gencode arch=compute_90,code=sm_90 -gencode arch=compute_100,code=sm_100 \
             -gencode arch=compute_120,code=sm_120 -gencode arch=compute_121,code=sm_121 \
             -gencode arch=compute_90,code=compute_90
# The same list as text, compiled into the runtime device check's message ("sm_90 sm_100 ...
# compute_90"): the code= targets of CUDA_ARCH (code=sm_90 or code=[sm_90,compute_90]).
CUDA_ARCH_LIST = $(strip $(foreach w,$(CUDA_ARCH),$(if $(findstring code=,$(w)),$(subst $(comma), ,$(subst [,,$(subst ],,$(lastword $(subst code=, ,$(w)))))))))
# make install: PREFIX is where the tools go (bin/, share/fourbit/), DESTDIR a staging root
# prepended to it (packaging), as the GNU conventions have it.
PREFIX   ?= /usr/local
DESTDIR  ?=

# Debian packages: pkg-config name -> package that provides it (for the error message).
PKGS := yaml-0.1:libyaml-dev jansson:libjansson-dev libxxhash:libxxhash-dev \
        libpcre2-8:libpcre2-dev openblas:libopenblas-dev

ifneq ($(CROSS),)
BUILD    ?= build-$(firstword $(subst -, ,$(CROSS)))
endif
ifeq ($(SAN),1)
BUILD    ?= build-san
SANFLAGS := -fsanitize=address,undefined -fno-omit-frame-pointer -fno-sanitize-recover=undefined
OPT      := -O1
else
BUILD    ?= build
SANFLAGS :=
endif

# Fuzzing (make fuzz): clang's libFuzzer with ASan + UBSan over a library of its own in
# build-fuzz/; set by the fuzz target itself (FUZZ=1), not meant to be given by hand.
FUZZ         ?= 0
FUZZ_SECONDS ?= 30
FUZZ_CC      ?= clang
ifeq ($(FUZZ),1)
BUILD    := build-fuzz
SANFLAGS := -fsanitize=fuzzer-no-link,address,undefined -fno-omit-frame-pointer -fno-sanitize-recover=undefined
OPT      := -O1
CUDA     := 0
endif

# A fresh Debian machine: install what is missing before the flags are computed (root only;
# otherwise the deps target names the packages to install).
# Not for a cross build: install-deps.sh installs host packages (scripts/cross-aarch64.sh
# installs the :arm64 ones).
ifeq ($(filter clean,$(MAKECMDGOALS))$(CROSS),)
_missing := $(strip $(foreach pp,$(PKGS),$(if $(shell $(PKG_CONFIG) --exists $(firstword $(subst :, ,$(pp))) 2>/dev/null && echo y),,$(pp))))
ifneq ($(_missing),)
ifeq ($(shell id -u),0)
$(info fourbit: missing $(_missing); running scripts/install-deps.sh)
_rc := $(shell sh scripts/install-deps.sh 1>&2; echo $$?)
endif
endif
endif

# Strict IEEE: no contraction into FMA, no fast-math. The golden tests are bit-exact.
PKG_CFLAGS := $(shell $(PKG_CONFIG) --cflags $(foreach p,$(PKGS),$(firstword $(subst :, ,$(p)))) 2>/dev/null)
PKG_LIBS   := $(shell $(PKG_CONFIG) --libs $(foreach p,$(PKGS),$(firstword $(subst :, ,$(p)))) 2>/dev/null)
CFLAGS   ?= $(OPT) -g
CFLAGS   += -std=gnu11 -D_GNU_SOURCE -D_FILE_OFFSET_BITS=64 -ffp-contract=off -fno-fast-math \
            -Wall -Wextra -Wshadow -Wstrict-prototypes -Wno-unused-parameter \
            -pthread -Isrc $(PKG_CFLAGS) $(SANFLAGS)
LDFLAGS  += -pthread $(SANFLAGS)
LDLIBS   += $(PKG_LIBS) -lm

# ---- CUDA detection (optional) -------------------------------------------------------------
# A cross build never picks up the host's nvcc (it would emit host-arch objects).
ifeq ($(CUDA)$(CROSS),auto)
  ifneq ($(shell command -v $(NVCC) 2>/dev/null),)
    CUDA := 1
  else
    CUDA := 0
  endif
endif
CU_SRCS := $(wildcard src/cuda/*.cu)
ifeq ($(CUDA),auto)
  CUDA := 0
endif
ifeq ($(CUDA),1)
  CUDA_HOME ?= $(patsubst %/bin/nvcc,%,$(shell command -v $(NVCC)))
  CFLAGS  += -DFB_HAVE_CUDA=1 -I$(CUDA_HOME)/include
  LDLIBS  += -L$(CUDA_HOME)/lib64 -Wl,-rpath,$(CUDA_HOME)/lib64 -lcublas -lcusolver -lcudart_static -ldl -lrt -lstdc++
  CU_OBJS := $(patsubst src/%.cu,$(BUILD)/obj/%.o,$(CU_SRCS))
else
  CU_OBJS :=
endif

SRCS  := $(wildcard src/*/*.c)
OBJS  := $(patsubst src/%.c,$(BUILD)/obj/%.o,$(SRCS))
LIB   := $(BUILD)/libfourbit.a
TOOLS := $(patsubst tools/%.c,$(BUILD)/bin/%,$(wildcard tools/*.c))
TESTS := $(patsubst tests/%.c,$(BUILD)/tests/%,$(wildcard tests/test_*.c))
BENCHES := $(patsubst bench/%.c,$(BUILD)/bench/%,$(wildcard bench/*.c))
FUZZERS := $(patsubst tests/fuzz/%.c,$(BUILD)/fuzz/%,$(wildcard tests/fuzz/fuzz_*.c))

.PHONY: all deps test demo bench clean announce install fuzz fuzz-run
all: deps announce $(TOOLS)

# Checks the Debian packages; installs them (scripts/install-deps.sh) when missing and root.
deps:
	@missing=""; for pp in $(PKGS); do p=$${pp%%:*}; d=$${pp#*:}; \
	  $(PKG_CONFIG) --exists $$p 2>/dev/null || missing="$$missing $$d"; done; \
	  command -v pkg-config >/dev/null || missing="$$missing pkg-config"; \
	  if [ -n "$$missing" ]; then \
	    if [ -n "$(CROSS)" ]; then echo "fourbit: missing for $(CROSS):$$missing (run: sudo scripts/cross-aarch64.sh --install)" >&2; exit 1; fi; \
	    if [ "$$(id -u)" = 0 ]; then scripts/install-deps.sh || exit 1; \
	    else echo "fourbit: missing Debian packages:$$missing (run: sudo scripts/install-deps.sh)" >&2; exit 1; fi; \
	    echo "fourbit: dependencies installed; run make again if the build fails to find them"; \
	  fi

announce:
	@if [ "$(CUDA)" = 1 ]; then echo "fourbit: CUDA found ($(NVCC)); building src/cuda (make CUDA=0 to skip)"; \
	 else echo "fourbit: CUDA not built (no nvcc or CUDA=0); CPU paths only"; fi

$(BUILD)/obj/%.o: src/%.c $(wildcard src/*/*.h)
	@mkdir -p $(dir $@)
	$(CC) $(CFLAGS) -c $< -o $@

$(BUILD)/obj/%.o: src/%.cu $(wildcard src/*/*.h)
	@mkdir -p $(dir $@)
	$(NVCC) -O2 $(CUDA_ARCH) -Isrc $(PKG_CFLAGS) -DFB_HAVE_CUDA=1 -DFB_CUDA_ARCHS='"$(CUDA_ARCH_LIST)"' -Xcompiler -fPIC,-ffp-contract=off -c $< -o $@

$(LIB): $(OBJS) $(CU_OBJS)
	@mkdir -p $(dir $@)
	rm -f $@ && $(AR) rcs $@ $^

$(BUILD)/bin/%: tools/%.c $(wildcard tools/*.h) $(LIB)
	@mkdir -p $(dir $@)
	$(CC) $(CFLAGS) $< $(LIB) $(LDFLAGS) $(LDLIBS) -o $@

$(BUILD)/tests/%: tests/%.c $(wildcard tests/*.h) $(LIB)
	@mkdir -p $(dir $@)
	$(CC) $(CFLAGS) -Itests $< $(LIB) $(LDFLAGS) $(LDLIBS) -o $@

# GCC 12 for aarch64 has an internal compiler error (vect_transform_reduction) on
# tests/test_forward.c at -O2: that one test binary is built without loop vectorization there.
ifneq ($(findstring aarch64,$(shell $(CC) -dumpmachine 2>/dev/null)),)
ifeq ($(shell echo __GNUC__ __clang__ | $(CC) -E -P - 2>/dev/null | tr -d ' '),12__clang__)
$(BUILD)/tests/test_forward: CFLAGS += -fno-tree-loop-vectorize
endif
endif

$(BUILD)/bench/%: bench/%.c $(LIB)
	@mkdir -p $(dir $@)
	$(CC) $(CFLAGS) $< $(LIB) $(LDFLAGS) $(LDLIBS) -o $@

# Every test binary and tests/*.sh script; prints "N passed, N failed" and fails on any failure.
test: deps announce $(TOOLS) $(TESTS)
	@BUILD=$(BUILD) sh tests/run-tests.sh

# The main job on the embedded model, into a fresh demo-out/ (see scripts/demo.sh).
demo: deps announce $(TOOLS)
	@BUILD=$(BUILD) sh scripts/demo.sh

# Benchmarks: synthetic full-size MiniMax-M2 layer; results go into BENCHMARKS.md by hand.
bench: deps announce $(TOOLS) $(BENCHES)
	@BUILD=$(BUILD) sh bench/run-bench.sh

# The built tools and the shipped recipes; nothing else is needed at run time.
install: $(TOOLS)
	install -d "$(DESTDIR)$(PREFIX)/bin" "$(DESTDIR)$(PREFIX)/share/fourbit/recipes"
	install -m 755 $(TOOLS) "$(DESTDIR)$(PREFIX)/bin/"
	install -m 644 recipes/*.yaml "$(DESTDIR)$(PREFIX)/share/fourbit/recipes/"
	@echo "fourbit: tools installed in $(DESTDIR)$(PREFIX)/bin, recipes in $(DESTDIR)$(PREFIX)/share/fourbit/recipes"

# Every tests/fuzz/fuzz_<name>.c (found by wildcard: a new harness needs no edit here) is
# built with clang against an instrumented library and run for FUZZ_SECONDS from its seeds,
# tests/fuzz/corpus/<name>/ (read only: new inputs go to build-fuzz/corpus/<name>/). A crash,
# a leak, a 10 s input or 2 GB of RSS fails the target; the reproducer is left in
# build-fuzz/crash-<name>-*, the log in build-fuzz/fuzz-<name>.log.
fuzz:
	@command -v $(FUZZ_CC) >/dev/null || { echo "fourbit: make fuzz needs $(FUZZ_CC) (Debian: clang libclang-rt-14-dev)" >&2; exit 1; }
	@$(MAKE) --no-print-directory FUZZ=1 CC=$(FUZZ_CC) FUZZ_SECONDS=$(FUZZ_SECONDS) fuzz-run

fuzz-run: deps $(FUZZERS)
	@set -e; for f in $(FUZZERS); do n=$${f##*/fuzz_}; \
	  mkdir -p $(BUILD)/corpus/$$n; seeds=tests/fuzz/corpus/$$n; [ -d "$$seeds" ] || seeds=; \
	  printf 'fuzz %-16s %s s ... ' "$$n" "$(FUZZ_SECONDS)"; \
	  if $$f -max_total_time=$(FUZZ_SECONDS) -timeout=10 -rss_limit_mb=2048 -print_final_stats=1 \
	       -artifact_prefix=$(BUILD)/crash-$$n- $(BUILD)/corpus/$$n $$seeds >$(BUILD)/fuzz-$$n.log 2>&1; then \
	    grep -E '^stat::number_of_executed_units' $(BUILD)/fuzz-$$n.log | sed 's/.*: */ok, executions: /'; \
	  else echo FAILED; tail -n 40 $(BUILD)/fuzz-$$n.log; exit 1; fi; done

$(BUILD)/fuzz/%: tests/fuzz/%.c $(wildcard tests/fuzz/*.h) $(LIB)
	@mkdir -p $(dir $@)
	$(CC) $(CFLAGS) -Itests/fuzz -fsanitize=fuzzer $< $(LIB) $(LDFLAGS) $(LDLIBS) -o $@

clean:
	rm -rf build build-san build-fuzz build-aarch64 build-aarch64-qemu demo-out

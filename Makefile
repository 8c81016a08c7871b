# instar - a safe, fast stand-in for qemu-img.
#
#   make            build ./instar (gcc by default; CC=clang works too)
#   make demo       install missing packages, build, run instar info on a fresh image
#   make check      install missing packages, build, run every test
#   make SANITIZE=1 build with AddressSanitizer and UBSan

CC      ?= cc
CSTD    := -std=c17
WARN    := -Wall -Wextra -Werror -Wshadow -Wstrict-prototypes -Wmissing-prototypes
OPT     ?= -O2 -g
CFLAGS  += $(CSTD) $(WARN) $(OPT) -D_GNU_SOURCE -MMD -MP
LDLIBS  += -lseccomp -lzstd -lz -lbz2 -lm -lpthread

ifeq ($(SANITIZE),1)
CFLAGS  += -fsanitize=address,undefined -fno-omit-frame-pointer -fno-sanitize-recover=undefined -DINSTAR_SANITIZE
LDFLAGS += -fsanitize=address,undefined
endif

BUILD   ?= build
# Debian's python3 has python3-pytest; a python3 earlier on PATH may not.
PYTHON  ?= $(shell test -x /usr/bin/python3 && echo /usr/bin/python3 || echo python3)
COMMON  := $(wildcard src/common/*.c)
ENGINE  := $(wildcard src/engine/*.c)
WORKER  := $(wildcard src/worker/*.c)
HOST    := $(wildcard src/host/*.c)
LIBSRC  := $(COMMON) $(ENGINE) $(WORKER) $(filter-out src/host/main.c,$(HOST))
LIBOBJ  := $(LIBSRC:%.c=$(BUILD)/%.o)
UNITSRC := $(wildcard tests/unit/*.c)
UNITBIN := $(UNITSRC:tests/unit/%.c=$(BUILD)/unit/%)

.PHONY: all demo check unit integration deps clean bench

all: instar

# BIN puts the binary elsewhere (parallel work trees: BUILD=b1 BIN=b1/instar,
# then INSTAR_BIN=b1/instar for the tests).
BIN     ?= instar

instar: $(BIN)

ifneq ($(BIN),instar)
.PHONY: instar
endif

$(BIN): $(LIBOBJ) $(BUILD)/src/host/main.o
	$(CC) $(LDFLAGS) -o $@ $^ $(LDLIBS)
	ln -sf instar $(dir $@)qemu-img

$(BUILD)/%.o: %.c
	@mkdir -p $(dir $@)
	$(CC) $(CFLAGS) -c -o $@ $<

$(BUILD)/unit/%: tests/unit/%.c $(LIBOBJ)
	@mkdir -p $(dir $@)
	$(CC) $(CFLAGS) -Isrc $(LDFLAGS) -o $@ $< $(LIBOBJ) $(LDLIBS)

deps:
	@sh scripts/install-deps.sh

demo: deps
	$(MAKE) instar
	@sh scripts/demo.sh

unit: $(UNITBIN)
	@set -e; for t in $(UNITBIN); do echo "== $$t"; $$t; done

# Both cores when pytest-xdist is there (it is a listed dependency).
XDIST   := $(shell $(PYTHON) -c 'import xdist' 2>/dev/null && printf '%s' '-n 2')

integration: instar
	$(PYTHON) -m pytest -q $(XDIST) tests/integration

check: deps
	$(MAKE) instar
	$(MAKE) unit
	$(MAKE) integration
	$(MAKE) fuzz-smoke

bench: instar
	sh bench/run.sh

# ---- fuzzing (libFuzzer, clang) ----
#   make fuzz         build-fuzz/fuzz_<fmt> for every format, fuzz_tree, seeds
#   make fuzz-smoke   each target for FUZZ_TIME seconds from its seeds (2 at a time)
# A long run (new finds kept in the first directory):
#   mkdir -p build-fuzz/corpus/qcow2 && build-fuzz/fuzz_qcow2 -max_total_time=600 \
#       -max_len=262144 build-fuzz/corpus/qcow2 build-fuzz/seeds/qcow2
FUZZ_BUILD   ?= build-fuzz
FUZZ_CC      ?= clang
FUZZ_TIME    ?= 2
FUZZ_SAN     := -fsanitize=address,undefined -fno-sanitize-recover=undefined -fno-omit-frame-pointer
FUZZ_CFLAGS  := $(CSTD) $(WARN) -O1 -g -D_GNU_SOURCE -DINSTAR_SANITIZE $(FUZZ_SAN) -fsanitize=fuzzer-no-link
FUZZ_FORMATS := raw qcow2 qcow qed vmdk vpc vhdx vdi luks parallels bochs cloop dmg iso
FUZZ_OBJ     := $(COMMON:%.c=$(FUZZ_BUILD)/%.o) $(ENGINE:%.c=$(FUZZ_BUILD)/%.o)
FUZZ_BINS    := $(FUZZ_FORMATS:%=$(FUZZ_BUILD)/fuzz_%) $(FUZZ_BUILD)/fuzz_tree

.PHONY: fuzz fuzz-bins fuzz-seeds fuzz-smoke

fuzz: fuzz-bins fuzz-seeds

fuzz-bins: $(FUZZ_BINS)

fuzz-seeds: $(FUZZ_BUILD)/seeds/.done

$(FUZZ_BUILD)/seeds/.done: fuzz/seeds.sh tests/integration/hostile.py
	sh fuzz/seeds.sh $(FUZZ_BUILD)/seeds
	@touch $@

$(FUZZ_BUILD)/src/%.o: src/%.c
	@mkdir -p $(dir $@)
	$(FUZZ_CC) $(FUZZ_CFLAGS) -MMD -MP -c -o $@ $<

$(FUZZ_BUILD)/fuzz_%: fuzz/fuzz_driver.c fuzz/fuzz_common.h $(FUZZ_OBJ)
	$(FUZZ_CC) $(FUZZ_CFLAGS) -Isrc -Ifuzz -DFUZZ_FORMAT='"$*"' -fsanitize=fuzzer \
		-o $@ $< $(FUZZ_OBJ) $(LDLIBS)

$(FUZZ_BUILD)/fuzz_tree: fuzz/fuzz_tree.c fuzz/fuzz_common.h $(FUZZ_OBJ) $(FUZZ_BUILD)/src/host/render.o
	$(FUZZ_CC) $(FUZZ_CFLAGS) -Isrc -Ifuzz -fsanitize=fuzzer \
		-o $@ $< $(FUZZ_OBJ) $(FUZZ_BUILD)/src/host/render.o $(LDLIBS)

fuzz-smoke: fuzz
	sh fuzz/smoke.sh $(FUZZ_BUILD) $(FUZZ_TIME) $(FUZZ_FORMATS) tree

clean:
	rm -rf $(BUILD) instar qemu-img

-include $(shell find $(BUILD) -name '*.d' 2>/dev/null)
-include $(shell find $(FUZZ_BUILD) -name '*.d' 2>/dev/null)

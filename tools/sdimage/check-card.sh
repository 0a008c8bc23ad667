#!/usr/bin/env bash
# Checks a card image made by `make sdcard` the way a person would, with mtools on its FAT32
# partition (which starts 1 MiB in): the boot partition must hold the firmware (bootcode.bin,
# start.elf, fixup.dat for the Pi 3 family; start4.elf, fixup4.dat for the Pi 4), config.txt
# with the settings that start kernel8, and kernel8.img identical to the one built.
#
# usage: tools/sdimage/check-card.sh CARD.img KERNEL8.img
set -euo pipefail
case "${1:-}" in -h | --help) sed -n '2,/^set -euo pipefail/{/^#/s/^# \{0,1\}//p}' "$0"; exit 0 ;; esac

card=${1:?usage: $0 CARD.img KERNEL8.img}
kernel=${2:?usage: $0 CARD.img KERNEL8.img}
command -v mdir >/dev/null || { echo "error: mdir is missing: apt-get install mtools (make deps does)" >&2; exit 1; }
partition="$card@@1M"
export MTOOLS_SKIP_CHECK=1

listing=$(mdir -b -i "$partition" ::/) || { echo "error: mdir cannot read the FAT32 partition of $card" >&2; exit 1; }
failures=0
for file in bootcode.bin start.elf fixup.dat start4.elf fixup4.dat config.txt kernel8.img; do
  if grep -qix "::/$file" <<<"$listing"; then
    echo "card: /$file present"
  else
    echo "card: /$file MISSING"
    failures=$((failures + 1))
  fi
done

config=$(mtype -i "$partition" ::/config.txt 2>/dev/null || true)
for setting in arm_64bit=1 kernel=kernel8.img kernel_address=0x80000 enable_uart=1 init_uart_clock=48000000; do
  if grep -qx "$setting" <<<"$config"; then
    echo "card: config.txt sets $setting"
  else
    echo "card: config.txt lacks $setting"
    failures=$((failures + 1))
  fi
done

copy=$(mktemp)
trap 'rm -f "$copy"' EXIT
if mcopy -n -i "$partition" ::/kernel8.img "$copy" 2>/dev/null && cmp -s "$copy" "$kernel"; then
  echo "card: kernel8.img is the one built ($(stat -c %s "$kernel") bytes)"
else
  echo "card: kernel8.img differs from $kernel"
  failures=$((failures + 1))
fi

if [ "$failures" -eq 0 ]; then
  echo "card check: $card holds the firmware, config.txt and kernel8.img"
else
  echo "card check: $failures problems in $card"
  exit 1
fi

#!/usr/bin/env bash
# The aarch64-unknown-none runner of .cargo/config.toml: boots the ELF cargo built (the first
# argument; the rest are qemu-runner --boot options or QEMU arguments) with qemu-runner's
# --boot mode, building that host tool first if needed.
#
# usage: tools/runner/boot-elf.sh KERNEL.elf [qemu-runner --boot options] [QEMU arguments]
set -euo pipefail
case "${1:-}" in -h | --help) sed -n '2,/^set -euo pipefail/{/^#/s/^# \{0,1\}//p}' "$0"; exit 0 ;; esac
root=$(cd "$(dirname "$0")/../.." && pwd)
exec cargo run --release -q --manifest-path "$root/Cargo.toml" -p runner --bin qemu-runner -- --boot "$@"

#!/usr/bin/env bash
# The aarch64-unknown-none runner of .cargo/config.toml: boots the ELF cargo built (the first
# argument; the rest are qemu-runner --boot options or QEMU arguments) with qemu-runner's
# --boot mode, building that host tool first if needed.
set -euo pipefail
root=$(cd "$(dirname "$0")/../.." && pwd)
exec cargo run --release -q --manifest-path "$root/Cargo.toml" -p runner --bin qemu-runner -- --boot "$@"

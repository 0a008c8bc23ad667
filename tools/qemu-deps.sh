#!/usr/bin/env bash
# Makes sure `$QEMU` (default qemu-system-aarch64) exists and has the raspi4b machine (QEMU 9.0
# and newer), installing Debian's qemu-system-arm with apt-get when it does not.
#
# On Debian bookworm, whose own QEMU is 7.2 (no raspi4b), it comes from bookworm-backports
# (QEMU 10). The backports source is added, in a file of its own
# (/etc/apt/sources.list.d/tessera-bookworm-backports.list), only when no configured source has
# bookworm-backports already, on the archive the machine's main Debian source uses. Installing
# needs root; otherwise this says what to run. docs/QEMU.md says what changed from 7.2 to 10.
#
# usage: tools/qemu-deps.sh   (QEMU=PATH checks another binary; `make` runs it before QEMU)
set -euo pipefail
case "${1:-}" in -h | --help) sed -n '2,/^set -euo pipefail/{/^#/s/^# \{0,1\}//p}' "$0"; exit 0 ;; esac

QEMU=${QEMU:-qemu-system-aarch64}
BACKPORTS_LIST=/etc/apt/sources.list.d/tessera-bookworm-backports.list
KEYRING=/usr/share/keyrings/debian-archive-keyring.gpg

has_raspi4b() {
  command -v "$QEMU" >/dev/null 2>&1 && "$QEMU" -M help 2>/dev/null | grep -q '^raspi4b '
}

if has_raspi4b; then
  exit 0
fi

if command -v "$QEMU" >/dev/null 2>&1; then
  why="$("$QEMU" --version | head -n 1) has no raspi4b machine (QEMU 9.0 and newer have it)"
else
  why="$QEMU is missing"
fi
codename=$( (. /etc/os-release 2>/dev/null && echo "${VERSION_CODENAME:-}") || true)

if [ "$(id -u)" != 0 ]; then
  echo "error: $why." >&2
  if [ "$codename" = bookworm ]; then
    echo "       Install QEMU 10 from bookworm-backports as root (make deps does it): add a line" >&2
    echo "         deb <your Debian mirror> bookworm-backports main" >&2
    echo "       to $BACKPORTS_LIST, then" >&2
    echo "         sudo apt-get update && sudo apt-get install -t bookworm-backports qemu-system-arm" >&2
  else
    echo "       Install qemu-system-arm 9.0 or newer (sudo apt-get install qemu-system-arm)." >&2
  fi
  exit 1
fi

command -v apt-get >/dev/null || { echo "error: $why, and there is no apt-get to install QEMU with" >&2; exit 1; }
release=()
if [ "$codename" = bookworm ]; then
  if apt-get indextargets --format '$(RELEASE)' 2>/dev/null | grep -qx 'bookworm-backports'; then
    echo ">> bookworm-backports is already among the apt sources"
  else
    # The archive of the machine's main Debian source (the suite without a suffix).
    archive=$(apt-get indextargets --format '$(REPO_URI) $(RELEASE)' 2>/dev/null \
      | awk '$2 == "bookworm" && $1 ~ /debian\/?$/ { print $1; exit }')
    [ -n "$archive" ] || { echo "error: $why, and no Debian bookworm source to take the archive from" >&2; exit 1; }
    echo ">> adding bookworm-backports ($archive) in $BACKPORTS_LIST"
    echo "deb [signed-by=$KEYRING] $archive bookworm-backports main" > "$BACKPORTS_LIST"
  fi
  release=(-t bookworm-backports)
fi
# QEMU's loadable modules (audio, display, block drivers) must come from the same build: the
# module packages already installed are upgraded with it.
packages=(qemu-system-arm)
for package in qemu-system-gui qemu-block-extra qemu-system-modules-opengl; do
  if dpkg-query -W -f '${Status}' "$package" 2>/dev/null | grep -q 'install ok installed'; then
    packages+=("$package")
  fi
done
echo ">> $why: installing ${packages[*]} ${release[*]} with apt-get"
apt-get update -qq
DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${release[@]}" "${packages[@]}" >/dev/null
has_raspi4b || { echo "error: after installing qemu-system-arm, $("$QEMU" --version | head -n 1) still has no raspi4b" >&2; exit 1; }
# A start that loads its modules: a halted raspi4b for two seconds (124: stopped by timeout).
status=0
timeout 2 "$QEMU" -M raspi4b -display none -monitor none -serial none -S >/dev/null 2>&1 || status=$?
[ "$status" = 124 ] || { echo "error: $QEMU -M raspi4b does not start (status $status)" >&2; exit 1; }
echo ">> $("$QEMU" --version | head -n 1)"

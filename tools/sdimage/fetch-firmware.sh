#!/usr/bin/env bash
# Fetches the Raspberry Pi boot firmware from Debian's `raspi-firmware` package (component
# non-free-firmware), pinned to one version and its sha256, and unpacks the files a card needs
# into build/firmware/boot/: bootcode.bin, start.elf and fixup.dat (Pi 3 family, Zero 2 W) and
# start4.elf and fixup4.dat (Pi 4), with the package's copyright file (the firmware licence).
#
# The package is fetched with `apt-get download` under a private apt configuration kept in
# build/firmware/apt/ (its own sources.list, lists and cache): the machine's apt sources are
# never edited. The archive is the one the machine's own Debian source uses, with Debian's
# archive keyring. The .deb is kept, so it is fetched once; a second run only checks it.
#
# usage: tools/sdimage/fetch-firmware.sh [BUILD_DIR]   (default: build/ at the workspace root)
set -euo pipefail
case "${1:-}" in -h | --help) sed -n '2,/^set -euo pipefail/{/^#/s/^# \{0,1\}//p}' "$0"; exit 0 ;; esac

PACKAGE=raspi-firmware
VERSION=1.20220830+ds-1
SHA256=0094ced47a7fbb6a220ff83e7b43aa637a5d8f6802461e2e4e474597fb796f62
SUITE=bookworm
COMPONENT=non-free-firmware
KEYRING=/usr/share/keyrings/debian-archive-keyring.gpg
FILES=(bootcode.bin start.elf fixup.dat start4.elf fixup4.dat)

ROOT=$(cd "$(dirname "$0")/../.." && pwd)
BUILD=$(realpath -m "${1:-$ROOT/build}")
WORK=$BUILD/firmware
APT=$WORK/apt
OUT=$WORK/boot
DEB=$WORK/${PACKAGE}_${VERSION}_all.deb
STAMP=$WORK/.unpacked-from

fail() {
  echo "error: cannot provide the Raspberry Pi firmware ($PACKAGE $VERSION from Debian's $COMPONENT): $*" >&2
  echo "       A card without it boots only in QEMU. To build one anyway: make sdcard FIRMWARE=" >&2
  exit 1
}

checksum_ok() { [ -f "$1" ] && [ "$(sha256sum "$1" | cut -d' ' -f1)" = "$SHA256" ]; }

if [ -f "$STAMP" ] && [ "$(cat "$STAMP")" = "$SHA256" ] && checksum_ok "$DEB"; then
  exit 0
fi
mkdir -p "$WORK"

if ! checksum_ok "$DEB"; then
  command -v apt-get >/dev/null || fail "apt-get is missing (a Debian machine is needed to fetch it)"
  [ -f "$KEYRING" ] || fail "$KEYRING is missing: apt-get install debian-archive-keyring"
  # The archive the machine's main Debian source uses (the release without a suffix such as
  # -security or -updates); the pinned suite is fetched from the same archive.
  ARCHIVE=$(apt-get indextargets --format '$(REPO_URI) $(RELEASE)' 2>/dev/null \
    | awk '$2 !~ /-/ && $1 ~ /debian\/?$/ { print $1; exit }')
  [ -n "$ARCHIVE" ] || fail "no Debian archive found in this machine's apt sources"
  mkdir -p "$APT/lists/partial" "$APT/cache/archives/partial"
  echo "deb [signed-by=$KEYRING] $ARCHIVE $SUITE $COMPONENT" > "$APT/sources.list"
  APT_OPTIONS=(
    -o "Dir::Etc::sourcelist=$APT/sources.list" -o "Dir::Etc::sourceparts=-"
    -o "Dir::State::Lists=$APT/lists" -o "Dir::Cache=$APT/cache"
    -o "Debug::NoLocking=1" -o "APT::Sandbox::User=$(id -un)"
  )
  echo ">> fetching $PACKAGE $VERSION ($SUITE/$COMPONENT) with a private apt configuration in $APT"
  apt-get "${APT_OPTIONS[@]}" -qq update >"$APT/update.log" 2>&1 \
    || fail "apt-get update of $SUITE/$COMPONENT failed (see $APT/update.log)"
  rm -f "$DEB"
  (cd "$WORK" && apt-get "${APT_OPTIONS[@]}" -qq download "$PACKAGE=$VERSION") >"$APT/download.log" 2>&1 \
    || fail "apt-get download failed (see $APT/download.log); is version $VERSION still in $SUITE?"
  [ -f "$DEB" ] || fail "apt-get download did not write $DEB"
  checksum_ok "$DEB" || fail "$DEB does not have the pinned sha256 $SHA256"
fi

UNPACK=$WORK/unpacked
rm -rf "$UNPACK" "$OUT"
dpkg-deb -x "$DEB" "$UNPACK" || fail "dpkg-deb cannot unpack $DEB"
mkdir -p "$OUT"
for file in "${FILES[@]}"; do
  [ -f "$UNPACK/usr/lib/raspi-firmware/$file" ] || fail "the package holds no $file"
  cp "$UNPACK/usr/lib/raspi-firmware/$file" "$OUT/"
done
cp "$UNPACK/usr/share/doc/raspi-firmware/copyright" "$OUT/LICENCE.raspi-firmware"
rm -rf "$UNPACK"
echo "$SHA256" > "$STAMP"
echo ">> firmware in $OUT: ${FILES[*]} (sha256-pinned $PACKAGE $VERSION)"

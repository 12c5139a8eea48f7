#!/usr/bin/env bash
# Check the Raspberry Pi install path on an x86 machine: an arm64 Debian Bookworm root
# (debootstrap) run under qemu-user, where install.sh installs the device requirements from
# the arm64 wheels, then `python -m device predict` classifies images and the result is
# compared with the same command on this machine (class codes equal, probabilities within
# --tolerance).
#
#   sudo nice -n 15 device/systemd/check_arm64.sh --model models/dermnet-edge
#
#   --model DIR      model folder (card.json + int8 .tflite); default models/dermnet-edge
#   --images DIR     images to classify; default tests/fixtures/ham10000_mini/images
#   --root DIR       the arm64 root, kept between runs; default /tmp/arm64root (keep it out of the repo)
#   --out DIR        predictions and the comparison; default /tmp/arm64check
#   --tolerance P    largest allowed probability difference; default 0.05
#   --mirror URL     Debian mirror for debootstrap; default http://deb.debian.org/debian
#
# Needs root and, on the host: apt-get install debootstrap qemu-user-static binfmt-support.
# The host side runs with $PYTHON (default: the repository's .venv). Everything in the root
# is emulated, so it is slow (tens of minutes the first time, mostly debootstrap's second
# stage and pip); a second run reuses the root. Not part of the test suite.
set -euo pipefail

SRC=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
MODEL=$SRC/models/dermnet-edge
IMAGES=$SRC/tests/fixtures/ham10000_mini/images
ROOT=/tmp/arm64root
OUT=/tmp/arm64check
TOLERANCE=0.05
MIRROR=http://deb.debian.org/debian
PYTHON=${PYTHON:-$SRC/.venv/bin/python}
MOUNTS=(proc sys dev)

say() { printf 'check_arm64: %s\n' "$*"; }
die() { printf 'check_arm64: error: %s\n' "$*" >&2; exit 1; }

while [[ $# -gt 0 ]]; do
  case $1 in
    --model) MODEL=$(realpath "${2:?}"); shift 2 ;;
    --images) IMAGES=$(realpath "${2:?}"); shift 2 ;;
    --root) ROOT=${2:?}; shift 2 ;;
    --out) OUT=${2:?}; shift 2 ;;
    --tolerance) TOLERANCE=${2:?}; shift 2 ;;
    --mirror) MIRROR=${2:?}; shift 2 ;;
    -h | --help) sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//'; exit 0 ;;
    *) die "unknown option '$1' (see --help)" ;;
  esac
done
[[ $(id -u) -eq 0 ]] || die "run as root (debootstrap and chroot need it)"
[[ -f $MODEL/card.json ]] || die "--model: no card.json in $MODEL"
[[ -d $IMAGES ]] || die "--images: no such folder: $IMAGES"
[[ -x $PYTHON ]] || PYTHON=python3
command -v debootstrap >/dev/null ||
  die "debootstrap missing: apt-get install debootstrap qemu-user-static binfmt-support"
case $(realpath -m "$ROOT") in "$SRC"/*) die "--root must be outside the repository" ;; esac

# qemu-user runs arm64 binaries through binfmt_misc; the F flag (qemu-user-static) lets it work
# inside the chroot without copying the emulator there.
enable_binfmt() {
  [[ -e /proc/sys/fs/binfmt_misc/register ]] || mount -t binfmt_misc binfmt_misc /proc/sys/fs/binfmt_misc
  [[ -e /proc/sys/fs/binfmt_misc/qemu-aarch64 ]] || update-binfmts --enable qemu-aarch64
  grep -q '^enabled' /proc/sys/fs/binfmt_misc/qemu-aarch64 || die "binfmt qemu-aarch64 is not enabled"
}

make_root() {
  if [[ -f $ROOT/etc/debian_version ]]; then
    say "reusing the arm64 root $ROOT (Debian $(cat "$ROOT/etc/debian_version"))"
    return
  fi
  say "debootstrap arm64 bookworm into $ROOT"
  debootstrap --arch=arm64 --variant=minbase --include=ca-certificates bookworm "$ROOT" "$MIRROR"
}

mount_root() {
  local m
  for m in "${MOUNTS[@]}"; do
    mountpoint -q "$ROOT/$m" || mount --rbind "/$m" "$ROOT/$m"
  done
  trap unmount_root EXIT
  cp -L /etc/resolv.conf "$ROOT/etc/resolv.conf"
}

unmount_root() {
  local m
  for m in "${MOUNTS[@]}"; do
    mountpoint -q "$ROOT/$m" && umount -R "$ROOT/$m"
  done
  return 0
}

in_root() {
  chroot "$ROOT" /usr/bin/env -i PATH=/usr/sbin:/usr/bin:/sbin:/bin HOME=/root LANG=C.UTF-8 "$@"
}

# The repository's device side, the model and the images, as a Pi owner would have them.
copy_sources() {
  local dst=$ROOT/tmp/dermedge-src name
  name=$(basename "$MODEL")
  rm -rf "$dst" "$ROOT/tmp/images"
  mkdir -p "$dst/models" "$dst/device"
  cp -R "$SRC/device/." "$dst/device/"
  cp -R "$SRC/requirements" "$dst/requirements"
  cp -R "$MODEL" "$dst/models/$name"
  cp -R "$IMAGES" "$ROOT/tmp/images"
}

compare() {
  "$PYTHON" - "$OUT/x86.jsonl" "$OUT/arm64.jsonl" "$TOLERANCE" <<'PY'
import json, sys
from pathlib import Path

def load(path):
    rows = [json.loads(line) for line in Path(path).read_text().splitlines() if line.strip()]
    return {Path(row["file"]).name: row for row in rows}

x86, arm, tol = load(sys.argv[1]), load(sys.argv[2]), float(sys.argv[3])
problems = []
if set(x86) != set(arm):
    problems.append(f"different images: x86 only {sorted(set(x86) - set(arm))}, "
                    f"arm64 only {sorted(set(arm) - set(x86))}")
worst, same = 0.0, 0
for name in sorted(set(x86) & set(arm)):
    a, b = x86[name], arm[name]
    diff = max(abs(a["all_probabilities"][k] - b["all_probabilities"][k]) for k in a["all_probabilities"])
    worst = max(worst, diff)
    same += a["class_code"] == b["class_code"]
    if a["class_code"] != b["class_code"] or diff > tol:
        problems.append(f"{name}: x86 {a['class_code']} {a['confidence']:.3f}, "
                        f"arm64 {b['class_code']} {b['confidence']:.3f}, max |dp| {diff:.4f}")
print(f"check_arm64: {len(x86)} images, class codes equal on {same}, "
      f"largest probability difference {worst:.4f} (tolerance {tol})")
for line in problems:
    print("check_arm64: MISMATCH", line)
sys.exit(1 if problems else 0)
PY
}

main() {
  local started name
  started=$(date +%s)
  name=$(basename "$MODEL")
  mkdir -p "$OUT"
  enable_binfmt
  make_root
  mount_root
  say "arm64 root: $(in_root uname -m), $(in_root sh -c '. /etc/os-release; echo "$PRETTY_NAME"')"
  copy_sources
  say "install.sh --no-start inside the arm64 root"
  in_root bash /tmp/dermedge-src/device/systemd/install.sh --no-start --models /tmp/dermedge-src/models
  say "predict on arm64"
  in_root env -C /opt/dermedge /opt/dermedge/venv/bin/python -c 'import platform, cv2, numpy
from device.engine import interpreter_class
print("check_arm64: in the root: python", platform.python_version(), platform.machine(), "numpy",
      numpy.__version__, "opencv", cv2.__version__, "interpreter", interpreter_class()[0])'
  in_root env -C /opt/dermedge /opt/dermedge/venv/bin/python -m device predict \
    --model "/opt/dermedge/models/$name" --json /tmp/images >"$OUT/arm64.jsonl"
  say "predict on this machine ($(uname -m))"
  (cd "$SRC" && "$PYTHON" -m device predict --model "$MODEL" --json "$IMAGES") >"$OUT/x86.jsonl"
  local status=0
  compare | tee "$OUT/compare.txt" || status=1
  say "took $(($(date +%s) - started)) s; predictions in $OUT"
  return "$status"
}

main

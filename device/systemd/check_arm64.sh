#!/usr/bin/env bash
# Check the Raspberry Pi install path on an x86 machine: an arm64 Debian Bookworm root
# (debootstrap) run under qemu-user, where install.sh installs the device requirements from
# the arm64 wheels, then `python -m device predict` classifies images and the result is
# compared with the same command on this machine (class codes equal, probabilities within
# --tolerance). The browser app is built here (node build.mjs, as `make web` does on a
# workstation), shipped with the sources, and must be served at /app/ from the install.
#
#   sudo nice -n 15 device/systemd/check_arm64.sh [--model models/<name>]
#
#   --model DIR      model folder (card.json + int8 .tflite); default the one models/DEFAULT names
#   --images DIR     images to classify; default tests/fixtures/ham10000_mini/images
#   --root DIR       the arm64 root, kept between runs; default /tmp/arm64root (keep it out of the repo)
#   --out DIR        predictions and the comparison; default /tmp/arm64check
#   --tolerance P    largest allowed probability difference; default 0.05
#   --mirror URL     Debian mirror for debootstrap; default http://deb.debian.org/debian
#   --ca-bundle F    CA bundle for pip inside the root, for a network behind a TLS-inspecting
#                    proxy; default $PIP_CERT when set (sudo drops it: pass it here)
#
# Needs root and, on the host: apt-get install debootstrap qemu-user-static binfmt-support.
# The host side runs with $PYTHON (default: the repository's .venv). Everything in the root
# is emulated, so it is slow (tens of minutes the first time, mostly debootstrap's second
# stage and pip); a second run reuses the root. Not part of the test suite.
set -euo pipefail

SRC=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
MODEL=$SRC/models/$(<"$SRC/models/DEFAULT")
IMAGES=$SRC/tests/fixtures/ham10000_mini/images
ROOT=/tmp/arm64root
OUT=/tmp/arm64check
TOLERANCE=0.05
MIRROR=http://deb.debian.org/debian
CA_BUNDLE=${PIP_CERT:-}
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
    --ca-bundle) CA_BUNDLE=${2:?}; shift 2 ;;
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
    if ! mountpoint -q "$ROOT/$m"; then
      mount --rbind "/$m" "$ROOT/$m"
      mount --make-rslave "$ROOT/$m"  # nothing mounted below it reaches the host
    fi
  done
  trap unmount_root EXIT
  cp -L /etc/resolv.conf "$ROOT/etc/resolv.conf"
  show_pi_cpu
}

# Under qemu-user, /proc/cpuinfo is the host's x86 file, and ai-edge-litert 2.2 and later crash
# (SIGSEGV in allocate_tensors/invoke) when they probe the CPU from it. The root sees what a
# Raspberry Pi 4 reports instead, and qemu emulates the Pi 4's core, a Cortex-A72.
show_pi_cpu() {
  local core
  for core in 0 1 2 3; do
    printf 'processor\t: %s\nBogoMIPS\t: 108.00\nFeatures\t: fp asimd evtstrm crc32 cpuid\n' "$core"
    printf 'CPU implementer\t: 0x41\nCPU architecture: 8\nCPU variant\t: 0x0\nCPU part\t: 0xd08\n'
    printf 'CPU revision\t: 3\n\n'
  done >"$OUT/pi4-cpuinfo"
  printf 'Hardware\t: BCM2835\nModel\t\t: Raspberry Pi 4 Model B\n' >>"$OUT/pi4-cpuinfo"
  mount --bind "$OUT/pi4-cpuinfo" "$ROOT/proc/cpuinfo"
  ROOT_ENV+=(QEMU_CPU=cortex-a72)
}

unmount_root() {
  local m
  for m in "${MOUNTS[@]}"; do
    mountpoint -q "$ROOT/$m" && umount -R "$ROOT/$m"
  done
  return 0
}

ROOT_ENV=(PATH=/usr/sbin:/usr/bin:/sbin:/bin HOME=/root LANG=C.UTF-8)

in_root() {
  chroot "$ROOT" /usr/bin/env -i "${ROOT_ENV[@]}" "$@"
}

# pip in the root trusts what pip on the host trusts.
use_ca_bundle() {
  [[ -n $CA_BUNDLE ]] || return 0
  [[ -f $CA_BUNDLE ]] || die "--ca-bundle: no such file: $CA_BUNDLE"
  cp "$CA_BUNDLE" "$ROOT/etc/ssl/certs/dermedge-host-ca.crt"
  ROOT_ENV+=(PIP_CERT=/etc/ssl/certs/dermedge-host-ca.crt)
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
  printf '%s\n' "$name" >"$dst/models/DEFAULT"
  cp -R "$IMAGES" "$ROOT/tmp/images"
  say "building the browser app on this machine (static files: the same on arm64)"
  (cd "$SRC/web" && { [[ -d node_modules ]] || npm ci --no-audit --no-fund --loglevel=error; } &&
    node build.mjs --model "$MODEL" --out "$dst/web/dist") || die "the browser app did not build (node, npm)"
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
  use_ca_bundle
  say "arm64 root: $(in_root uname -m), $(in_root sh -c '. /etc/os-release; echo "$PRETTY_NAME"')"
  copy_sources
  say "install.sh --no-start inside the arm64 root"
  in_root bash /tmp/dermedge-src/device/systemd/install.sh --no-start --models /tmp/dermedge-src/models
  say "the browser app at /app/ on arm64"
  in_root env -C /opt/dermedge /opt/dermedge/venv/bin/python -c 'from flask import Flask
from device.webapp import WEB_APP_DIR, register_web_app
app = Flask("check"); register_web_app(app)
page = app.test_client().get("/app/")
assert page.status_code == 200 and b"DermEdge" in page.data, (page.status_code, WEB_APP_DIR)
print("check_arm64: /app/ served from", WEB_APP_DIR)'
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

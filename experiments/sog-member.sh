#!/usr/bin/env bash
# SOG-PROTOCOL.md steps 1-2 unattended: the block-9 member of ISIC2017-TRIO-PROTOCOL.md again, with
# shades-of-grey colour constancy and nothing else changed, then its operating figures.
#   nohup nice -n 10 bash experiments/sog-member.sh > runs/sog.out 2>&1 &
set -euo pipefail
source experiments/chain.sh
OUT=runs/sog
mkdir -p "$OUT"

member cut9-isic2017-sog models/dermnet-mnv2-cut9/training/stage1-float/config.yaml 1 "$OUT" --colour shades_of_grey
operating "$OUT" isic2017-sog cut9
echo "sog-member: done"

#!/usr/bin/env bash
# SOG-TRIO-PROTOCOL.md steps 1-3 unattended: the block-16 and block-13 members with ISIC 2017 and
# shades of grey, then the trio with SOG-PROTOCOL.md's block-9 member, and their operating figures.
#   nohup nice -n 10 bash experiments/sog-trio.sh > runs/sog-trio.out 2>&1 &
set -euo pipefail
source experiments/chain.sh
OUT=runs/sog
mkdir -p "$OUT"

member cut16-isic2017-sog experiments/dermnet-mnv2-cut16/training/stage1-float/config.yaml 1 "$OUT" --colour shades_of_grey
member cut13-s2-isic2017-sog experiments/dermnet-mnv2-cut13-s2/training/stage1-float/config.yaml 2 "$OUT" --colour shades_of_grey
member cut9-isic2017-sog models/dermnet-mnv2-cut9/training/stage1-float/config.yaml 1 "$OUT" --colour shades_of_grey
trio trio-isic2017-sog dermnet-mnv2-trio-isic2017-sog "$OUT" "$OUT"/dermnet-mnv2-{cut16,cut13-s2,cut9}-isic2017-sog
operating "$OUT" isic2017-sog cut16 cut13-s2 trio
echo "sog-trio: done"

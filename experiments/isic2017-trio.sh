#!/usr/bin/env bash
# ISIC2017-TRIO-PROTOCOL.md steps 1-3 run unattended: the block-13 and block-9 members with ISIC 2017,
# each chain resumed where it stopped, then the trio with the block-16 member of ISIC2017-PROTOCOL.md.
#   nohup nice -n 10 bash experiments/isic2017-trio.sh > runs/isic2017-trio.out 2>&1 &
set -euo pipefail
source experiments/chain.sh
OUT=runs/isic2017-trio
mkdir -p "$OUT"

member cut13-s2-isic2017 experiments/dermnet-mnv2-cut13-s2/training/stage1-float/config.yaml 2 "$OUT"
member cut9-isic2017 models/dermnet-mnv2-cut9/training/stage1-float/config.yaml 1 "$OUT"
# the block-16 member's runs exist already (ISIC2017-PROTOCOL.md): only its calibration and gate are new
member cut16-isic2017 experiments/dermnet-mnv2-cut16/training/stage1-float/config.yaml 1 "$OUT"
trio trio-isic2017-all dermnet-mnv2-trio-isic2017 "$OUT" "$OUT"/dermnet-mnv2-{cut16,cut13-s2,cut9}-isic2017
operating "$OUT" isic2017 cut16 cut13-s2 cut9 trio
echo "isic2017-trio: done"

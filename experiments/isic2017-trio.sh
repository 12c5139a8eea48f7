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
# the block-16 member's runs exist already (ISIC2017-PROTOCOL.md): only its calibration and gate
cut16=$(latest mnv2-cut16-isic2017-qat)
[[ -f $cut16/calibrated.keras ]] || "$PY" -m train.calibrate "$cut16" --data "$HAM" --zoom 0.86
[[ -f $OUT/dermnet-mnv2-cut16-isic2017/card.json ]] || "$PY" -m quantize "$cut16" --checkpoint calibrated \
    --name dermnet-mnv2-cut16-isic2017 --zoom 0.86 --data "$HAM" --out "$OUT"

trio=$(latest trio-isic2017-all)
if [[ -z $trio ]]; then
    "$PY" -m train.ensemble "$OUT"/dermnet-mnv2-cut16-isic2017 "$OUT"/dermnet-mnv2-cut13-s2-isic2017 \
        "$OUT"/dermnet-mnv2-cut9-isic2017 --data "$HAM" --name trio-isic2017-all
    trio=$(latest trio-isic2017-all)
fi
[[ -f $OUT/dermnet-mnv2-trio-isic2017/card.json ]] || "$PY" -m quantize "$trio" --checkpoint calibrated --name dermnet-mnv2-trio-isic2017 \
    --zoom 0.86 --data "$HAM" --out "$OUT"
for m in cut16 cut13-s2 cut9 trio; do
    "$PY" -m benchmarks.operating --model-dir "$OUT/dermnet-mnv2-$m-isic2017" --data "$HAM" --biases 0 \
        --extra "$ISIC" > "$OUT/operating-$m.md"
done
echo "isic2017-trio: done"

#!/usr/bin/env bash
# REPLICATE-PROTOCOL.md steps 1-2 unattended: the validated default trio's recipe (HAM10000 only)
# from fresh seeds, member by member, then its trio and the operating figures of all four.
#   nohup nice -n 10 bash experiments/replicate.sh > runs/replicate.out 2>&1 &
set -euo pipefail
TRAIN_EXTRA=""  # HAM10000 only, as the validated trio
source experiments/chain.sh
OUT=runs/replicate
mkdir -p "$OUT"

member cut16-r11 experiments/dermnet-mnv2-cut16/training/stage1-float/config.yaml 11 "$OUT" --seed 11
member cut13-r12 experiments/dermnet-mnv2-cut13-s2/training/stage1-float/config.yaml 12 "$OUT" --seed 12
member cut9-r13 models/dermnet-mnv2-cut9/training/stage1-float/config.yaml 13 "$OUT" --seed 13
trio trio-replicate dermnet-mnv2-trio-replicate "$OUT" "$OUT"/dermnet-mnv2-{cut16-r11,cut13-r12,cut9-r13}
for m in cut16-r11 cut13-r12 cut9-r13 trio-replicate; do
    "$PY" -m benchmarks.operating --model-dir "$OUT/dermnet-mnv2-$m" --data "$HAM" --biases 0 \
        --extra "$ISIC" > "$OUT/operating-$m.md"
done
echo "replicate: done"

#!/usr/bin/env bash
# SOG-FRESH-PROTOCOL.md steps 1-3 unattended: the ISIC 2017 + shades-of-grey recipe from seeds 21-23,
# its trio, its operating table and the paired comparison with the replicate reference at b*.
#   nohup nice -n 10 bash experiments/sog-fresh.sh > runs/sog-fresh.out 2>&1 &
# Stopped part-way, it resumes where it stopped when run again.
set -euo pipefail
source experiments/chain.sh
OUT=runs/sog-fresh
REFERENCE=experiments/dermnet-mnv2-trio-replicate
mkdir -p "$OUT"

member cut16-s21-sog experiments/dermnet-mnv2-cut16/training/stage1-float/config.yaml 21 "$OUT" --seed 21 --colour shades_of_grey
member cut13-s22-sog experiments/dermnet-mnv2-cut13-s2/training/stage1-float/config.yaml 22 "$OUT" --seed 22 --colour shades_of_grey
member cut9-s23-sog models/dermnet-mnv2-cut9/training/stage1-float/config.yaml 23 "$OUT" --seed 23 --colour shades_of_grey
trio trio-sog-fresh dermnet-mnv2-trio-sog-fresh "$OUT" "$OUT"/dermnet-mnv2-{cut16-s21,cut13-s22,cut9-s23}-sog
"$PY" -m benchmarks.operating --model-dir "$OUT/dermnet-mnv2-trio-sog-fresh" --data "$HAM" \
    --biases 0,0.25,0.5,0.75,1,1.25,1.5 --extra "$ISIC" > "$OUT/operating-trio.md"
# b*: the first bias whose val melanoma recall reaches the reference's 53.0%
bias=$(awk -F'|' '/^\| [0-9]/ { gsub(/[ %]/, "", $5); if ($5 + 0 >= 53.0) { gsub(/ /, "", $2); print $2; exit } }' \
    "$OUT/operating-trio.md")
echo "b*: ${bias:-none on the grid}"
[[ -n $bias ]] && "$PY" -m benchmarks.paired --model-dir "$REFERENCE" --model-dir "$OUT/dermnet-mnv2-trio-sog-fresh" \
    --data "$HAM" --bias "$bias" --extra "$ISIC" > "$OUT/paired-trio.md"
echo "sog-fresh: done"

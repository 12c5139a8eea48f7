#!/usr/bin/env bash
# MIX-PROTOCOL.md steps 1-2 unattended: the six trios that mix the validated default trio's members
# (HAM10000 only) with ISIC2017-TRIO-PROTOCOL.md's (ISIC 2017 too), one member per cut, each averaged
# by train.ensemble at its defaults, quantized, and measured int8 into runs/mix/<code>/operating-trio.md.
#   nohup nice -n 10 bash experiments/mix-trios.sh > runs/mix.out 2>&1 &
set -euo pipefail
source experiments/chain.sh
ISIC_MEMBERS=${ISIC_MEMBERS:-runs/isic2017-trio}  # bash experiments/isic2017-trio.sh builds them

declare -A H=([16]=experiments/dermnet-mnv2-cut16 [13]=experiments/dermnet-mnv2-cut13-s2 [9]=models/dermnet-mnv2-cut9)
declare -A I=([16]=$ISIC_MEMBERS/dermnet-mnv2-cut16-isic2017 [13]=$ISIC_MEMBERS/dermnet-mnv2-cut13-s2-isic2017
              [9]=$ISIC_MEMBERS/dermnet-mnv2-cut9-isic2017)

for code in i16-h13-h9 h16-i13-h9 h16-h13-i9 i16-i13-h9 i16-h13-i9 h16-i13-i9; do
    members=()
    for part in ${code//-/ }; do
        kind=${part:0:1} cut=${part:1}
        if [[ $kind == h ]]; then members+=("${H[$cut]}"); else members+=("${I[$cut]}"); fi
    done
    out=runs/mix/$code
    mkdir -p "$out"
    trio "mix-$code" dermnet-mnv2-trio-mix "$out" "${members[@]}"
    [[ -f $out/operating-trio.md ]] || operating "$out" mix trio
done
echo "mix-trios: done"

# The member chain of the ISIC 2017 and REPLICATE protocols, sourced by their scripts: stage 1 and QAT
# (with ISIC 2017 unless TRAIN_EXTRA is empty), calibration and the quantize gate, each step resumed or
# skipped when it is already done.
PY=${PY:-.venv/bin/python}
HAM=${HAM:-../shared/data/ham10000}
ISIC=${ISIC:-../shared/data/isic2017}
TRAIN_EXTRA=${TRAIN_EXTRA-$ISIC}  # the extra training data; empty: HAM10000 only (ISIC is still scored)

latest() { ls -d runs/*-"$1" 2>/dev/null | tail -1 || true; }

# train NAME ARGS...: a run named NAME; one that exists is resumed (a finished one returns at once)
train() {
    local name=$1; shift
    local run; run=$(latest "$name")
    if [[ -n $run && -f $run/last.keras ]]; then
        "$PY" -m train --resume "$run" --no-evaluate
    else
        "$PY" -m train "$@" ${TRAIN_EXTRA:+--extra-data "$TRAIN_EXTRA"} --name "$name" --no-evaluate
    fi
}

# member NAME CONFIG SEED OUT [STAGE1 ARGS...]: run "mnv2-NAME" and its QAT run, calibrate the QAT run
# and quantize it as OUT/dermnet-mnv2-NAME
member() {
    local m=$1 config=$2 seed=$3 out=$4; shift 4
    train "mnv2-$m" --config "$config" "$@"
    train "mnv2-$m-qat" --config train/configs/mobilenet-v2-qat.yaml --data "$HAM" \
        --init-from "$(latest "mnv2-$m")/best.keras" --seed "$seed" --epochs 2
    local qat; qat=$(latest "mnv2-$m-qat")
    [[ -f $qat/calibrated.keras ]] || "$PY" -m train.calibrate "$qat" --data "$HAM" --zoom 0.86
    [[ -f $out/dermnet-mnv2-$m/card.json ]] || "$PY" -m quantize "$qat" --checkpoint calibrated \
        --name "dermnet-mnv2-$m" --zoom 0.86 --data "$HAM" --out "$out"
}

# trio RUN MODEL OUT MEMBER_DIR...: the ensemble run RUN of the quantized members (bias and T picked
# on HAM10000 val, as every validated trio), quantized as OUT/MODEL
trio() {
    local name=$1 model=$2 out=$3; shift 3
    [[ -n $(latest "$name") ]] || "$PY" -m train.ensemble "$@" --data "$HAM" --name "$name"
    [[ -f $out/$model/card.json ]] || "$PY" -m quantize "$(latest "$name")" --checkpoint calibrated \
        --name "$model" --zoom 0.86 --data "$HAM" --out "$out"
}

# operating OUT SUFFIX M...: int8 val and test figures through the device engine, HAM10000 and
# ISIC 2017, of each OUT/dermnet-mnv2-M-SUFFIX, into OUT/operating-M.md
operating() {
    local out=$1 suffix=$2; shift 2
    for m; do
        "$PY" -m benchmarks.operating --model-dir "$out/dermnet-mnv2-$m-$suffix" --data "$HAM" --biases 0 \
            --extra "$ISIC" > "$out/operating-$m.md"
    done
}

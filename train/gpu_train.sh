#!/usr/bin/env bash
# On a lent GPU machine (make train-gpu): no venv, no registry, JAX with CUDA already there.
# Installs the bundle's Keras wheels into a private folder, then trains the bundled recipe under
# JAX (train.gpu_bundle train). Usage: train/gpu_train.sh BUNDLE MINUTES [OUT [more train flags]]
set -euo pipefail
cd "$(dirname "$0")/.."
bundle=${1:-.gpu-bundle}
minutes=${2:-6}
out=${3:-${OUT:-}}
shift $(( $# < 3 ? $# : 3 ))
python=${PYTHON:-python3}
[ -f "$bundle/bundle.json" ] || { echo "no bundle at $bundle: run make gpu-bundle first (here, not there)" >&2; exit 2; }
if compgen -G "$bundle/wheels/*.whl" >/dev/null; then
  site=${TMPDIR:-/tmp}/dermedge-site
  "$python" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target "$site" \
    "$bundle"/wheels/*.whl
  export PYTHONPATH="$site${PYTHONPATH:+:$PYTHONPATH}"
fi
export KERAS_BACKEND=jax PYTHONUNBUFFERED=1 TF_CPP_MIN_LOG_LEVEL=3
exec "$python" -m train.gpu_bundle train --bundle "$bundle" --minutes "$minutes" ${out:+--out "$out"} "$@"

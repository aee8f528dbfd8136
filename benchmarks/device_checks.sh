#!/usr/bin/env bash
# The checks that need a GPU, as one prepared run on a lent device machine (sized to fit one 10-minute call).
#
#   benchmarks/device_wheels.sh            # here, once: the wheels the machine's image lacks, into .whl/
#   device run, carry [".whl"], timeout_s 540:
#     bash benchmarks/device_checks.sh speaker finetune
#   then at once (warm machine), carry [".whl-extract"] (benchmarks/device_wheels.sh extract):
#     WHEELS=.whl-extract bash benchmarks/device_checks.sh extract
#
# Parts (each prints its own lines; logs under $OUT when set, else under ./device-out):
#   speaker   issue 17: one (layer, seed) of the 54-language speaker sweep, cosine vs the lockstep PLDA fitted
#             and scored on the GPU (`--lockstep default:cuda`), |dAUC| against per-model exact fits (CPU)
#   finetune  fine-tuning throughput, base-size model, bf16, full and LoRA (docs/finetune.md)
#   extract   extraction throughput, base-size model, bf16 (needs zarr's wheels too: device_wheels.sh extract)
# Set DEVICE=cpu and SMALL=1 to try the script itself on a CPU (tiny sizes; nothing worth recording).
set -euo pipefail
cd "$(dirname "$0")/.."

PY=${PYTHON:-python3}
WHEELS=${WHEELS:-.whl}
if ls "$WHEELS"/*.whl >/dev/null 2>&1; then  # installed next to what an earlier call of a warm machine put there
    "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site "$WHEELS"/*.whl
fi
[ -d /tmp/site ] && export PYTHONPATH="/tmp/site${PYTHONPATH:+:$PYTHONPATH}"
export PYTHONPATH="$PWD/src${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
export OMP_NUM_THREADS=1 OPENBLAS_NUM_THREADS=1 MKL_NUM_THREADS=1  # the CPU side as on the 2-core machine
DEVICE=${DEVICE:-cuda}
LOGS=${OUT:-device-out}
mkdir -p "$LOGS"

"$PY" - <<EOF | tee "$LOGS/machine.txt"
import os, platform, torch
gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "no GPU"
print(f"{platform.node()}: {gpu}, torch {torch.__version__}, {os.cpu_count()} CPUs, device {'$DEVICE'!r}")
EOF

small=${SMALL:-0}
failed=0
fail() { echo "FAILED: $1" >&2; failed=1; }  # one part failing does not stop the others
for part in "${@:-speaker}"; do
    case "$part" in
    speaker)
        if [ "$small" = 1 ]; then size=(--languages 4 --speakers 20 --utts 20 --n 100 --dim 64 --slice-models 4)
        else size=(--languages 54 --slice-models 24); fi
        lockstep=default:$DEVICE
        [ "$DEVICE" = cpu ] && lockstep=default
        "$PY" benchmarks/bench_speaker_scale.py "${size[@]}" --lockstep "$lockstep" 2>&1 | tee "$LOGS/speaker.txt" \
            || fail speaker
        ;;
    finetune)
        if [ "$small" = 1 ]; then size=(--size small --steps 4 --seconds 1); else size=(--size base --steps 300 --seconds 4); fi
        for peft in none lora; do
            "$PY" benchmarks/bench_finetune.py "${size[@]}" --precision bf16 --peft "$peft" --device "$DEVICE" 2>&1 \
                | tee -a "$LOGS/finetune.txt" || fail "finetune $peft"
        done
        ;;
    extract)
        if [ "$small" = 1 ]; then size=(--arch tiny --seconds 20); else size=(--arch base --seconds 3600); fi
        "$PY" benchmarks/bench_extract.py "${size[@]}" --device "$DEVICE" --dtype bfloat16 2>&1 | tee "$LOGS/extract.txt" \
            || fail extract
        ;;
    *)
        echo "unknown part '$part' (speaker, finetune, extract)" >&2
        exit 2
        ;;
    esac
done
exit $failed

#!/usr/bin/env bash
# Sharded extraction on one multi-GPU node: torchrun starts one process per GPU and sets RANK/WORLD_SIZE/LOCAL_RANK,
# which `cltm extract` reads as its shard (rank/world size) and CUDA device (local rank).
#
#   scripts/torchrun_extract.sh 8 corpus.parquet utter-project/mHuBERT-147 /shared/cv.zarr
set -euo pipefail
gpus=${1:?usage: scripts/torchrun_extract.sh N_GPUS MANIFEST MODEL CACHE [extra cltm extract options]}
manifest=${2:?manifest}
model=${3:?model id or path}
cache=${4:?cache directory}
shift 4
exec torchrun --standalone --nproc-per-node "$gpus" --no-python \
  cltm extract --manifest "$manifest" --model "$model" --out "$cache" --device cuda --dtype bfloat16 "$@"

#!/usr/bin/env bash
# A CLTM sweep on a Dask cluster: start a scheduler and workers wherever they run (dask-scheduler / dask-worker,
# dask-jobqueue on SLURM, Kubernetes, ...), then point `cltm matrix` at the scheduler. The cache must be readable
# by every worker (shared storage). Results are identical to a serial run for the same seeds.
#
#   scripts/dask_sweep.sh tcp://scheduler:8786 /shared/cv.zarr gender results/gender
set -euo pipefail
scheduler=${1:?usage: scripts/dask_sweep.sh SCHEDULER_ADDR CACHE TASK OUT [extra cltm matrix options]}
cache=${2:?cache}
task=${3:?task (gender, speaker or a label column)}
out=${4:?output directory}
shift 4
exec cltm matrix --cache "$cache" --task "$task" --out "$out" --parallel dask --scheduler "$scheduler" "$@"

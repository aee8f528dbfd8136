#!/usr/bin/env bash
# Wheels for benchmarks/device_checks.sh: the Python packages the device machine's image lacks (Python 3.12,
# x86-64), at the versions of this checkout's .venv, into an ignored folder that a device run carries.
#
#   benchmarks/device_wheels.sh            -> .whl/          polars (speaker; finetune needs nothing)   ~52 MB
#   benchmarks/device_wheels.sh extract    -> .whl-extract/  zarr, numcodecs, soundfile, soxr, ...      ~11 MB
#
# A call carries at most 64 MiB with the working tree, so the two go in two calls made back to back (the
# machine stays warm ~30 s and keeps /tmp/site): carry [".whl"] for `speaker finetune`, then carry
# [".whl-extract"] with WHEELS=.whl-extract for `extract`.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-.venv/bin/python}
group=${1:-speaker}
case "$group" in
speaker) dir=.whl; names=(polars polars-runtime-32) ;;
extract) dir=.whl-extract; names=(zarr numcodecs donfig google-crc32c soundfile soxr) ;;
*) echo "unknown group '$group' (speaker, extract)" >&2; exit 2 ;;
esac
grep -qx "/$dir/" .git/info/exclude 2>/dev/null || echo "/$dir/" >>.git/info/exclude
specs=()
for name in "${names[@]}"; do
    version=$("$PY" -m pip show "$name" 2>/dev/null | awk '/^Version:/ {print $2}')
    [ -n "$version" ] || { echo "$name is not installed in $PY's environment: run make venv first" >&2; exit 1; }
    specs+=("$name==$version")
done
mkdir -p "$dir"
"$PY" -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
    --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 --platform manylinux_2_17_x86_64 \
    --platform manylinux2014_x86_64 --platform manylinux1_x86_64 -d "$dir" "${specs[@]}"
du -sh "$dir"

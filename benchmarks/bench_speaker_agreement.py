"""Agreement of the sweep's lockstep PLDA (the ``plda`` fast path) with one exact PLDA per cell.

For each layer and each ``--n-components``: the speaker sweep with ``naive=True`` (one ``PLDA`` fitted on
each cell's training rows: the reference) and with the fast path under each ``--lockstep`` setting; prints
mean / max |dAUC| over all runs (every condition, target, donor and seed) and the time of each. Meant for
real features (uneven speakers, two corpora), e.g. the shared English + Urdu set:

    OMP_NUM_THREADS=1 PYTHONPATH=src python benchmarks/bench_speaker_agreement.py \\
        --features ../shared/data/real_speech/features.npy \\
        --manifest ../shared/data/real_speech/manifest.parquet --n 120 --seeds 10 \\
        --lockstep default,em0,em2,em4,e64,emall,exact --n-components 200,40

``--lockstep`` entries as in ``bench_speaker_scale.py`` (``default``, ``emK``, ``emall``, ``f64``, ``w64``,
``exact``, joined with ``:``).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
import polars as pl

sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_speaker_scale import parse_lockstep  # noqa: E402
from cltm.transfer import ProbeSettings, run_matrix  # noqa: E402

KEYS = ["layer", "condition", "target", "donor", "seed"]


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--features", required=True, help="features .npy [layers, rows, dim] (or [rows, dim])"
    )
    parser.add_argument("--manifest", required=True, help="manifest .parquet, rows aligned with the features")
    parser.add_argument("--n", type=int, default=120, help="N, training utterances per language")
    parser.add_argument("--seeds", type=int, default=10, help="seeds")
    parser.add_argument("--lockstep", default="default,em2,exact", help="comma-separated lockstep settings")
    parser.add_argument("--n-components", default="200", help="comma-separated PLDA n_components")
    args = parser.parse_args()

    X = np.load(args.features)
    man = pl.read_parquet(args.manifest)
    sweep = dict(task="speaker", n=args.n, seeds=args.seeds, progress=False)
    print(f"{args.features}: {X.shape}, N={args.n}, {args.seeds} seeds")
    for k in (int(v) for v in args.n_components.split(",")):
        params = {"n_components": k}
        t = time.perf_counter()
        ref = run_matrix(X, man, probe=ProbeSettings("plda", backend_params=params), naive=True, **sweep)
        t_ref = time.perf_counter() - t
        ref_auc = ref.runs.select(*KEYS, pl.col("auc").alias("ref"))
        print(f"n_components {k}: one exact PLDA per cell (naive) {t_ref:.1f} s, {ref.runs.height} runs")
        for entry in args.lockstep.split(","):
            probe = ProbeSettings("plda", backend_params=params, lockstep=parse_lockstep(entry))
            t = time.perf_counter()
            fast = run_matrix(X, man, probe=probe, **sweep)
            t_fast = time.perf_counter() - t
            joined = fast.runs.select(*KEYS, "auc").join(ref_auc, on=KEYS, how="inner", nulls_equal=True)
            if joined.height != ref.runs.height:
                raise SystemExit(f"runs do not line up: {joined.height} of {ref.runs.height}")
            d = (joined["auc"] - joined["ref"]).abs().to_numpy()
            by_layer = joined.group_by("layer").agg((pl.col("auc") - pl.col("ref")).abs().max().alias("m"))
            layers = ", ".join(
                f"layer {r['layer']} max {r['m']:.4f}" for r in by_layer.sort("layer").to_dicts()
            )
            print(
                f"  lockstep {entry:>8}: |dAUC| mean {d.mean():.5f} max {d.max():.5f} ({layers}); "
                f"{t_fast:.1f} s"
            )
            sys.stdout.flush()


if __name__ == "__main__":
    main()

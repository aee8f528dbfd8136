"""CLTM sweep speed: ``run_matrix`` against the naive loop (one estimator fit per (layer, seed, cell)).

Synthetic embeddings (dim 768, 13 layers, 10 seeds by default):

* gender: 10 languages, N = 60 per class, L2 logistic probe. The naive loop trains one
  ``LogisticProbe`` per (layer, seed, condition, target, donor) on exactly the same subsets (``naive=True``).
* speaker: 10 languages, N = 1000 utterances, PLDA (PCA to 200 dims first; ``--backend cosine`` for the
  centred cosine). The naive loop trains one back-end on the data of each (layer, seed, condition, target,
  donor). It also prints the ceiling any exact fast path has (distinct models vs fits, row passes).
* scale: 54 languages, gender (``--scale-task speaker`` with ``--backend``: the speaker sweep):
  ``--scale-layers 13 --scale-seeds 10`` runs the whole sweep; fewer are measured and extrapolated to 13
  layers x 10 seeds.

Naive loops are measured on a slice of layers/seeds (every run is independent, so time is linear in the number
of (layer, seed) pairs) and extrapolated; the cell values of both are compared on that slice.

    OMP_NUM_THREADS=1 python benchmarks/bench_matrix.py [--part gender|speaker|scale|all] [--n-jobs 2]
"""

from __future__ import annotations

import argparse
import os
import time

import numpy as np
import polars as pl

from cltm.transfer import run_matrix


def synthetic_corpus(
    n_languages: int, speakers: int, utts: int, dim: int, layers: int, *, seed: int = 0
) -> tuple[pl.DataFrame, np.ndarray]:
    """Per language: a gender direction (shared in part across languages), speaker offsets, noise."""
    rng = np.random.default_rng(seed)
    rows = []
    for k in range(n_languages):
        for s in range(speakers):
            for u in range(utts):
                rows.append(
                    {
                        "utt_id": f"l{k}_{s}_{u}",
                        "path": "x.wav",
                        "language": f"l{k:02d}",
                        "speaker": f"l{k}_s{s}",
                        "gender": "female" if s % 2 else "male",
                    }
                )
    man = pl.DataFrame(rows)
    lang_idx = np.repeat(np.arange(n_languages), speakers * utts)
    spk_idx = np.repeat(np.arange(n_languages * speakers), utts)
    g = np.where(man["gender"].to_numpy() == "male", 1.0, -1.0)
    shared = rng.normal(size=dim)
    X = np.empty((layers, man.height, dim), dtype=np.float32)
    for layer in range(layers):
        lrng = np.random.default_rng([seed, layer])
        gdir = shared + 0.8 * lrng.normal(size=(n_languages, dim))
        gdir /= np.linalg.norm(gdir, axis=1, keepdims=True)
        spk = lrng.normal(scale=0.6, size=(n_languages * speakers, dim))
        lang = lrng.normal(scale=0.5, size=(n_languages, dim))
        X[layer] = (
            lrng.normal(size=(man.height, dim))
            + spk[spk_idx]
            + lang[lang_idx]
            + (0.08 * g)[:, None] * gdir[lang_idx]
        ).astype(np.float32)
    return man, X


def _time(fn):
    t = time.perf_counter()
    out = fn()
    return time.perf_counter() - t, out


def bench_gender(args) -> None:
    man, X = synthetic_corpus(10, 60, 6, 768, args.layers)
    ours_t, ours = _time(
        lambda: run_matrix(X, man, "gender", n=60, seeds=args.seeds, progress=False, n_jobs=args.n_jobs)
    )
    sl_layers, sl_seeds = list(range(args.slice_layers)), list(range(args.slice_seeds))
    ours1_t, ours1 = _time(
        lambda: run_matrix(X, man, "gender", n=60, seeds=sl_seeds, layers=sl_layers, progress=False)
    )
    naive_t, naive = _time(
        lambda: run_matrix(
            X, man, "gender", n=60, seeds=sl_seeds, layers=sl_layers, progress=False, naive=True
        )
    )
    scale = (args.layers * args.seeds) / (len(sl_layers) * len(sl_seeds))
    naive_full = naive_t * scale
    diff = np.abs(ours1.runs["f1"].to_numpy() - naive.runs["f1"].to_numpy())
    cells = ours1.matrices.join(naive.matrices, on=["layer", "target", "donor"], suffix="_naive")
    print(
        f"[gender] 10 languages, N=60/class, dim 768, {args.layers} layers x {args.seeds} seeds, "
        f"{ours.runs.height} runs"
    )
    print(
        f"  ours (n_jobs={args.n_jobs}): {ours_t:.1f} s   (1 job, slice {len(sl_layers)}x{len(sl_seeds)}: "
        f"{ours1_t:.2f} s -> {ours1_t * scale:.1f} s full)"
    )
    print(f"  naive loop: {naive_t:.2f} s on the slice -> {naive_full:.1f} s extrapolated")
    print(
        f"  ratio: {naive_full / ours_t:.1f}x (n_jobs={args.n_jobs}), "
        f"{naive_t / ours1_t:.1f}x (1 job vs 1 job)"
    )
    print(
        f"  agreement on the slice: mean |dPerf| {diff.mean():.2e}, max {diff.max():.2e}; "
        f"max |dCLTM| {np.nanmax(np.abs((cells['cltm'] - cells['cltm_naive']).to_numpy())):.2e}"
    )


def bench_speaker(args) -> None:
    # the data of 13 layers x 30k utterances would not fit the shared machine: one layer, extrapolated
    layers = 1
    man, X = synthetic_corpus(10, 100, 30, 768, layers, seed=1)
    seeds = list(range(args.slice_seeds))
    probe = args.backend
    ours_t, ours = _time(
        lambda: run_matrix(X, man, "speaker", n=1000, seeds=seeds, probe=probe, progress=False)
    )
    naive_t, naive = _time(
        lambda: run_matrix(X, man, "speaker", n=1000, seeds=seeds, probe=probe, progress=False, naive=True)
    )
    scale = (13 * 10) / (layers * len(seeds))
    diff = np.abs(ours.runs["auc"].to_numpy() - naive.runs["auc"].to_numpy())
    print(
        f"[speaker] 10 languages, N=1000, dim 768, back-end {probe}; "
        f"measured 1 layer x {len(seeds)} seed(s), "
        f"extrapolated to 13 x 10"
    )
    print(
        f"  ours: {ours_t:.1f} s -> {ours_t * scale:.0f} s;  "
        f"naive: {naive_t:.1f} s -> {naive_t * scale:.0f} s"
    )
    print(
        f"  ratio: {naive_t / ours_t:.1f}x;  max |dAUC| {diff.max():.2e}  "
        f"({ours.runs.height} runs, {ours.skipped.height} languages skipped)"
    )
    print(identical_values_bound(ours.runs))


def identical_values_bound(runs: pl.DataFrame) -> str:
    """What any exact fast path must still do, as a ceiling on its speed-up over the naive loop.

    Identical values mean every distinct training set still gets its own back-end (a fit), and every training
    row still enters the statistics once (a d x d outer product, the same work per row as the naive loop's).
    The naive loop fits one back-end per run and reads each run's rows. The ratio of either kind of work caps
    the speed-up of that part; the whole can go no faster than the larger cap, and is near the fit cap when
    fits dominate (PLDA: a PCA eigendecomposition plus EM per model).
    """
    per_pair = runs.filter((pl.col("layer") == runs["layer"][0]) & (pl.col("seed") == runs["seed"][0]))
    n_lang = per_pair["target"].n_unique()
    distinct_models = n_lang + n_lang + n_lang * (n_lang - 1) // 2  # N of l, 2N of l, each unordered pair
    naive_rows = int(per_pair["n_train"].sum())
    our_rows = int(per_pair.filter(pl.col("condition") == "self")["n_train"].sum())  # 2N rows per language
    fit_cap = per_pair.height / distinct_models
    row_cap = naive_rows / our_rows
    return (
        f"  ceiling for identical values, per (layer, seed): {per_pair.height} fits -> {distinct_models} "
        f"distinct models (<= {fit_cap:.1f}x while fits dominate); {naive_rows:,} training-row passes -> "
        f"{our_rows:,} (<= {row_cap:.0f}x even with a free fit)"
    )


def bench_scale(args) -> None:
    layers, seeds = args.scale_layers, args.scale_seeds
    if args.scale_task == "speaker":
        # as the speaker part: 100 speakers x 30 utterances per language
        man, X = synthetic_corpus(54, 100, 30, 768, layers, seed=2)
        what = f"speaker ({args.backend}), N=1000"
        run = dict(task="speaker", n=1000, probe=args.backend)
    else:
        man, X = synthetic_corpus(54, 60, 6, 768, layers, seed=2)
        what = "gender, N=60/class"
        run = dict(task="gender", n=60)
    t, res = _time(lambda: run_matrix(X, man, seeds=seeds, progress=False, n_jobs=args.n_jobs, **run))
    if res.runs.is_empty():
        raise SystemExit(f"[scale] every language was skipped, nothing measured:\n{res.skipped}")
    measured = (
        f"{layers} layer(s) x {seeds} seed(s) = {t:.1f} s with {args.n_jobs} job(s) ({res.runs.height} runs)"
    )
    if layers * seeds == 13 * 10:
        print(f"[scale] 54 languages, {what}, dim 768, the full sweep: {measured}")
    else:
        full = t * 13 * 10 / (layers * seeds)
        print(
            f"[scale] 54 languages, {what}, dim 768: {measured} -> 13 layers x 10 seeds "
            f"~ {full:.0f} s extrapolated (sampling, done once per sweep, counted "
            f"{13 * 10 // (layers * seeds)}x)"
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--part", default="all", choices=["gender", "speaker", "scale", "all"])
    parser.add_argument("--layers", type=int, default=13)
    parser.add_argument("--seeds", type=int, default=10)
    parser.add_argument("--slice-layers", type=int, default=1)
    parser.add_argument("--slice-seeds", type=int, default=2)
    parser.add_argument("--n-jobs", type=int, default=2)
    parser.add_argument(
        "--scale-layers", type=int, default=1, help="scale part: layers actually run (13 = all)"
    )
    parser.add_argument(
        "--scale-seeds", type=int, default=1, help="scale part: seeds actually run (10 = all)"
    )
    parser.add_argument(
        "--backend", default="plda", help="speaker back-end: plda (PCA 200), plda_full, cosine"
    )
    parser.add_argument(
        "--scale-task", default="gender", choices=["gender", "speaker"], help="scale part: which sweep"
    )
    args = parser.parse_args()
    print(f"threads: OMP_NUM_THREADS={os.environ.get('OMP_NUM_THREADS', 'unset')}")
    for part, fn in (("gender", bench_gender), ("speaker", bench_speaker), ("scale", bench_scale)):
        if args.part in (part, "all"):
            fn(args)


if __name__ == "__main__":
    main()

"""CLTM sweep speed: ``run_matrix`` against naive loops measured in the same run.

Synthetic embeddings (dim 768, 13 layers):

* gender (issue 17's setting by default: 12 languages, N = 60 per class, 13 layers x 2 seeds, L2 logistic
  probe). Two references on exactly the sweep's subsets and test sets (taken from the engine's plan):
  the *careful naive loop* (one ``StandardScaler`` + ``LogisticRegression`` per distinct training set of a
  (layer, seed): N of i, 2N of i, N of i + N of j once per unordered pair; zero-shot scored with the single
  models), run on every (layer, seed); and the engine's own naive mode (``naive=True``: one fit per run, zero-
  shot and both pair directions refitted) on a slice, extrapolated. Also the machine's float32 matrix-multiply
  throughput and the solver's distance from it.
* speaker: 10 languages, N = 1000 utterances, PLDA (PCA to 200 dims first; ``--backend cosine`` for the
  centred cosine). The naive loop trains one back-end on the data of each (layer, seed, condition, target,
  donor). It also prints the ceiling any exact fast path has (distinct models vs fits, row passes).
* scale: 54 languages, gender (``--scale-task speaker`` with ``--backend``: the speaker sweep):
  ``--scale-layers 13 --scale-seeds 10`` runs the whole sweep; fewer are measured and extrapolated to 13
  layers x 10 seeds.

    OMP_NUM_THREADS=1 python benchmarks/bench_matrix.py [--part gender|speaker|scale|all] [--n-jobs 2]
"""

from __future__ import annotations

import argparse
import os
import time
from collections.abc import Sequence
from typing import Any

import numpy as np
import polars as pl

from cltm.transfer import plan_languages, run_matrix


def run_sweep(X: np.ndarray, man: pl.DataFrame, task: str, **settings: Any):
    """The benchmark's one call into ``run_matrix`` (its keyword interface is being replaced by typed
    settings objects: adapt this function only). ``settings``: n, seeds, layers, n_jobs, probe, naive."""
    return run_matrix(X, man, task, progress=False, **settings)


def language_plans(man: pl.DataFrame, task: str, *, n: int, seeds: Sequence[int]) -> dict:
    """The engine's per-language plan (test rows, nested N / 2N training rows per seed): what the sweep
    trains and tests on, so the careful loop below uses exactly the same subsets."""
    plans, _ = plan_languages(man, task, n=n, seeds=list(seeds))
    return plans


def gender_labels(man: pl.DataFrame) -> np.ndarray:
    """0/1 class codes in the engine's class order (female, male); -1 for anything else."""
    from cltm.tasks import GENDER_CLASSES, normalize_genders

    code = {c: k for k, c in enumerate(GENDER_CLASSES)}
    return np.array([code.get(v, -1) for v in normalize_genders(man["gender"]).to_list()], dtype=np.int64)


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


def _cpu_and_wall(fn):
    """(CPU seconds of this process, wall seconds, result): on a shared machine the CPU time of a one-job
    run is the steadier measure (other processes' load stretches wall time, not CPU time)."""
    c, t = time.process_time(), time.perf_counter()
    out = fn()
    return time.process_time() - c, time.perf_counter() - t, out


def careful_pipeline(C: float = 1.0, tol: float = 1e-4, max_iter: int = 1000):
    """What a careful user fits per training set: the probe's own pipeline (cltm's ``LogisticProbe``)."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    return make_pipeline(
        StandardScaler(), LogisticRegression(C=C, class_weight="balanced", tol=tol, max_iter=max_iter)
    )


def careful_layer(
    X: np.ndarray, layer: int, labels: np.ndarray, plans: dict, seeds: Sequence[int], *, C: float = 1.0
) -> tuple[list[dict[str, Any]], int]:
    """The careful naive loop on one layer: one fit per *distinct* training set of each seed (N of i, 2N of
    i, N of i + N of j once per unordered pair), each model scoring every test set that needs it (zero-shot
    from j = j's single model on i's test set, no refit). -> (one row per run, number of fits)."""
    from cltm.probes.metrics import classification_metrics

    X = np.asarray(X, dtype=np.float32)
    langs = list(plans)
    rows: list[dict[str, Any]] = []
    fits = 0

    def fitted(train: np.ndarray):
        return careful_pipeline(C).fit(X[train], labels[train])

    for seed in seeds:
        single = {i: fitted(plans[i].rows_n[seed]) for i in langs}
        own = {i: fitted(plans[i].rows_2n[seed]) for i in langs}
        pair = {
            (i, j): fitted(np.concatenate([plans[i].rows_n[seed], plans[j].rows_n[seed]]))
            for a, i in enumerate(langs)
            for j in langs[a + 1 :]
        }
        fits += len(single) + len(own) + len(pair)
        for i in langs:
            test = plans[i].test_rows
            n_i = len(plans[i].rows_n[seed])
            runs = [("single", i, single[i], n_i), ("self", i, own[i], len(plans[i].rows_2n[seed]))]
            others = [j for j in langs if j != i]
            runs += [
                ("pair", j, pair[(i, j) if (i, j) in pair else (j, i)], n_i + len(plans[j].rows_n[seed]))
                for j in others
            ]
            runs += [("zero_shot", j, single[j], len(plans[j].rows_n[seed])) for j in others]
            for condition, donor, model, n_train in runs:
                scores = classification_metrics(labels[test], model.predict(X[test]))
                rows.append(
                    {
                        "layer": layer,
                        "seed": seed,
                        "condition": condition,
                        "target": i,
                        "donor": donor,
                        "n_train": n_train,
                        "f1": scores["f1"],
                        "accuracy": scores["accuracy"],
                    }
                )
    return rows, fits


def careful_loop(
    X: np.ndarray, man: pl.DataFrame, *, n: int, seeds: Sequence[int], n_jobs: int = 1
) -> tuple[pl.DataFrame, int]:
    """The careful naive loop over every layer of ``X`` [layers, utts, dim] (plan included, as in the
    sweep); layers in parallel with joblib when ``n_jobs`` > 1. -> (runs, number of fits)."""
    from joblib import Parallel, delayed

    plans = language_plans(man, "gender", n=n, seeds=seeds)
    labels = gender_labels(man)
    args = [(X[layer], layer, labels, plans, seeds) for layer in range(len(X))]
    if n_jobs == 1:
        out = [careful_layer(*a) for a in args]
    else:
        out = Parallel(n_jobs=n_jobs)(delayed(careful_layer)(*a) for a in args)
    runs = pl.DataFrame([row for rows, _ in out for row in rows])
    return runs, sum(fits for _, fits in out)


def matmul_peak_gflops(size: int = 2048, repeats: int = 5) -> float:
    """The machine's float32 matrix-multiply throughput (best of ``repeats`` large numpy products, CPU
    time: with one BLAS thread, what one core delivers)."""
    rng = np.random.default_rng(0)
    a = rng.standard_normal((size, size), dtype=np.float32)
    b = rng.standard_normal((size, size), dtype=np.float32)
    best = min(_cpu_and_wall(lambda: a @ b)[0] for _ in range(repeats))  # CPU time: steadier under load
    return 2 * size**3 / best / 1e9


def solver_throughput(
    X: np.ndarray, man: pl.DataFrame, *, n: int, seeds: Sequence[int]
) -> tuple[float, float]:
    """The shared solver alone on every (layer, seed)'s distinct training sets -> (CPU s, GFLOP done).

    FLOPs are a lower bound counting only the products with the data the method needs: per problem, rows x
    dim x 2 (multiply-add) x 2 (margins, gradient) per iteration, plus one such pair to start."""
    from cltm.probes import fit_logistic_shared

    plans = language_plans(man, "gender", n=n, seeds=seeds)
    labels = gender_labels(man)
    langs = list(plans)
    seconds, flops = 0.0, 0.0
    warm = [plans[i].rows_n[seeds[0]] for i in langs]
    fit_logistic_shared(np.asarray(X[0], dtype=np.float32), labels, warm)  # first-call costs: untimed
    for layer in range(len(X)):
        X_layer = np.asarray(X[layer], dtype=np.float32)
        for seed in seeds:
            sets = [plans[i].rows_n[seed] for i in langs] + [plans[i].rows_2n[seed] for i in langs]
            sets += [
                np.concatenate([plans[i].rows_n[seed], plans[j].rows_n[seed]])
                for a, i in enumerate(langs)
                for j in langs[a + 1 :]
            ]
            t, _, fit = _cpu_and_wall(lambda: fit_logistic_shared(X_layer, labels, sets))  # noqa: B023
            seconds += t
            sizes = np.array([len(s) for s in sets], dtype=np.float64)
            flops += float(np.sum(sizes * X.shape[2] * 4 * (fit.n_iter + 1)))
    return seconds, flops / 1e9


def optimum_gap(X: np.ndarray, man: pl.DataFrame, careful: pl.DataFrame, *, n: int, seeds: Sequence[int]):
    """Mean and max |dF1| between the careful loop and the exact optimum of every distinct set (the shared
    solver at tol 1e-8 in float64): how far scikit-learn's own default stopping is from the optimum."""
    from cltm.probes import fit_logistic_shared
    from cltm.probes.metrics import binary_metrics_by_column

    plans = language_plans(man, "gender", n=n, seeds=seeds)
    labels = gender_labels(man)
    langs = list(plans)
    ref = {
        tuple(r[:5]): r[5]
        for r in careful.select(["layer", "seed", "condition", "target", "donor", "f1"]).rows()
    }
    diffs = []
    for layer in range(len(X)):
        X_layer = np.asarray(X[layer], dtype=np.float32)
        for seed in seeds:
            index = {("n", i): k for k, i in enumerate(langs)}
            index.update({("2n", i): len(langs) + k for k, i in enumerate(langs)})
            sets = [plans[i].rows_n[seed] for i in langs] + [plans[i].rows_2n[seed] for i in langs]
            for a, i in enumerate(langs):
                for j in langs[a + 1 :]:
                    index[("pair", i, j)] = index[("pair", j, i)] = len(sets)
                    sets.append(np.concatenate([plans[i].rows_n[seed], plans[j].rows_n[seed]]))
            fit = fit_logistic_shared(X_layer, labels, sets, tol=1e-8, dtype=np.float64)
            for i in langs:
                test = plans[i].test_rows
                decision = X_layer[test].astype(np.float64) @ fit.raw_coef.T + fit.raw_intercept
                scores = binary_metrics_by_column(labels[test], decision > 0)
                runs = [("single", i, ("n", i)), ("self", i, ("2n", i))]
                runs += [("pair", j, ("pair", i, j)) for j in langs if j != i]
                runs += [("zero_shot", j, ("n", j)) for j in langs if j != i]
                for condition, donor, key in runs:
                    diffs.append(abs(scores[index[key]]["f1"] - ref[(layer, seed, condition, i, donor)]))
    return float(np.mean(diffs)), float(np.max(diffs))


def bench_gender(args) -> None:
    n, n_lang, dim = 60, args.languages, 768
    man, X = synthetic_corpus(n_lang, 60, 6, dim, args.layers)
    seeds = list(range(args.seeds))
    peak = matmul_peak_gflops()
    sweep = dict(n=n, seeds=seeds)
    # first calls pay imports (joblib, rich, scikit-learn) and, with jobs, the workers' start: untimed
    run_sweep(X[:1], man, "gender", n=n, seeds=seeds[:1], n_jobs=1)
    careful_loop(X[:1], man, n=n, seeds=seeds[:1])
    if args.n_jobs > 1:
        run_sweep(X[:2], man, "gender", n=n, seeds=seeds[:1], n_jobs=args.n_jobs)
    ours1_c, ours1_t, ours1 = _cpu_and_wall(lambda: run_sweep(X, man, "gender", n_jobs=1, **sweep))
    care1_c, care1_t, (care1, fits) = _cpu_and_wall(lambda: careful_loop(X, man, n=n, seeds=seeds))
    print(
        f"[gender] {n_lang} languages, N={n}/class, dim {dim}, {args.layers} layers x {args.seeds} seeds, "
        f"{ours1.runs.height} runs; float32 matmul peak {peak:.0f} GFLOP/s (numpy, 2048^3, CPU time)"
    )
    print(
        f"  sweep (1 job): {ours1_t:.2f} s wall, {ours1_c:.2f} s CPU;  careful loop (1 job, {fits} fits): "
        f"{care1_t:.2f} s wall, {care1_c:.2f} s CPU"
    )
    print(
        f"  careful ratio (1 job vs 1 job): {care1_t / ours1_t:.1f}x wall, {care1_c / ours1_c:.1f}x CPU time"
    )
    if args.n_jobs > 1:
        oursj_t, _ = _time(lambda: run_sweep(X, man, "gender", n_jobs=args.n_jobs, **sweep))
        carej_t, _ = _time(lambda: careful_loop(X, man, n=n, seeds=seeds, n_jobs=args.n_jobs))
        print(
            f"  with {args.n_jobs} jobs each: sweep {oursj_t:.2f} s, careful {carej_t:.2f} s -> ratio "
            f"{carej_t / oursj_t:.1f}x;  sweep ({args.n_jobs} jobs) vs careful (1 job): "
            f"{care1_t / oursj_t:.1f}x"
        )
    keys = ["layer", "seed", "condition", "target", "donor"]
    both = ours1.runs.join(care1, on=keys, suffix="_careful", how="inner")
    if both.height != ours1.runs.height:
        raise SystemExit(f"the careful loop has {both.height} of the sweep's {ours1.runs.height} runs")
    diff = np.abs(both["f1"].to_numpy() - both["f1_careful"].to_numpy())
    perf = both.filter(pl.col("condition") == "single")
    print(
        f"  vs careful: mean |dF1| {diff.mean():.4f}, max {diff.max():.4f} ({both.height} runs); mean "
        f"Perf(i) {perf['f1'].mean():.4f} vs {perf['f1_careful'].mean():.4f}"
    )
    gap_mean, gap_max = optimum_gap(X, man, care1, n=n, seeds=seeds)
    print(
        f"  careful loop vs the exact optimum (tol 1e-8, float64): mean |dF1| {gap_mean:.4f}, max "
        f"{gap_max:.4f} (scikit-learn's own stopping at tol 1e-4: the floor for any agreement with it)"
    )
    solve_t, gflop = solver_throughput(X, man, n=n, seeds=seeds)
    print(
        f"  solver alone: {solve_t:.2f} s CPU for >= {gflop:.1f} GFLOP of products with the data = "
        f"{gflop / solve_t:.1f} GFLOP/s, {100 * gflop / solve_t / peak:.0f}% of the matmul peak "
        f"(whole sweep, CPU: {100 * gflop / ours1_c / peak:.0f}%)"
    )

    # the engine's naive mode refits every run (zero-shot and both pair directions): on a slice, extrapolated
    sl_layers, sl_seeds = list(range(args.slice_layers)), seeds[: args.slice_seeds]
    sliced = dict(n=n, seeds=sl_seeds, layers=sl_layers, n_jobs=1)
    slice_t, ours_sl = _time(lambda: run_sweep(X, man, "gender", **sliced))
    naive_t, naive = _time(lambda: run_sweep(X, man, "gender", naive=True, **sliced))
    scale = (args.layers * len(seeds)) / (len(sl_layers) * len(sl_seeds))
    diff = np.abs(ours_sl.runs["f1"].to_numpy() - naive.runs["f1"].to_numpy())
    print(
        f"  naive mode (one fit per run), slice {len(sl_layers)} layer(s) x {len(sl_seeds)} seed(s): "
        f"{naive_t:.2f} s vs sweep {slice_t:.2f} s = {naive_t / slice_t:.1f}x "
        f"(-> {naive_t * scale:.0f} s extrapolated); mean |dF1| {diff.mean():.4f}, max {diff.max():.4f}"
    )


def bench_speaker(args) -> None:
    # the data of 13 layers x 30k utterances would not fit the shared machine: one layer, extrapolated
    layers = 1
    man, X = synthetic_corpus(10, 100, 30, 768, layers, seed=1)
    seeds = list(range(args.slice_seeds))
    probe = args.backend
    ours_t, ours = _time(lambda: run_sweep(X, man, "speaker", n=1000, seeds=seeds, probe=probe))
    naive_t, naive = _time(lambda: run_sweep(X, man, "speaker", n=1000, seeds=seeds, probe=probe, naive=True))
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
        task, run = "speaker", dict(n=1000, probe=args.backend)
    else:
        man, X = synthetic_corpus(54, 60, 6, 768, layers, seed=2)
        what = "gender, N=60/class"
        task, run = "gender", dict(n=60)
    t, res = _time(lambda: run_sweep(X, man, task, seeds=seeds, n_jobs=args.n_jobs, **run))
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
    if task == "gender":  # the solver's share: one (layer, seed) alone, CPU time, against the matmul peak
        solve_t, gflop = solver_throughput(X[:1], man, n=60, seeds=[0])
        print(
            f"  solver alone, one (layer, seed) of 1,539 problems: {solve_t:.2f} s CPU, {gflop:.1f} GFLOP = "
            f"{100 * gflop / solve_t / matmul_peak_gflops():.0f}% of the float32 matmul peak"
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--part", default="all", choices=["gender", "speaker", "scale", "all"])
    parser.add_argument("--languages", type=int, default=12, help="gender part: number of languages")
    parser.add_argument("--layers", type=int, default=13, help="gender part: layers")
    parser.add_argument("--seeds", type=int, default=2, help="gender part: seeds")
    parser.add_argument(
        "--slice-layers", type=int, default=1, help="gender naive mode / speaker: layers measured"
    )
    parser.add_argument(
        "--slice-seeds", type=int, default=2, help="gender naive mode / speaker: seeds measured"
    )
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

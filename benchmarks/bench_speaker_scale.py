"""One (layer, seed) of an L-language speaker sweep: cosine vs the sweep's default ``plda`` vs per-model fits.

Synthetic corpus as ``bench_matrix.py`` (768-d, 100 speakers x 30 utterances per language, N = 1,000; default
54 languages: 54 + 54 + 1,431 = 1,539 distinct PLDA models). Measured in the same run:

(a) the sweep with the centred cosine back-end (``run_matrix(..., probe="cosine")``);
(b) the sweep with the default trained back-end (``run_matrix(..., probe="plda")``: every distinct model
    fitted in lockstep by ``fit_plda_many`` with ``evaluators.PLDA_LOCKSTEP_DEFAULTS``, float32 wide
    scoring), once per ``--lockstep`` entry; its time split into statistics, fits and scoring;
(c) per-model exact fits (``PLDA.from_stats`` on the composed statistics, float64 per-model scoring: the
    sweep's path before the lockstep fit) on ``--slice-models`` distinct models spread over singles, selves
    and pairs, extrapolated to all of them; each slice model scores every target trial list that uses it,
    giving mean / max |dAUC| of (b) against exact per-model fits;
(d) the FLOP floor of exact per-model PLDA scoring: (model, target) cells x the rows each target's trial list
    uses x dim x n_components x 2, over the float32 matrix-multiply throughput measured here on one and two
    cores: how far any per-model PLDA scoring is from the cosine sweep's time;
(e) the floor of the per-model PCA: one top-k eigendecomposition of a dim x dim scatter by every LAPACK route
    at hand (the fastest x the number of models).

    OMP_NUM_THREADS=1 PYTHONPATH=src python benchmarks/bench_speaker_scale.py [--languages 10] \\
        [--lockstep default,em2] [--slice-models 24]

A ``--lockstep`` entry is ``default`` or ``:``-separated overrides of the defaults: ``emK`` (at most K
EM steps; ``emall``: no cap), ``f64`` (float64 PCA), ``w64`` (float64 scoring), ``shared`` (shared PCA),
``e64`` (float64 EM), ``exact`` (``PLDA_LOCKSTEP_EXACT``), ``cuda`` / ``cuda-1`` (fits and scoring on that
GPU: ``default:cuda``). On a lent GPU machine: ``benchmarks/device_checks.sh``.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_matrix import synthetic_corpus  # noqa: E402
from cltm.probes import PLDA  # noqa: E402
from cltm.probes import plda_many as pm  # noqa: E402
from cltm.probes.metrics import verification_metrics  # noqa: E402
from cltm.transfer import ProbeSettings, run_matrix  # noqa: E402
from cltm.transfer import evaluators as ev  # noqa: E402


def parse_lockstep(text: str) -> dict:
    out: dict = {}
    for field in text.split(":"):
        if field in ("default", ""):
            continue
        if field == "exact":
            out.update(ev.PLDA_LOCKSTEP_EXACT)
        elif field.startswith("em"):
            out["em_steps"] = None if field == "emall" else int(field[2:])
        elif field == "f64":
            out["pca_dtype"] = "float64"
        elif field == "w64":
            out["score_dtype"] = "float64"
        elif field == "e64":
            out["em_dtype"] = "float64"
        elif field == "shared":
            out["pca"] = "shared"
        elif field == "cuda" or field.startswith("cuda-"):
            out["device"] = field.replace("-", ":")  # cuda-1 -> cuda:1 (':' separates fields)
        else:
            raise SystemExit(f"bad --lockstep field {field!r} in {text!r}")
    return out


def eigen_floor(dim: int, k: int, models: int, cosine_s: float | None = None, repeats: int = 5) -> None:
    """The per-model PCA's floor on this CPU: the top-k eigenvectors of one dim x dim float32 scatter by every
    LAPACK route at hand (best of ``repeats``), and what the fastest costs for ``models`` models."""
    import scipy.linalg
    import torch

    rng = np.random.default_rng(0)
    A = rng.normal(size=(2 * dim, dim)) * np.r_[np.full(dim // 10, 5.0), np.ones(dim - dim // 10)]
    S = (A.T @ A).astype(np.float32)
    lo = dim - k
    routes = {
        "scipy evr, top k (the sweep's)": lambda: scipy.linalg.eigh(S, subset_by_index=[lo, dim - 1]),
        "scipy evx, top k": lambda: scipy.linalg.eigh(S, subset_by_index=[lo, dim - 1], driver="evx"),
        "scipy evd, all": lambda: scipy.linalg.eigh(S, driver="evd"),
        "torch eigh, all": lambda: torch.linalg.eigh(torch.from_numpy(S)),
        "numpy eigh, all": lambda: np.linalg.eigh(S),
        "tridiagonal reduction alone (ssytrd)": lambda: scipy.linalg.lapack.ssytrd(S),
    }
    from threadpoolctl import threadpool_limits

    best_route, threads = None, torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        with threadpool_limits(1):
            for name, fn in routes.items():
                fn()
                best = min(_seconds(fn) for _ in range(repeats))
                print(f"    {name}: {best * 1e3:.1f} ms")
                if "alone" not in name and (best_route is None or best < best_route[1]):
                    best_route = (name, best)
    finally:
        torch.set_num_threads(threads)
    name, best = best_route
    total = best * models
    versus = f" = {total / cosine_s:.1f}x the cosine sweep" if cosine_s else ""
    print(f"(e) PCA floor: {models} models x {best * 1e3:.1f} ms ({name}) = {total:.1f} s{versus}")


def _seconds(fn) -> float:
    t = time.perf_counter()
    fn()
    return time.perf_counter() - t


def matmul_gflops(threads: int, repeats: int = 5) -> float:
    """float32 GEMM throughput (GFLOP/s) on ``threads`` BLAS threads, at the shapes the scoring uses."""
    from threadpoolctl import threadpool_limits

    rng = np.random.default_rng(0)
    A = rng.normal(size=(1024, 768)).astype(np.float32)
    B = rng.normal(size=(768, 4096)).astype(np.float32)
    with threadpool_limits(threads):
        A @ B
        best = np.inf
        for _ in range(repeats):
            t = time.perf_counter()
            A @ B
            best = min(best, time.perf_counter() - t)
    return 2 * 1024 * 768 * 4096 / best / 1e9


class _Timed:
    """Wraps a function of ``cltm.probes.plda_many`` to add up the time spent in it (generators included)."""

    def __init__(self, name: str, generator: bool = False):
        self.name, self.fn, self.seconds, self.generator = name, getattr(pm, name), 0.0, generator

    def __call__(self, *args, **kwargs):
        if not self.generator:
            t = time.perf_counter()
            try:
                return self.fn(*args, **kwargs)
            finally:
                self.seconds += time.perf_counter() - t
        return self._iterate(*args, **kwargs)

    def _iterate(self, *args, **kwargs):
        it = self.fn(*args, **kwargs)
        while True:
            t = time.perf_counter()
            try:
                item = next(it)
            except StopIteration:
                self.seconds += time.perf_counter() - t
                return
            self.seconds += time.perf_counter() - t
            yield item


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--languages", type=int, default=54, help="number of languages (54: the issue's scale)"
    )
    parser.add_argument("--speakers", type=int, default=100, help="speakers per language")
    parser.add_argument(
        "--utts", type=int, default=30, help="utterances per speaker (2N + the test quarter must fit)"
    )
    parser.add_argument("--n", type=int, default=1000, help="N, training utterances per language")
    parser.add_argument("--dim", type=int, default=768, help="vector dimension")
    parser.add_argument(
        "--lockstep",
        default="default",
        help="comma-separated lockstep settings of the plda sweep (see above)",
    )
    parser.add_argument(
        "--slice-models", type=int, default=24, help="per-model exact fits timed and compared"
    )
    args = parser.parse_args()

    man, X = synthetic_corpus(args.languages, args.speakers, args.utts, args.dim, 1, seed=1)
    sweep = dict(task="speaker", n=args.n, seeds=[0], progress=False)
    print(
        f"{args.languages} languages, {args.speakers} speakers x {args.utts} utterances, N={args.n}, "
        f"dim {args.dim}; one (layer, seed); OMP_NUM_THREADS={os.environ.get('OMP_NUM_THREADS', 'unset')}, "
        f"load average at start {os.getloadavg()[0]:.2f} on {os.cpu_count()} CPUs"
    )
    # warm-up: torch, LAPACK and the sweep's imports loaded before anything is timed
    two = sorted(set(man["language"]))[:2]
    run_matrix(X, man, probe="cosine", languages=two, **sweep)
    run_matrix(
        X, man, probe=ProbeSettings("plda", backend_params={"n_components": 8}), languages=two, **sweep
    )
    t = time.perf_counter()
    cos = run_matrix(X, man, probe="cosine", **sweep)
    t_cos = time.perf_counter() - t
    if cos.runs.height == 0:
        raise SystemExit("no language could be planned (2N + the test quarter must fit): raise --utts")
    print(f"(a) cosine sweep: {t_cos:.2f} s ({cos.runs.height} runs)")

    spec = ev.PROBES["plda"]
    params = ev.BACKENDS["plda"][1]
    reference: dict | None = None
    for entry in args.lockstep.split(","):
        lockstep = parse_lockstep(entry)
        record: dict = {}

        def recording(X_, speakers, groups, options, _fast=spec.fast, _record=record):
            out = _fast(X_, speakers, groups, options)
            _record.update(X=X_, speakers=speakers, groups=groups, out=out)
            return out

        fit_t, score_t = _Timed("iter_fit_plda_many", generator=True), _Timed("score_trials_wide")
        ev.PROBES["plda"] = ev.ProbeSpec(
            spec.name, spec.kind, recording, spec.naive, spec.description, spec.multi_layer, spec.estimator
        )
        pm.iter_fit_plda_many, pm.score_trials_wide = fit_t, score_t
        try:
            t = time.perf_counter()
            run_matrix(X, man, probe=ProbeSettings("plda", lockstep=lockstep), **sweep)
            t_plda = time.perf_counter() - t
        finally:
            ev.PROBES["plda"] = spec
            pm.iter_fit_plda_many, pm.score_trials_wide = fit_t.fn, score_t.fn
        Xl, speakers, groups, out = record["X"], record["speakers"], record["groups"], record["out"]
        group_keys = [[ev.training_set_key(g.target, p) for p in g.problems] for g in groups]
        keys = list(dict.fromkeys(k for ks in group_keys for k in ks))
        cells = sum(len(set(ks)) for ks in group_keys)
        settings = ev.plda_lockstep_settings(params, lockstep)
        print(
            f"(b) plda sweep, lockstep {entry} = {lockstep or ev.PLDA_LOCKSTEP_DEFAULTS}: {t_plda:.2f} s = "
            f"fits {fit_t.seconds:.2f} s ({fit_t.seconds / len(keys) * 1e3:.1f} ms/model, {len(keys)} "
            "models) "
            f"+ scoring {score_t.seconds:.2f} s ({cells} (model, target) cells) + statistics and the rest "
            f"{t_plda - fit_t.seconds - score_t.seconds:.2f} s; {t_plda / t_cos:.1f}x cosine"
        )

        if reference is None:
            # the slice: evenly spaced over the distinct models (singles, selves and pairs in order)
            pick = np.unique(np.linspace(0, len(keys) - 1, min(args.slice_models, len(keys))).astype(int))
            ref_keys = [keys[i] for i in pick]
            parts = ev._training_parts(PLDA(**params), Xl, speakers, groups)
            t = time.perf_counter()
            reference = {k: PLDA.from_stats(sum(parts[k]), **params) for k in ref_keys}
            per_fit = (time.perf_counter() - t) / len(ref_keys)
            del parts
            ref_auc: dict = {}
            ref_score_s, n_ref_cells = 0.0, 0
            for g in groups:
                rows, enroll, test = ev._trial_rows(g.trials)
                labels = g.trials["label"].to_numpy()
                for k in dict.fromkeys(ev.training_set_key(g.target, p) for p in g.problems):
                    if k in reference:
                        t = time.perf_counter()
                        scores = reference[k].score_trials(Xl[rows], enroll, test)
                        ref_score_s += time.perf_counter() - t
                        n_ref_cells += 1
                        ref_auc[(g.target, k)] = verification_metrics(labels, scores)["auc"]
            t_stats = t_plda - fit_t.seconds - score_t.seconds
            t_exact = t_stats + per_fit * len(keys) + ref_score_s / n_ref_cells * cells
            print(
                f"(c) per-model exact PLDA.from_stats: {per_fit:.3f} s per fit on {len(ref_keys)} of "
                f"{len(keys)} models -> sweep ~{t_exact:.1f} s = fits {per_fit * len(keys):.1f} s + "
                f"per-model scoring {ref_score_s / n_ref_cells * cells:.1f} s + statistics {t_stats:.2f} s; "
                f"{t_exact / t_cos:.1f}x cosine"
            )
        dauc = []
        for g, ks, res in zip(groups, group_keys, out, strict=True):
            for k, r in zip(ks, res, strict=True):
                if (g.target, k) in ref_auc:
                    dauc.append(abs(r["auc"] - ref_auc[(g.target, k)]))
        dauc = np.asarray(dauc)
        print(
            f"    |dAUC| vs exact per-model fits on {len(dauc)} cells ({len(ref_keys)} models): mean "
            f"{dauc.mean():.6f}, max {dauc.max():.6f}; exact sweep / this sweep {t_exact / t_plda:.1f}x"
        )
        sys.stdout.flush()
        if entry == args.lockstep.split(",")[0]:
            k_out = min(settings.n_components or args.dim, args.dim)
            rows_per_cell = [
                len(ev._trial_rows(g.trials)[0])
                for g, ks in zip(groups, group_keys, strict=True)
                for _ in set(ks)
            ]
            flops = float(np.sum(rows_per_cell)) * args.dim * k_out * 2
        del record, groups, out

    g1, g2 = matmul_gflops(1), matmul_gflops(2)
    floor1, floor2 = flops / g1 / 1e9, flops / g2 / 1e9
    print(
        f"(d) FLOP floor of per-model PLDA scoring: {cells} cells x {np.mean(rows_per_cell):.0f} trial rows "
        f"(mean) x {args.dim} x {k_out} x 2 = {flops / 1e9:.0f} GFLOP; float32 matmul measured {g1:.0f} "
        f"GFLOP/s on 1 core, {g2:.0f} on 2 -> {floor1:.1f} s ({floor1 / t_cos:.1f}x cosine) on 1 core, "
        f"{floor2:.1f} s ({floor2 / t_cos:.1f}x cosine) on 2; the issue's 6x cosine = {6 * t_cos:.1f} s"
    )
    print(f"(e) top-{k_out} eigenvectors of one {args.dim} x {args.dim} float32 scatter, one thread:")
    eigen_floor(args.dim, k_out, len(keys), t_cos)
    print(f"load average at end {os.getloadavg()[0]:.2f}")


if __name__ == "__main__":
    main()

"""Probe fast paths against the naive way, measured in the same run.

    python benchmarks/bench_probes.py [--problems 1000] [--rows 240] [--dim 768] [--languages 10]
    [--skip-plda]

(a) Batched logistic regression (``fit_logistic_subsets``) vs one scikit-learn pipeline
    (StandardScaler + LogisticRegression(class_weight="balanced"), default lbfgs, tol 1e-4) per problem, on
    ``--problems`` problems of ``--rows`` x ``--dim`` drawn from a shared pool of anisotropic features (like
    pooled SSL layers: correlated, offset). Prints the time ratio, the max |coef difference| against
    sklearn's default fit and against a tightly converged sklearn Newton fit (on a sample), and the mean
    |delta macro-F1| on held-out rows.
(b) CLTM pair models from composed statistics (``PLDA.from_stats(stats_i + stats_j)``) vs retraining PLDA on
the
    concatenated data of every ordered pair (i, j), ``--languages`` languages.
"""

from __future__ import annotations

import argparse
import time

import numpy as np


def anisotropic_pool(rng, n, dim, n_speakers=None):
    """Features with a decaying spectrum and a large offset; label = a weak linear direction + noise."""
    mixing = rng.normal(size=(dim, dim)) * (np.arange(1, dim + 1) ** -1.0)[:, None]
    latent = rng.normal(size=(n, dim))
    label = (latent[:, 0] + 0.5 * latent[:, 3] + 0.8 * rng.normal(size=n) > 0).astype(np.int64)
    return latent @ mixing + 3.0, label


def bench_logistic(args, rng):
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    from cltm.probes import fit_logistic_subsets, metrics

    pool_size = max(20 * args.rows, 10_000)
    X, y = anisotropic_pool(rng, pool_size, args.dim)
    test = np.arange(pool_size - 2000, pool_size)
    subsets = [rng.choice(pool_size - 2000, args.rows, replace=False) for _ in range(args.problems)]
    print(f"(a) {args.problems} logistic problems of {args.rows} x {args.dim}, C=1, balanced; 2000 test rows")

    t0 = time.perf_counter()
    fit = fit_logistic_subsets(X, y, subsets, C=1.0)
    t_batched = time.perf_counter() - t0

    def sk(rows, **kw):
        return make_pipeline(StandardScaler(), LogisticRegression(C=1.0, class_weight="balanced", **kw)).fit(
            X[rows], y[rows]
        )

    t0 = time.perf_counter()
    models = [sk(rows, max_iter=1000) for rows in subsets]
    t_sklearn = time.perf_counter() - t0

    coef_diff = max(np.abs(m[-1].coef_[0] - fit.coef[k]).max() for k, m in enumerate(models))
    coef_scale = max(np.abs(m[-1].coef_[0]).max() for m in models)
    pred = fit.predict(X[test])
    d_f1 = [
        abs(metrics.macro_f1(y[test], pred[k]) - metrics.macro_f1(y[test], m.predict(X[test])))
        for k, m in enumerate(models)
    ]
    sample = range(min(20, args.problems))
    tight = [sk(subsets[k], solver="newton-cholesky", tol=1e-12, max_iter=1000) for k in sample]
    tight_diff = max(np.abs(m[-1].coef_[0] - fit.coef[k]).max() for k, m in zip(sample, tight, strict=True))
    print(
        f"    batched (exact Newton, float64): {t_batched:7.2f} s"
        f"  ({1e3 * t_batched / args.problems:.1f} ms/problem,"
        f" mean {fit.n_iter.mean():.1f} Newton steps, converged {fit.converged.mean():.0%})"
    )
    print(
        f"    sklearn one by one (lbfgs):      {t_sklearn:7.2f} s"
        f"  ({1e3 * t_sklearn / args.problems:.1f} ms/problem,"
        f" mean {np.mean([m[-1].n_iter_[0] for m in models]):.0f} lbfgs iterations)"
    )
    print(f"    ratio sklearn / batched: {t_sklearn / t_batched:.2f}x")
    print(
        f"    max |coef diff| vs sklearn default: {coef_diff:.2e} (max |coef| {coef_scale:.2f});"
        f" vs tight sklearn Newton (20 problems): {tight_diff:.2e}"
    )
    print(f"    mean |delta macro-F1| {np.mean(d_f1):.5f}, max {np.max(d_f1):.5f}")


def bench_plda(args, rng):
    from cltm.probes import PLDA, SpeakerStats

    L, dim = args.languages, args.dim
    per_language, spk_per_language = args.plda_utts, args.plda_utts // 10
    data = []
    for lang in range(L):
        spk = np.repeat(np.arange(spk_per_language), per_language // spk_per_language)
        centres = rng.normal(size=(spk_per_language, dim))
        X = centres[spk] + 2.0 * rng.normal(size=(len(spk), dim)) + rng.normal(size=dim)
        data.append((X, np.array([f"{lang}_{s}" for s in spk])))
    params = {"n_components": args.plda_components, "n_iter": 10}
    pairs = [(i, j) for i in range(L) for j in range(L) if i != j]
    print(
        f"(b) PLDA({params}) for {len(pairs)} ordered language pairs,"
        f" {per_language} utts x {dim} per language"
    )

    t0 = time.perf_counter()
    stats = [SpeakerStats.from_data(X, s, length_norm=True) for X, s in data]
    composed = {(i, j): PLDA.from_stats(stats[i] + stats[j], **params) for i, j in pairs}
    t_composed = time.perf_counter() - t0

    t0 = time.perf_counter()
    retrained = {
        (i, j): PLDA(**params).fit(np.vstack([data[i][0], data[j][0]]), np.r_[data[i][1], data[j][1]])
        for i, j in pairs
    }
    t_retrained = time.perf_counter() - t0
    probe = data[0][0][:50]
    diff = max(
        np.abs(composed[p].score(probe[:-1], probe[1:]) - retrained[p].score(probe[:-1], probe[1:])).max()
        for p in pairs
    )
    print(
        f"    composed stats: {t_composed:7.2f} s   retrain per pair: {t_retrained:7.2f} s"
        f"   ratio {t_retrained / t_composed:.2f}x   max |score diff| {diff:.1e}"
    )
    print("    (stats_i + stats_j == stats_j + stats_i, so a sweep needs one model per unordered pair; the")
    print("     ratio above still builds one composed model per ordered pair, like the retraining loop)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--problems", type=int, default=1000)
    parser.add_argument("--rows", type=int, default=240)
    parser.add_argument("--dim", type=int, default=768)
    parser.add_argument("--languages", type=int, default=10)
    parser.add_argument("--plda-utts", type=int, default=2000, help="utterances per language for (b)")
    parser.add_argument("--plda-components", type=int, default=200)
    parser.add_argument("--skip-plda", action="store_true")
    parser.add_argument("--skip-logistic", action="store_true")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    rng = np.random.default_rng(args.seed)
    if not args.skip_logistic:
        bench_logistic(args, rng)
    if not args.skip_plda:
        bench_plda(args, rng)


if __name__ == "__main__":
    main()

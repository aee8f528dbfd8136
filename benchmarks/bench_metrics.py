"""Detection metrics on many trials: cltm.probes.metrics vs the usual sklearn.metrics.roc_curve recipe.

    python benchmarks/bench_metrics.py [--trials 10000000] [--seed 0]

Prints wall time and peak traced memory (tracemalloc sees numpy's buffers) of
(a) ``verification_metrics`` (EER + minDCF 0.01/0.05 + AUC, one sort) and ``eer`` alone, and
(b) the naive way: ``roc_curve`` -> EER at the crossing (interpolated) + ``roc_auc_score``,
plus the ratios and the largest difference between the two EER/AUC values.
"""

from __future__ import annotations

import argparse
import gc
import time
import tracemalloc

import numpy as np


def measure(fn):
    gc.collect()
    tracemalloc.start()
    tracemalloc.reset_peak()
    t0 = time.perf_counter()
    out = fn()
    seconds = time.perf_counter() - t0
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    return out, seconds, peak / 2**20


def sklearn_eer_auc(y, s):
    from sklearn.metrics import roc_auc_score, roc_curve

    fpr, tpr, _ = roc_curve(y, s)
    fnr = 1 - tpr
    k = int(np.argmax(fnr <= fpr))
    # interpolate on the ROC segment where the rates cross (the common brentq/interp1d recipe, exactly)
    d = (fnr[k - 1] - fnr[k]) + (fpr[k] - fpr[k - 1])
    a = (fnr[k - 1] - fpr[k - 1]) / d if d > 0 else 0.0
    eer = fpr[k - 1] + a * (fpr[k] - fpr[k - 1])
    return {"eer": float(eer), "auc": float(roc_auc_score(y, s))}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--trials", type=int, default=10_000_000)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()

    from cltm.probes import metrics

    rng = np.random.default_rng(args.seed)
    y = rng.random(args.trials) < 0.5
    s = rng.normal(size=args.trials) + 1.5 * y
    input_mb = (y.nbytes + s.nbytes) / 2**20
    print(f"{args.trials:,} trials (float64 scores + bool labels = {input_mb:.0f} MiB of input)")

    ours, t_ours, m_ours = measure(lambda: metrics.verification_metrics(y, s))
    _, t_eer, m_eer = measure(lambda: metrics.eer(y, s))
    naive, t_naive, m_naive = measure(lambda: sklearn_eer_auc(y, s))
    print(f"cltm verification_metrics (eer, minDCF x2, auc): {t_ours:6.2f} s  peak {m_ours:7.0f} MiB")
    print(f"cltm eer only:                                   {t_eer:6.2f} s  peak {m_eer:7.0f} MiB")
    print(f"sklearn roc_curve EER + roc_auc_score:           {t_naive:6.2f} s  peak {m_naive:7.0f} MiB")
    print(
        f"ratio (sklearn / cltm all metrics): time {t_naive / t_ours:.2f}x, memory {m_naive / m_ours:.2f}x; "
        f"eer only: time {t_naive / t_eer:.2f}x, memory {m_naive / m_eer:.2f}x"
    )
    print(
        f"|EER diff| {abs(ours['eer'] - naive['eer']):.2e}   |AUC diff| {abs(ours['auc'] - naive['auc']):.2e}"
        f"   (EER {ours['eer']:.5f}, AUC {ours['auc']:.5f})"
    )


if __name__ == "__main__":
    main()

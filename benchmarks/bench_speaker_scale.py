"""One (layer, seed) of an L-language speaker sweep: cosine vs per-model PLDA fits vs ``fit_plda_many``.

Synthetic corpus as ``bench_matrix.py`` (768-d, 100 speakers x 30 utterances per language, N = 1,000; default
54 languages: 54 + 54 + 1,431 = 1,539 distinct PLDA models). Measured in the same run:

(a) the sweep with the centred cosine back-end (``run_matrix(..., probe="cosine")``, the existing path);
(b) the sweep with per-model ``PLDA.from_stats`` fits: the fits are timed on a slice of the distinct models
    and extrapolated (the rest of that sweep, statistics and scoring, is the same work as in (c), measured
    there);
(c) the sweep with all models of the (layer, seed) fitted by ``cltm.probes.plda_many.fit_plda_many``, once per
    ``--variants`` entry, through a probe registered here (``_many_evaluator``: the wiring the sweep's
    ``plda`` evaluator needs).

Agreement: on the slice, both fits score every target trial list that uses them; mean / max |dAUC| of (c) vs
(b).

    OMP_NUM_THREADS=1 PYTHONPATH=src python benchmarks/bench_speaker_scale.py [--languages 10] \\
        [--variants exact,shared,shared:em0] [--slice-models 24]

A variant is ``pca[:emK][:f32][:osX][:w32|:w64]``: ``pca`` exact | shared, ``emK`` at most K EM steps,
``f32`` float32 PCA decompositions, ``osX`` the shared subspace's oversampling (default 1.5), ``w32``/``w64``
scoring with ``score_trials_plda_many`` in float32 / float64 (default: ``PLDA.score_trials_of_models``).
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
from cltm.probes.metrics import verification_metrics  # noqa: E402
from cltm.probes.plda_many import (  # noqa: E402
    ManyPLDASettings,
    fit_plda_many,
    score_trials_plda_many,
)
from cltm.probes.stats import SpeakerStats  # noqa: E402
from cltm.transfer import evaluators as ev  # noqa: E402
from cltm.transfer import run_matrix  # noqa: E402

PLDA_PARAMS = ev.BACKENDS["plda"][1]  # the sweep's default PLDA: {"n_components": 200}


def _many_evaluator(settings: ManyPLDASettings, record: dict, wide: str | None = None):
    """The sweep's ``plda`` evaluator with every distinct model of the (layer, seed) fitted in one
    ``fit_plda_many`` call: per-language statistics as in ``evaluators._verification_fast``, each model given
    as its parts (a pair's two languages), each target's trial list scored by all its models at once
    (``score_trials_plda_many`` in ``wide`` precision, or ``PLDA.score_trials_of_models`` when None)."""

    def evaluate(X, speakers, groups, options):
        backend = PLDA(**settings.plda_params())
        by_key: dict[tuple[str, ...], np.ndarray] = {}
        for g in groups:
            for p in g.problems:
                by_key.setdefault(ev.training_set_key(g.target, p), p.train_rows)
        block: dict[tuple[str, str], object] = {}
        for key, rows in by_key.items():
            if key[0] == "n":
                block[("n", key[1])] = backend.stats(X[rows], speakers[rows])
        for key, rows in by_key.items():
            if key[0] == "2n":
                extra = rows[~np.isin(rows, by_key[("n", key[1])])]
                block[("extra", key[1])] = backend.stats(X[extra], speakers[extra])
        parts = {}
        for key in by_key:
            if key[0] == "n":
                parts[key] = (block[("n", key[1])],)
            elif key[0] == "2n":
                parts[key] = (block[("n", key[1])], block[("extra", key[1])])
            elif key[0] == "pair":
                parts[key] = (block[("n", key[1])], block[("n", key[2])])
            else:  # pragma: no cover
                raise ValueError(f"unplanned training set {key}")
        keys = list(parts)
        t = time.perf_counter()
        fitted = dict(zip(keys, fit_plda_many([parts[k] for k in keys], settings), strict=True))
        record["fit_s"] = record.get("fit_s", 0.0) + time.perf_counter() - t
        record["parts"], record["models"], record["groups"] = parts, fitted, []
        t = time.perf_counter()
        out = []
        for g in groups:
            keys_g = [ev.training_set_key(g.target, p) for p in g.problems]
            distinct = list(dict.fromkeys(keys_g))
            rows, enroll, test = ev._trial_rows(g.trials)
            models = [fitted[k] for k in distinct]
            if wide is None:
                scores = PLDA.score_trials_of_models(models, X[rows], enroll, test)
            else:
                scores = score_trials_plda_many(models, X[rows], enroll, test, dtype=wide)
            labels = g.trials["label"].to_numpy()
            auc = {k: verification_metrics(labels, scores[:, c]) for c, k in enumerate(distinct)}
            record["groups"].append((g.target, distinct, X[rows], enroll, test, labels, auc))
            out.append([dict(auc[k]) for k in keys_g])
        record["score_s"] = record.get("score_s", 0.0) + time.perf_counter() - t
        return out

    return evaluate


def parse_variant(text: str) -> tuple[ManyPLDASettings, str | None]:
    fields = text.split(":")
    kw: dict = {"pca": fields[0], **PLDA_PARAMS}
    wide = None
    for f in fields[1:]:
        if f in ("w32", "w64"):
            wide = "float32" if f == "w32" else "float64"
        elif f.startswith("em"):
            kw["em_steps"] = int(f[2:])
        elif f == "f32":
            kw["pca_dtype"] = "float32"
        elif f.startswith("os"):
            kw["oversample"] = float(f[2:])
        else:
            raise SystemExit(f"bad variant field {f!r} in {text!r}")
    return ManyPLDASettings(**kw), wide


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
        "--variants",
        default="exact:f32:em5:w32,exact:f32:em2:w32",
        help="comma-separated fit_plda_many variants (see above)",
    )
    parser.add_argument("--slice-models", type=int, default=24, help="per-model fits timed and compared")
    args = parser.parse_args()

    man, X = synthetic_corpus(args.languages, args.speakers, args.utts, args.dim, 1, seed=1)
    sweep = dict(task="speaker", n=args.n, seeds=[0], progress=False)
    print(
        f"{args.languages} languages, {args.speakers} speakers x {args.utts} utterances, N={args.n}, "
        f"dim {args.dim}; one (layer, seed); OMP_NUM_THREADS={os.environ.get('OMP_NUM_THREADS', 'unset')}, "
        f"load average at start {os.getloadavg()[0]:.1f} on {os.cpu_count()} CPUs"
    )
    # warm-up: torch, LAPACK and the sweep's imports loaded before anything is timed
    rng = np.random.default_rng(0)
    warm = SpeakerStats.from_data(rng.normal(size=(60, 16)), np.arange(60) % 6)
    fit_plda_many([warm, (warm, warm)], ManyPLDASettings(n_components=8))
    run_matrix(X, man, probe="cosine", languages=sorted(set(man["language"]))[:2], **sweep)
    t = time.perf_counter()
    cos = run_matrix(X, man, probe="cosine", **sweep)
    t_cos = time.perf_counter() - t
    if cos.runs.height == 0:
        raise SystemExit("no language could be planned (2N + the test quarter must fit): raise --utts")
    print(f"(a) cosine sweep: {t_cos:.2f} s")

    reference, t_per_model = None, None
    for name in args.variants.split(","):
        settings, wide = parse_variant(name)
        record: dict = {}
        probe = f"plda_many_{len(ev.PROBES)}"
        ev.register_probe(probe, "verification", f"fit_plda_many {name}")(
            _many_evaluator(settings, record, wide)
        )
        t = time.perf_counter()
        run_matrix(X, man, probe=probe, **sweep)
        t_many = time.perf_counter() - t
        keys = list(record["models"])
        if reference is None:
            # the slice: evenly spaced over the distinct models (singles, selves and pairs in order)
            pick = np.unique(np.linspace(0, len(keys) - 1, min(args.slice_models, len(keys))).astype(int))
            ref_keys = [keys[i] for i in pick]
            t = time.perf_counter()
            reference = {k: PLDA.from_stats(sum(record["parts"][k]), **PLDA_PARAMS) for k in ref_keys}
            per_fit = (time.perf_counter() - t) / len(ref_keys)
        dauc, ref_score_s = [], 0.0
        for _target, distinct, Xr, enroll, test, labels, auc in record["groups"]:
            for k in distinct:
                if k in reference:
                    t = time.perf_counter()
                    ref_scores = reference[k].score_trials(Xr, enroll, test)  # the per-model path's scoring
                    ref_score_s += time.perf_counter() - t
                    dauc.append(abs(verification_metrics(labels, ref_scores)["auc"] - auc[k]["auc"]))
        if t_per_model is None:
            # (b) = the statistics and bookkeeping of (c) + per-model fits + per-model scoring, the last two
            # timed on the slice and extrapolated to every model / every (model, target) cell
            cells = sum(len(group[1]) for group in record["groups"])
            t_stats = t_many - record["fit_s"] - record["score_s"]
            t_score = ref_score_s / len(dauc) * cells
            t_per_model = t_stats + per_fit * len(keys) + t_score
            print(
                f"(b) per-model PLDA.from_stats: {per_fit:.3f} s per fit on {len(ref_keys)} of {len(keys)} "
                f"models -> sweep {t_per_model:.1f} s = fits {per_fit * len(keys):.1f} s + scoring "
                f"{t_score:.1f} s ({cells} cells) + the rest {t_stats:.2f} s; "
                f"{t_per_model / t_cos:.1f}x cosine"
            )
        dauc = np.asarray(dauc)
        iters = np.array([m.n_iter_ for m in record["models"].values()])
        print(
            f"(c) fit_plda_many {name}: sweep {t_many:.2f} s = fits {record['fit_s']:.2f} s "
            f"({record['fit_s'] / len(keys) * 1e3:.0f} ms/model, EM steps median {np.median(iters):.0f} max "
            f"{iters.max()}) + scoring {record['score_s']:.2f} s + the rest "
            f"{t_many - record['fit_s'] - record['score_s']:.2f} s"
        )
        print(
            f"    {t_many / t_cos:.1f}x cosine; per-model sweep / this {t_per_model / t_many:.1f}x, fits "
            f"alone {per_fit * len(keys) / record['fit_s']:.1f}x; |dAUC| vs per-model fits on {len(dauc)} "
            f"(model, target) cells: mean {dauc.mean():.5f}, max {dauc.max():.5f}"
        )
        sys.stdout.flush()
        record.clear()  # the registered probe keeps the dict: free this variant's 1,539 models now
        del ev.PROBES[probe]


if __name__ == "__main__":
    main()

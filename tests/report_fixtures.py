"""Report test fixtures built through the engine's own functions (not a second writer of result tables).

:func:`synthetic_runs` draws per-seed runs shaped like real sweeps: within-family donors help more, a few
targets have an own-data gain within noise (unstable rows with huge ratios), some cells pass the clip, and
the zero-shot condition is there. Everything else — matrices, properties, language scores, the results
directory — comes from ``matrix_from_runs``, ``matrix_properties`` and ``MatrixResult``, exactly as
``cltm matrix`` makes them.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import polars as pl

from cltm.transfer.families import default_families, family_of
from cltm.transfer.properties import matrix_properties
from cltm.transfer.stats import matrix_from_runs
from cltm.transfer.tables import CONFUSION_COLUMNS, RUNS_COLUMNS, MatrixResult, conform

#: Common Voice locales spanning several families of the shipped map (first n are used).
LANGUAGES = [
    "en", "fr", "ru", "de", "es", "pl", "nl", "it", "uk", "fi", "et", "hu", "ar", "mt", "zh-CN", "zh-HK",
    "ja", "tr", "kk", "hi", "bn", "fa", "ta", "ka", "eu", "cy", "sw", "id", "th", "vi", "cs", "sk", "sl",
    "be", "pt", "ca", "ro", "gl", "sv-SE", "da", "lt", "lv", "ga-IE", "br", "ky", "tt", "ba", "ur", "mr",
    "ml", "ko", "yue", "he", "rw",
]  # fmt: skip
FAMILIES: dict[str, str] = default_families()
CLASSES = {"gender": ["female", "male"], "emotion": ["angry", "happy", "neutral", "sad"]}


def family(lang: str) -> str:
    return family_of(lang, FAMILIES) or "other"


def synthetic_runs(
    n_languages: int = 6,
    *,
    layers: list[int] = (0, 1),
    tasks: tuple[str, ...] = ("gender",),
    model: str = "tiny-hubert",
    probe: str = "logistic",
    seeds: int = 3,
    n_train: int = 60,
    finetune_targets: int = 0,
    seed: int = 0,
) -> tuple[pl.DataFrame, pl.DataFrame]:
    """Per-seed ``(runs, confusion)``; ``finetune_targets`` adds fine-tune runs at the last layer."""
    rng = np.random.default_rng(seed)
    languages = LANGUAGES[:n_languages]
    n = len(languages)
    same = np.array([[family(a) == family(b) for b in languages] for a in languages])
    runs, confusion = [], []
    layers = list(layers)

    def add(task, layer, probe_, condition, target, donor, s, perf, source):
        perf = float(np.clip(perf, 0.01, 0.999))
        row = {
            "task": task, "model": model, "layer": layer, "probe": probe_, "condition": condition,
            "target": target, "donor": donor, "seed": s, "source": source,
            "n_train": n_train * (2 if condition in ("self", "pair") else 1), "config_hash": f"h-{task}",
        }  # fmt: skip
        if task == "speaker":
            row |= {"auc": perf, "eer": 1 - perf, "min_dcf_01": min(1.0, 2 * (1 - perf))}
        else:
            row |= {"f1": perf, "accuracy": perf + 0.004, "uar": perf + 0.002}
            if condition in ("single", "zero_shot") and source == "probe":
                classes = CLASSES.get(task, CLASSES["gender"])
                per_class = 20
                for k, true in enumerate(classes):
                    right = int(round(perf * per_class))
                    wrong = classes[(k + 1) % len(classes)]
                    for pred, count in ((true, right), (wrong, per_class - right)):
                        if count:
                            confusion.append(
                                {key: row[key] for key in ("task", "model", "layer", "probe", "condition")}
                                | {"target": target, "donor": donor, "seed": s, "true": true}
                                | {"pred": pred, "count": count}
                            )
        runs.append(row)

    for task in tasks:
        unstable = set(rng.choice(n, size=max(1, n // 12), replace=False).tolist())
        for layer in layers:
            depth = layer / max(1, layers[-1])
            single = np.clip(0.7 + 0.2 * np.sin(np.pi * depth) + rng.normal(0, 0.03, n), 0.5, 0.9)
            gain = rng.uniform(0.03, 0.08, n)
            gain[list(unstable)] = 0.0003  # own-data gain within noise
            base = 0.15 + 0.5 * same + 0.3 * depth + rng.normal(0, 0.45, (n, n))
            base[rng.random((n, n)) < 0.06] *= 4  # a few cells beyond the clip
            stable = [k for k in range(n) if k not in unstable]
            if len(stable) >= 2:  # and surely one on each side
                base[stable[0], stable[1]], base[stable[1], stable[0]] = 2.6, -2.2
            for s in range(seeds):
                for i, target in enumerate(languages):
                    perf = single[i] + rng.normal(0, 0.004)
                    add(task, layer, probe, "single", target, target, s, perf, "probe")
                    add(
                        task,
                        layer,
                        probe,
                        "self",
                        target,
                        target,
                        s,
                        perf + gain[i] + rng.normal(0, 0.004),
                        "probe",
                    )
                    for j, donor in enumerate(languages):
                        if i == j:
                            continue
                        pair = perf + gain[i] * base[i, j] + rng.normal(0, 0.004)
                        add(task, layer, probe, "pair", target, donor, s, pair, "probe")
                        zero = perf - 0.15 + 0.1 * same[i, j] + rng.normal(0, 0.01)
                        add(task, layer, probe, "zero_shot", target, donor, s, zero, "probe")
        for i, target in enumerate(languages[:finetune_targets]):
            for s in range(seeds):
                base_perf = 0.8 + rng.normal(0, 0.003)
                add(task, layers[-1], "finetune", "single", target, target, s, base_perf, "finetune")
                add(task, layers[-1], "finetune", "self", target, target, s, base_perf + 0.05, "finetune")
                for j, donor in enumerate(languages):
                    if i != j:
                        value = 0.2 + 0.6 * same[i, j] + rng.normal(0, 0.3)
                        add(
                            task,
                            layers[-1],
                            "finetune",
                            "pair",
                            target,
                            donor,
                            s,
                            base_perf + 0.05 * value,
                            "finetune",
                        )
    return (
        conform(pl.DataFrame(runs, infer_schema_length=None), RUNS_COLUMNS),
        conform(pl.DataFrame(confusion), CONFUSION_COLUMNS)
        if confusion
        else pl.DataFrame(schema=CONFUSION_COLUMNS),
    )


def engine_result(runs: pl.DataFrame, confusion: pl.DataFrame | None = None, **tables) -> MatrixResult:
    """The results object of ``runs`` as ``cltm matrix`` makes it (shipped family map)."""
    matrices = matrix_from_runs(runs)
    properties, scores = matrix_properties(matrices, families=FAMILIES)
    extra = {"confusion": confusion} if confusion is not None else {}
    return MatrixResult(
        runs=runs, matrices=matrices, properties=properties, language_scores=scores, **extra, **tables
    )


def write_engine_results(out_dir: str | Path, n_languages: int = 6, **kwargs) -> Path:
    """:func:`synthetic_runs` (probe runs only) through the engine, written as a results directory."""
    runs, confusion = synthetic_runs(n_languages, **kwargs)
    probe = runs.filter(pl.col("source") == "probe")
    return engine_result(probe, confusion).write(out_dir)


def write_finetune_dir(out_dir: str | Path, runs: pl.DataFrame) -> Path:
    """A ``cltm finetune --out`` directory: its runs only, through the results object."""
    return MatrixResult(runs=runs.filter(pl.col("source") == "finetune")).write(out_dir)

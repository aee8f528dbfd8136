"""Synthetic results tables (runs / matrices / properties) for previewing and testing the report.

The values are random but shaped like real sweeps: within-family donors help more than others, a few
targets have an own-data gain within noise (unstable rows with huge values, as in the published speaker
matrix), some cells pass the clip, and a few fine-tune cells sit beside the probe cells. Nothing here is
a CLTM computation.
"""

from __future__ import annotations

import hashlib
import math
from pathlib import Path

import numpy as np
import polars as pl
from scipy.stats import norm

# Common Voice locales with their families; the first n are used.
SYNTHETIC_FAMILIES: dict[str, str] = {
    "en": "Germanic",
    "de": "Germanic",
    "nl": "Germanic",
    "sv-SE": "Germanic",
    "da": "Germanic",
    "nn-NO": "Germanic",
    "fy-NL": "Germanic",
    "fr": "Romance",
    "es": "Romance",
    "it": "Romance",
    "pt": "Romance",
    "ca": "Romance",
    "ro": "Romance",
    "gl": "Romance",
    "ru": "Slavic",
    "pl": "Slavic",
    "uk": "Slavic",
    "cs": "Slavic",
    "sk": "Slavic",
    "sl": "Slavic",
    "be": "Slavic",
    "bg": "Slavic",
    "lt": "Baltic",
    "lv": "Baltic",
    "fi": "Uralic",
    "et": "Uralic",
    "hu": "Uralic",
    "mhr": "Uralic",
    "ar": "Afro-Asiatic",
    "mt": "Afro-Asiatic",
    "he": "Afro-Asiatic",
    "ha": "Afro-Asiatic",
    "zh-CN": "Sino-Tibetan",
    "zh-HK": "Sino-Tibetan",
    "zh-TW": "Sino-Tibetan",
    "yue": "Sino-Tibetan",
    "ja": "Japonic",
    "ko": "Koreanic",
    "tr": "Turkic",
    "kk": "Turkic",
    "ky": "Turkic",
    "tt": "Turkic",
    "ba": "Turkic",
    "hi": "Indo-Iranian",
    "bn": "Indo-Iranian",
    "fa": "Indo-Iranian",
    "ur": "Indo-Iranian",
    "mr": "Indo-Iranian",
    "ta": "Dravidian",
    "ml": "Dravidian",
    "ka": "Kartvelian",
    "eu": "isolate",
    "cy": "Celtic",
    "ga-IE": "Celtic",
    "br": "Celtic",
    "sw": "Niger-Congo",
    "rw": "Niger-Congo",
    "lg": "Niger-Congo",
    "id": "Austronesian",
    "th": "Kra-Dai",
    "vi": "Austroasiatic",
}

PROPERTY_COLUMNS = (
    "share_positive",
    "share_negative",
    "share_above_one",
    "reciprocity",
    "asymmetry",
    "deviation_from_ones",
    "within_family_mean",
    "across_family_mean",
)


def synthetic_languages(n: int) -> list[str]:
    """The first ``n`` locales of :data:`SYNTHETIC_FAMILIES` (at most its size)."""
    languages = list(SYNTHETIC_FAMILIES)
    if n > len(languages):
        raise ValueError(f"at most {len(languages)} synthetic languages, asked for {n}")
    # A few per family first, so that even 6 languages span several families.
    per_family = max(2, math.ceil(math.sqrt(n)) - 1)
    taken: dict[str, int] = {}
    chosen = []
    for lang in languages:
        family = SYNTHETIC_FAMILIES[lang]
        if taken.get(family, 0) < per_family and len(chosen) < n:
            chosen.append(lang)
            taken[family] = taken.get(family, 0) + 1
    chosen += [lang for lang in languages if lang not in chosen][: n - len(chosen)]
    return chosen


def _properties(matrix: np.ndarray, families: list[str]) -> dict[str, float]:
    n = matrix.shape[0]
    off = ~np.eye(n, dtype=bool)
    values = matrix[off]
    same = np.array([[a == b for b in families] for a in families]) & off
    both = (matrix > 0) & (matrix.T > 0)
    upper = np.triu(off)
    return {
        "share_positive": float(np.mean(values > 0)),
        "share_negative": float(np.mean(values < 0)),
        "share_above_one": float(np.mean(values > 1)),
        "reciprocity": float(both[upper].mean()),
        "asymmetry": float(np.linalg.norm(matrix - matrix.T) / np.linalg.norm(matrix)),
        "deviation_from_ones": float(np.linalg.norm(matrix - 1) / n),
        "within_family_mean": float(matrix[same].mean()) if same.any() else float("nan"),
        "across_family_mean": float(matrix[off & ~same].mean()) if (off & ~same).any() else float("nan"),
    }


def make_synthetic_results(
    n_languages: int = 6,
    *,
    layers: int | list[int] = 4,
    tasks: tuple[str, ...] = ("gender",),
    models: tuple[str, ...] = ("tiny-hubert",),
    probe: str = "logistic",
    seeds: int = 3,
    n_train: int = 60,
    finetune_targets: int = 0,
    finetune_in_matrices: bool = True,
    seed: int = 0,
) -> tuple[pl.DataFrame, pl.DataFrame, pl.DataFrame]:
    """Return ``(runs, matrices, properties)`` with the columns of DESIGN §3.3.

    ``finetune_targets`` > 0 adds fine-tune runs (``source = "finetune"``, probe ``"finetune"``, last layer)
    for that many targets against every donor; ``finetune_in_matrices`` also adds their matrix rows.
    """
    rng = np.random.default_rng(seed)
    languages = synthetic_languages(n_languages)
    families = [SYNTHETIC_FAMILIES[lang] for lang in languages]
    layer_list = list(range(layers)) if isinstance(layers, int) else list(layers)
    n = len(languages)
    same_family = np.array([[a == b for b in families] for a in families])
    run_rows, matrix_rows, property_rows = [], [], []
    for task in tasks:
        verification = task == "speaker"
        for model in models:
            config_hash = hashlib.sha1(f"{task}/{model}/{probe}".encode()).hexdigest()[:8]
            unstable_targets = set(rng.choice(n, size=max(1, n // 12), replace=False).tolist())
            for layer in layer_list:
                depth = layer / max(1, layer_list[-1])
                perf_single = np.clip(0.7 + 0.2 * np.sin(np.pi * depth) + rng.normal(0, 0.03, n), 0.5, 0.99)
                base = 0.15 + 0.5 * same_family + 0.3 * depth + rng.normal(0, 0.45, (n, n))
                base[rng.random((n, n)) < 0.04] *= 4  # a few cells beyond the clip
                se = rng.uniform(0.05, 0.45, (n, n))
                unstable = np.zeros((n, n), dtype=bool)
                for target in unstable_targets:
                    base[target] = rng.normal(0, 6, n)  # own-data gain within noise: huge ratios
                    se[target] = rng.uniform(3, 8, n)
                    unstable[target] = True
                np.fill_diagonal(base, 1.0)
                np.fill_diagonal(se, 0.0)
                np.fill_diagonal(unstable, False)
                with np.errstate(divide="ignore", invalid="ignore"):
                    p_positive = np.where(se > 0, norm.cdf(base / np.where(se > 0, se, 1)), 1.0)
                gain = np.clip(rng.uniform(0.02, 0.08, n), 0, None)
                for i, target in enumerate(languages):
                    for j, donor in enumerate(languages):
                        matrix_rows.append(
                            (
                                task,
                                model,
                                layer,
                                probe,
                                target,
                                donor,
                                float(base[i, j]),
                                float(se[i, j]),
                                float(base[i, j] * gain[i] / perf_single[i]),
                                float(p_positive[i, j]),
                                bool(unstable[i, j]),
                            )
                        )
                property_rows.append(
                    {"task": task, "model": model, "layer": layer, "probe": probe}
                    | _properties(base, families)
                )
                for s in range(seeds):
                    for i, target in enumerate(languages):
                        single = float(perf_single[i] + rng.normal(0, 0.01))
                        conditions = [("single", target, single), ("self", target, single + gain[i])]
                        conditions += [
                            ("pair", donor, single + gain[i] * base[i, j])
                            for j, donor in enumerate(languages)
                            if donor != target
                        ]
                        conditions += [
                            (
                                "zero_shot",
                                donor,
                                single - 0.15 + 0.1 * same_family[i, j] + rng.normal(0, 0.02),
                            )
                            for j, donor in enumerate(languages)
                            if donor != target
                        ]
                        for condition, donor, perf in conditions:
                            run_rows.append(
                                _run_row(
                                    task,
                                    model,
                                    layer,
                                    probe,
                                    condition,
                                    target,
                                    donor,
                                    s,
                                    n_train,
                                    perf,
                                    verification,
                                    "probe",
                                    config_hash,
                                )
                            )
            if finetune_targets:
                layer = layer_list[-1]
                for i, target in enumerate(languages[:finetune_targets]):
                    gain_ft = 0.05
                    for j, donor in enumerate(languages):
                        value = 1.0 if i == j else float(0.2 + 0.6 * same_family[i, j] + rng.normal(0, 0.3))
                        if finetune_in_matrices:
                            matrix_rows.append(
                                (
                                    task,
                                    model,
                                    layer,
                                    "finetune",
                                    target,
                                    donor,
                                    value,
                                    0.1,
                                    value * 0.06,
                                    0.9,
                                    False,
                                )
                            )
                        for s in range(seeds):
                            single = 0.8 + rng.normal(0, 0.005)
                            perf = {
                                "single": single,
                                "self": single + gain_ft,
                                "pair": single + gain_ft * value,
                            }
                            for condition in ("single", "self") if i == j else ("pair",):
                                run_rows.append(
                                    _run_row(
                                        task,
                                        model,
                                        layer,
                                        "finetune",
                                        condition,
                                        target,
                                        donor,
                                        s,
                                        n_train,
                                        perf[condition],
                                        verification,
                                        "finetune",
                                        "ft" + config_hash,
                                    )
                                )
    f64, i64, utf8 = pl.Float64, pl.Int64, pl.Utf8
    runs = pl.DataFrame(
        run_rows,
        schema={
            "task": utf8,
            "model": utf8,
            "layer": i64,
            "probe": utf8,
            "condition": utf8,
            "target": utf8,
            "donor": utf8,
            "seed": i64,
            "n_train": i64,
            "f1": f64,
            "accuracy": f64,
            "auc": f64,
            "eer": f64,
            "min_dcf_01": f64,
            "min_dcf_05": f64,
            "source": utf8,
            "config_hash": utf8,
        },
        orient="row",
    )
    matrices = pl.DataFrame(
        matrix_rows,
        schema={
            "task": utf8,
            "model": utf8,
            "layer": i64,
            "probe": utf8,
            "target": utf8,
            "donor": utf8,
            "cltm": f64,
            "cltm_se": f64,
            "m": f64,
            "p_positive": f64,
            "unstable": pl.Boolean,
        },
        orient="row",
    )
    return runs, matrices, pl.DataFrame(property_rows)


def _run_row(
    task,
    model,
    layer,
    probe,
    condition,
    target,
    donor,
    seed,
    n_train,
    perf,
    verification,
    source,
    config_hash,
):
    perf = float(min(perf, 0.999))
    if verification:
        metrics = (None, None, perf, 1 - perf, min(1.0, 2 * (1 - perf)), min(1.0, 1.5 * (1 - perf)))
    else:
        metrics = (perf, perf + 0.005, None, None, None, None)
    n = n_train * 2 if condition in ("self", "pair") else n_train
    return (task, model, layer, probe, condition, target, donor, seed, n, *metrics, source, config_hash)


def write_synthetic_results(out_dir: str | Path, n_languages: int = 6, **kwargs) -> Path:
    """Write :func:`make_synthetic_results` tables as a results directory; returns ``out_dir``."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    runs, matrices, properties = make_synthetic_results(n_languages, **kwargs)
    runs.write_parquet(out_dir / "runs.parquet")
    matrices.write_parquet(out_dir / "matrices.parquet")
    properties.write_parquet(out_dir / "properties.parquet")
    return out_dir

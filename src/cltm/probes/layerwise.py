"""Per-layer probe scores without transfer: the layer-selection view behind ``cltm probe``.

For every layer (and every language, plus all languages pooled) one probe is trained on the language's
training rows and scored on its test rows:

- classification tasks (``gender`` or any label column of the manifest): a classifier from :data:`PROBES`,
  scored with macro-F1, accuracy and UAR; ``wsum`` trains one weighted-layer-sum probe over all layers instead
  and reports its learned layer weights;
- ``speaker``: a verification back-end from :data:`BACKENDS`, scored with AUC, EER and minDCF on a trial list
  drawn from the test rows by :func:`cltm.corpus.sampling.make_trials`.

Train/test come from the manifest's ``split`` column, completed where missing by the sampler's seeded
speaker-disjoint split; ``n`` (optional) subsamples each language's training rows with the shared samplers
(``balanced_subset`` per class, ``speaker_subset`` for speakers), as the CLTM sweep does.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import polars as pl

from cltm.probes import backends as _backends
from cltm.probes import classifiers as _classifiers
from cltm.probes.metrics import classification_metrics, verification_metrics

__all__ = [
    "BACKENDS",
    "PROBES",
    "LayerProbeResult",
    "parse_layers",
    "plot_layer_curve",
    "probe_layers",
]

#: ``--probe`` name -> estimator factory (classification)
PROBES: dict[str, Callable[[int], object]] = {
    "logreg": lambda seed: _classifiers.LogisticProbe(),
    "lda": lambda seed: _classifiers.LDAProbe(),
    "mlp": lambda seed: _classifiers.MLPProbe(seed=seed),
    "wsum": lambda seed: _classifiers.WeightedLayerSumProbe(seed=seed),
}

#: ``--backend`` name -> back-end factory (speaker verification)
BACKENDS: dict[str, Callable[[], object]] = {
    "cosine": lambda: _backends.CosineBackend(),
    "lda-cosine": lambda: _backends.LDACosine(),
    "plda": lambda: _backends.PLDA(n_components=200),
    "plda-snorm": lambda: _backends.SNorm(_backends.PLDA(n_components=200)),
    "cosine-asnorm": lambda: _backends.ASNorm(_backends.CosineBackend()),
}

POOLED = "pooled"
WSUM_LAYER = -1  # the ``layer`` value of weighted-layer-sum rows
SPEAKER_TASK = "speaker"
GENDER_CLASSES = ("female", "male")
_ROW = "_probe_row"


@dataclass
class LayerProbeResult:
    """``scores``: one row per (layer, language) with the metrics; ``layer_weights`` (wsum only): one row per
    (language, layer); ``skipped``: (language, reason) for languages that could not be probed."""

    scores: pl.DataFrame
    layer_weights: pl.DataFrame | None = None
    skipped: list[tuple[str, str]] = field(default_factory=list)

    @property
    def main_metric(self) -> str:
        return "eer" if "eer" in self.scores.columns else "f1"


@dataclass
class _LanguageSplit:
    language: str
    train_rows: np.ndarray
    test_rows: np.ndarray
    trials: tuple[np.ndarray, np.ndarray, np.ndarray] | None = None  # enroll rows, test rows, labels


def parse_layers(spec: str | Sequence[int] | None, n_layers: int) -> list[int]:
    """``"all"``/None -> every layer; ``"0,3,6"`` or ``"-1"`` -> those layers (negative = from the end)."""
    if spec is None or (isinstance(spec, str) and spec.strip().lower() == "all"):
        return list(range(n_layers))
    items = [s.strip() for s in spec.split(",") if s.strip()] if isinstance(spec, str) else list(spec)
    out = []
    for item in items:
        try:
            layer = int(item)
        except ValueError:
            raise ValueError(f"layer {item!r} is not an integer; use 'all' or e.g. '0,3,6'") from None
        if not -n_layers <= layer < n_layers:
            raise ValueError(
                f"layer {layer} out of range: the features have {n_layers} layers (0..{n_layers - 1})"
            )
        out.append(layer % n_layers)
    if not out:
        raise ValueError("no layers given; use 'all' or e.g. '0,3,6'")
    return sorted(set(out))


def _splits(
    manifest: pl.DataFrame, task: str, *, n: int | None, seed: int, test_fraction: float, usable: np.ndarray
) -> tuple[list[_LanguageSplit], list[tuple[str, str]], list[str] | None]:
    from cltm.corpus.sampling import (
        SamplingError,
        balanced_subset,
        make_trials,
        speaker_disjoint_split,
        speaker_subset,
    )

    if "language" not in manifest.columns:
        raise ValueError("the manifest has no 'language' column")
    df = manifest.with_row_index(_ROW).filter(pl.Series(usable))
    speaker_task = task == SPEAKER_TASK
    need = "speaker" if speaker_task else task
    if need not in df.columns:
        label_columns = [
            c for c in df.columns if c not in ("utt_id", "path", "start", "end", "duration", _ROW)
        ]
        raise ValueError(f"the manifest has no column {need!r} for task {task!r}; columns: {label_columns}")
    df = df.filter(pl.col(need).is_not_null())
    classes: list[str] | None = None
    if not speaker_task:
        if task == "gender":
            df = df.filter(pl.col("gender").is_in(list(GENDER_CLASSES)))
            classes = list(GENDER_CLASSES)
        else:
            classes = sorted(df[task].cast(pl.String).unique().to_list())
    if "split" not in df.columns or df["split"].null_count() > 0:
        if "speaker" not in df.columns:
            raise ValueError(
                "no complete 'split' column and no 'speaker' column to make a speaker-disjoint split"
            )
        df = speaker_disjoint_split(df, test_fraction=test_fraction, seed=seed)
    out, skipped = [], []
    for language in sorted(df["language"].unique().to_list()):
        lang = df.filter(pl.col("language") == language)
        train = lang.filter(pl.col("split") == "train")
        test = lang.filter(pl.col("split") == "test")
        try:
            if speaker_task:
                if n is not None:
                    train = speaker_subset(train, n, seed=seed)
                trials = make_trials(test, seed=seed, same_gender="gender" in test.columns)
                row_of = dict(zip(test["utt_id"].to_list(), test[_ROW].to_list(), strict=True))
                if trials.height == 0:
                    raise SamplingError("no trials could be made from the test rows")
                enroll = np.array([row_of[u] for u in trials["enroll"].to_list()], dtype=np.int64)
                tst = np.array([row_of[u] for u in trials["test"].to_list()], dtype=np.int64)
                split = _LanguageSplit(
                    language,
                    train[_ROW].to_numpy(),
                    test[_ROW].to_numpy(),
                    (enroll, tst, trials["label"].to_numpy().astype(np.int64)),
                )
                if train["speaker"].n_unique() < 2:
                    raise SamplingError(f"{train['speaker'].n_unique()} training speaker(s); need 2")
            else:
                if n is not None:
                    train = balanced_subset(train, task, n, seed=seed, classes=classes)
                for part, rows in (("training", train), ("test", test)):
                    if rows[task].n_unique() < 2:
                        raise SamplingError(f"{part} rows have {rows[task].n_unique()} class(es); need 2")
                split = _LanguageSplit(language, train[_ROW].to_numpy(), test[_ROW].to_numpy())
        except SamplingError as err:
            skipped.append((language, str(err)))
            continue
        out.append(split)
    return out, skipped, classes


def _pooled(splits: list[_LanguageSplit]) -> _LanguageSplit:
    trials = None
    if splits[0].trials is not None:
        trials = tuple(np.concatenate([s.trials[k] for s in splits]) for k in range(3))
    return _LanguageSplit(
        POOLED,
        np.concatenate([s.train_rows for s in splits]),
        np.concatenate([s.test_rows for s in splits]),
        trials,
    )


def _read(features, layer: int) -> np.ndarray:
    if hasattr(features, "read_layer"):
        return features.read_layer(layer)
    return np.asarray(features[layer], dtype=np.float32)


def probe_layers(
    features,
    manifest: pl.DataFrame,
    task: str,
    *,
    layers: str | Sequence[int] | None = None,
    probe: str = "logreg",
    backend: str = "plda",
    n: int | None = None,
    seed: int = 0,
    test_fraction: float = 0.25,
    done: np.ndarray | None = None,
    progress: Callable[[int], None] | None = None,
) -> LayerProbeResult:
    """Per-layer (and per-language + pooled) probe scores; see the module docstring.

    ``features``: a :class:`cltm.store.Cache` or an array [n_layers, n_rows, dim] aligned with ``manifest``;
    ``done`` (bool [n_rows]) marks usable rows (a cache's ``done`` by default). ``progress(k)`` is called
    after each unit of work (``n_units`` = layers x (languages + 1), or languages + 1 for ``wsum``).
    """
    if probe not in PROBES:
        raise ValueError(f"unknown probe {probe!r}; choose from {sorted(PROBES)}")
    if backend not in BACKENDS:
        raise ValueError(f"unknown backend {backend!r}; choose from {sorted(BACKENDS)}")
    n_layers = features.n_layers if hasattr(features, "n_layers") else int(np.shape(features)[0])
    n_rows = manifest.height
    if done is None:
        done = np.asarray(features.done, bool) if hasattr(features, "done") else np.ones(n_rows, bool)
    if len(done) != n_rows:
        raise ValueError(f"{len(done)} done flags for {n_rows} manifest rows")
    layer_list = parse_layers(layers, n_layers)
    splits, skipped, classes = _splits(
        manifest, task, n=n, seed=seed, test_fraction=test_fraction, usable=done
    )
    if not splits:
        reasons = "; ".join(f"{lang}: {why}" for lang, why in skipped) or "no languages"
        raise ValueError(f"nothing to probe for task {task!r}: {reasons}")
    units = splits + ([_pooled(splits)] if len(splits) > 1 else [])
    speaker_task = task == SPEAKER_TASK
    labels = None if speaker_task else manifest[task].cast(pl.String).to_numpy()
    speakers = manifest["speaker"].cast(pl.String).to_numpy() if speaker_task else None
    records: list[dict] = []
    weights: list[dict] = []

    def record(layer: int, unit: _LanguageSplit, metrics: dict) -> None:
        n_test = len(unit.trials[0]) if unit.trials is not None else len(unit.test_rows)
        records.append(
            {
                "task": task,
                "probe": backend if speaker_task else probe,
                "layer": layer,
                "language": unit.language,
                "seed": seed,
                "n_train": len(unit.train_rows),
                "n_test": n_test,
                **metrics,
            }
        )

    if probe == "wsum" and not speaker_task:
        stack = np.stack([_read(features, layer) for layer in layer_list], axis=1)  # [rows, layers, dim]
        for unit in units:
            model = PROBES[probe](seed).fit(stack[unit.train_rows], labels[unit.train_rows])
            pred = model.predict(stack[unit.test_rows])
            record(WSUM_LAYER, unit, classification_metrics(labels[unit.test_rows], pred))
            for layer, w in zip(layer_list, model.layer_weights_, strict=True):
                weights.append({"language": unit.language, "layer": layer, "weight": float(w)})
            if progress:
                progress(1)
    else:
        for layer in layer_list:
            X = _read(features, layer)
            for unit in units:
                if speaker_task:
                    model = BACKENDS[backend]().fit(X[unit.train_rows], speakers[unit.train_rows])
                    enroll, test, y = unit.trials
                    # transform only the rows the trials use, not the whole layer
                    rows, inverse = np.unique(np.concatenate([enroll, test]), return_inverse=True)
                    scores = model.score_trials(X[rows], inverse[: len(enroll)], inverse[len(enroll) :])
                    metrics = verification_metrics(y, scores)
                else:
                    model = PROBES[probe](seed).fit(X[unit.train_rows], labels[unit.train_rows])
                    metrics = classification_metrics(labels[unit.test_rows], model.predict(X[unit.test_rows]))
                record(layer, unit, metrics)
                if progress:
                    progress(1)
    return LayerProbeResult(pl.DataFrame(records), pl.DataFrame(weights) if weights else None, skipped)


def n_units(n_layers: int, n_languages: int, probe: str, speaker_task: bool) -> int:
    """How many progress steps :func:`probe_layers` will report."""
    per_layer = n_languages + (1 if n_languages > 1 else 0)
    return per_layer if (probe == "wsum" and not speaker_task) else per_layer * n_layers


def plot_layer_curve(result: LayerProbeResult, path: str | Path, *, title: str | None = None) -> Path:
    """Metric per layer, one line per language (pooled in bold black); wsum results as layer weights."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    path = Path(path)
    fig, ax = plt.subplots(figsize=(7, 4.2))
    if result.layer_weights is not None:
        data, metric, ylabel = result.layer_weights, "weight", "learned layer weight (wsum probe)"
    else:
        data, metric = result.scores, result.main_metric
        ylabel = {"eer": "EER (lower is better)", "f1": "macro-F1"}.get(metric, metric)
    for language in sorted(data["language"].unique().to_list(), key=lambda lang: (lang == POOLED, lang)):
        part = data.filter(pl.col("language") == language).sort("layer")
        pooled = language == POOLED
        ax.plot(
            part["layer"].to_numpy(),
            part[metric].to_numpy(),
            marker="o",
            markersize=3,
            linewidth=2.5 if pooled else 1.0,
            color="black" if pooled else None,
            alpha=1.0 if pooled else 0.7,
            label=language,
        )
    ax.set_xlabel("layer")
    ax.set_ylabel(ylabel)
    ax.grid(alpha=0.3)
    if title:
        ax.set_title(title)
    ax.legend(fontsize=7, ncol=2 if data["language"].n_unique() > 8 else 1, loc="best")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path

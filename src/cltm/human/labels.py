"""Label normalisation for listener responses: the same rules as the task's labels in the manifest.

Listener answers, manifest labels and model predictions go through one function, so ``Anger`` typed by a
listener and ``anger`` in a corpus table both become ``angry``: text is stripped and empty text is a missing
label (null, never a class) as for every task (``cltm.tasks.strip_labels``), then lower-cased; emotion words
are mapped to the shared emotion vocabulary of the corpus presets (anger -> angry, happiness -> happy,
sadness -> sad, ...), gender values with the manifest's gender rules. Words outside the vocabulary are kept
(lower-cased) so that a check against the task's classes can name them.
"""

from __future__ import annotations

import polars as pl

from cltm.corpus.manifest import GENDER_ALIASES
from cltm.corpus.presets import EMOTION_ALIASES as _PRESET_ALIASES
from cltm.corpus.presets import EMOTIONS as _PRESET_EMOTIONS
from cltm.tasks import strip_labels

__all__ = ["EMOTION_ALIASES", "normalise_label", "normalise_labels"]

#: Every emotion word listeners and corpora use -> the shared vocabulary (its own names map to themselves).
EMOTION_ALIASES: dict[str, str] = {**{e: e for e in _PRESET_EMOTIONS}, **_PRESET_ALIASES}

_ALIASES: dict[str, dict[str, str]] = {"emotion": EMOTION_ALIASES, "gender": GENDER_ALIASES}


def normalise_labels(task: str, values: pl.Series) -> pl.Series:
    """Task labels as the comparison uses them: stripped, lower-cased, mapped to the task's vocabulary.

    Empty text and nulls are missing labels (null), never a class. Values outside the vocabulary are kept
    (lower-cased), so a check against the task's classes can name them.
    """
    text = strip_labels(values).str.to_lowercase()
    aliases = _ALIASES.get(task)
    if aliases:
        text = text.replace(aliases)
    return text.alias(values.name)


def normalise_label(task: str, value: object) -> str | None:
    """:func:`normalise_labels` for one value."""
    text = None if value is None else str(value)
    return normalise_labels(task, pl.Series("label", [text], dtype=pl.String))[0]

"""Label normalisation for listener responses: the same rules as the task's labels in the manifest.

Listener answers and manifest labels go through one function, so ``Anger`` typed by a listener and ``anger``
written by a corpus importer both become ``angry``. The emotion vocabulary is the shared one of the corpus
presets (anger -> angry, happiness -> happy, sadness -> sad, ...); gender uses the manifest's gender rules.

Merge note: when the task registry (``cltm.tasks``) carries the label normalisation, :func:`normalise_labels`
becomes a call to it; this module is the one place the listener code takes label rules from.
"""

from __future__ import annotations

import polars as pl

from cltm.corpus.manifest import GENDER_ALIASES

__all__ = ["EMOTION_ALIASES", "normalise_label", "normalise_labels"]

#: Emotion words and common corpus codes -> the shared emotion vocabulary (adjectives, lower case).
EMOTION_ALIASES: dict[str, str] = {
    "anger": "angry",
    "angry": "angry",
    "ang": "angry",
    "happiness": "happy",
    "happy": "happy",
    "hap": "happy",
    "joy": "happy",
    "sadness": "sad",
    "sad": "sad",
    "neutral": "neutral",
    "neu": "neutral",
    "fear": "fearful",
    "fearful": "fearful",
    "disgust": "disgusted",
    "disgusted": "disgusted",
    "surprise": "surprised",
    "surprised": "surprised",
    "calm": "calm",
    "boredom": "bored",
    "bored": "bored",
}

_ALIASES: dict[str, dict[str, str]] = {"emotion": EMOTION_ALIASES, "gender": GENDER_ALIASES}
_SPACES = " \t\n\r\x0b\x0c"


def normalise_labels(task: str, values: pl.Series) -> pl.Series:
    """Task labels as the task compares them: stripped, lower-cased, mapped to the task's vocabulary.

    Empty text and nulls are missing labels (null), never a class. Values outside the vocabulary are kept
    (lower-cased), so a check against the task's classes can name them.
    """
    text = values.cast(pl.String).str.strip_chars(_SPACES).str.to_lowercase()
    text = pl.select(pl.when(text.str.len_chars() == 0).then(None).otherwise(text)).to_series()
    aliases = _ALIASES.get(task)
    if aliases:
        text = text.replace(aliases)
    return text.alias(values.name)


def normalise_label(task: str, value: object) -> str | None:
    """:func:`normalise_labels` for one value."""
    text = None if value is None else str(value)
    return normalise_labels(task, pl.Series("label", [text], dtype=pl.String))[0]

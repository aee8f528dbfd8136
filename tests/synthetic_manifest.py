"""The synthetic speaker-grid manifest several test modules build: languages x speakers x utterances.

Row ``(lang, s, u)`` has utt_id ``{lang}_{s}_{u}``, speaker ``{lang}_s{s}`` and gender female for odd ``s``;
``extra(lang, s, u)`` adds task columns (emotion labels, a float column, ...).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

import polars as pl


def speaker_grid(
    langs: Iterable[str],
    speakers: int,
    utts: int,
    extra: Callable[[str, int, int], dict[str, Any]] | None = None,
) -> pl.DataFrame:
    rows = []
    for lang in langs:
        for s in range(speakers):
            for u in range(utts):
                rows.append(
                    {
                        "utt_id": f"{lang}_{s}_{u}",
                        "path": "x.wav",
                        "language": lang,
                        "speaker": f"{lang}_s{s}",
                        "gender": "female" if s % 2 else "male",
                        **(extra(lang, s, u) if extra else {}),
                    }
                )
    return pl.DataFrame(rows)

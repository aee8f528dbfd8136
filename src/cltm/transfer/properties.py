"""Matrix properties of a CLTM (DESIGN §4.1), one row per (task, model, layer, probe).

All shares and means are over the off-diagonal cells that have a value (missing cells are left out, not zero):

* ``share_positive`` / ``share_negative`` / ``share_above_one``: fraction of cells > 0, < 0, > 1;
* ``reciprocity``: among unordered pairs {i, j} with both directions present, the fraction with both cells
  > 0;
* ``asymmetry``: ||C - C^T||_F / ||C||_F over the entries whose transpose is present too (diagonal included);
* ``deviation_from_ones``: ||C - 1||_F / n over the present entries (n = number of languages; the diagonal is
  1 and adds nothing), the distance from the language-agnostic all-ones matrix;
* receiver score of i = sum_j max(C_ij, 0) (row), donor score of j = sum_i max(C_ij, 0) (column), off-diagonal
  only; the per-language scores go to their own ``language_scores`` table, the top language of each into
  ``properties``;
* ``mean_within_family`` / ``mean_across_family``: mean off-diagonal cell over pairs of the same / different
  family, languages of unknown family left out (null when no family map is given).

With ``exclude_unstable`` the rows flagged unstable are left out of every statistic (their count is always
reported).
"""

from __future__ import annotations

import numpy as np
import polars as pl

from cltm.transfer.families import families_for
from cltm.transfer.stats import matrix_array
from cltm.transfer.tables import (
    LANGUAGE_SCORES_COLUMNS,
    MATRICES_COLUMNS,
    MATRIX_KEYS,
    PROPERTIES_COLUMNS,
    conform,
    empty_frame,
)


def _nanmean_or_none(values: np.ndarray) -> float | None:
    values = values[np.isfinite(values)]
    return float(values.mean()) if values.size else None


def share_positive(c: np.ndarray) -> float | None:
    off = c[~np.eye(len(c), dtype=bool)]
    off = off[np.isfinite(off)]
    return float((off > 0).mean()) if off.size else None


def share_negative(c: np.ndarray) -> float | None:
    off = c[~np.eye(len(c), dtype=bool)]
    off = off[np.isfinite(off)]
    return float((off < 0).mean()) if off.size else None


def share_above_one(c: np.ndarray) -> float | None:
    off = c[~np.eye(len(c), dtype=bool)]
    off = off[np.isfinite(off)]
    return float((off > 1).mean()) if off.size else None


def reciprocity(c: np.ndarray) -> float | None:
    upper = np.triu(np.ones_like(c, dtype=bool), k=1)
    both = upper & np.isfinite(c) & np.isfinite(c.T)
    if not both.any():
        return None
    return float(((c > 0) & (c.T > 0))[both].mean())


def asymmetry(c: np.ndarray) -> float | None:
    present = np.isfinite(c) & np.isfinite(c.T)
    denom = np.sqrt(np.sum(np.where(present, c, 0.0) ** 2))
    if denom == 0:
        return None
    return float(np.sqrt(np.sum(np.where(present, c - c.T, 0.0) ** 2)) / denom)


def deviation_from_ones(c: np.ndarray) -> float | None:
    present = np.isfinite(c)
    if not present.any():
        return None
    return float(np.sqrt(np.sum(np.where(present, c - 1.0, 0.0) ** 2)) / len(c))


def receiver_donor_scores(c: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Row sums (receiver) and column sums (donor) of the positive off-diagonal parts; NaN cells count as
    0."""
    pos = np.where(np.isfinite(c) & ~np.eye(len(c), dtype=bool), np.clip(c, 0.0, None), 0.0)
    return pos.sum(axis=1), pos.sum(axis=0)


def family_means(c: np.ndarray, families: list[str | None]) -> tuple[float | None, float | None]:
    """Mean off-diagonal cell within the same family and across families (unknown families left out)."""
    fam = np.array([f if f is not None else "" for f in families], dtype=object)
    known = fam != ""
    same = (fam[:, None] == fam[None, :]) & known[:, None] & known[None, :]
    diff = (fam[:, None] != fam[None, :]) & known[:, None] & known[None, :]
    off = ~np.eye(len(c), dtype=bool)
    return _nanmean_or_none(c[same & off]), _nanmean_or_none(c[diff & off])


def matrix_properties(
    matrices: pl.DataFrame,
    *,
    families: dict[str, str] | None = None,
    exclude_unstable: bool = False,
) -> tuple[pl.DataFrame, pl.DataFrame]:
    """Properties per (task, model, layer, probe) and per-language receiver/donor scores.

    ``families``: language -> family (e.g. ``load_families()``); None leaves the family columns null.
    Returns ``(properties, language_scores)`` with ``PROPERTIES_COLUMNS`` / ``LANGUAGE_SCORES_COLUMNS``.
    """
    if matrices.height == 0:
        return empty_frame(PROPERTIES_COLUMNS), empty_frame(LANGUAGE_SCORES_COLUMNS)
    prop_rows, score_rows = [], []
    for key, group in matrices.partition_by(list(MATRIX_KEYS), as_dict=True, maintain_order=True).items():
        keys = dict(zip(MATRIX_KEYS, key, strict=True))
        unstable_targets = set(group.filter(pl.col("unstable"))["target"].to_list())
        usable = group.filter(~pl.col("target").is_in(list(unstable_targets))) if exclude_unstable else group
        languages, c = matrix_array(group, "cltm")
        if exclude_unstable:
            for k, lang in enumerate(languages):
                if lang in unstable_targets:
                    c[k, :] = np.nan
        fam_map = (
            families_for(languages, families) if families is not None else {lang: None for lang in languages}
        )
        within, across = family_means(c, [fam_map[lang] for lang in languages]) if families else (None, None)
        recv, donor = receiver_donor_scores(c)
        off = c[~np.eye(len(c), dtype=bool)]
        singles = usable.filter(pl.col("target") == pl.col("donor"))["perf_single"].drop_nulls()
        prop_rows.append(
            {
                **keys,
                "metric": group["metric"][0],
                "n_languages": len(languages),
                "n_cells": int(np.isfinite(off).sum()),
                "n_unstable": int(
                    group.filter(pl.col("unstable") & (pl.col("target") != pl.col("donor"))).height
                ),
                "mean_perf_single": float(singles.mean()) if singles.len() else None,
                "mean_offdiag": _nanmean_or_none(off),
                "share_positive": share_positive(c),
                "share_negative": share_negative(c),
                "share_above_one": share_above_one(c),
                "reciprocity": reciprocity(c),
                "asymmetry": asymmetry(c),
                "deviation_from_ones": deviation_from_ones(c),
                "mean_within_family": within,
                "mean_across_family": across,
                "top_receiver": languages[int(np.argmax(recv))] if len(languages) else None,
                "top_donor": languages[int(np.argmax(donor))] if len(languages) else None,
            }
        )
        for k, lang in enumerate(languages):
            score_rows.append(
                {
                    **keys,
                    "language": lang,
                    "family": fam_map[lang],
                    "receiver_score": float(recv[k]),
                    "donor_score": float(donor[k]),
                }
            )
    schema_p = {**PROPERTIES_COLUMNS, "layer": MATRICES_COLUMNS["layer"]}
    props = pl.DataFrame(prop_rows, schema=schema_p)
    scores = pl.DataFrame(score_rows, schema=LANGUAGE_SCORES_COLUMNS)
    return conform(props, PROPERTIES_COLUMNS), conform(scores, LANGUAGE_SCORES_COLUMNS)

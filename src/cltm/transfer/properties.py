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
  family, languages of unknown family left out (null when no family map is given);
* ``n_stable`` / ``mean_offdiag_stable`` / ``median_offdiag_stable``: count, mean and median of the
  off-diagonal cells of stable target rows (what ``cltm matrix`` summarises: unstable ratios are noise).

At parity with the published reference implementation (``matrix_properties.py`` of the CLTM framework):

* ``mean_target_cosine``: mean over pairs of targets i != k of the cosine similarity of rows i and k (over
  the columns present in both rows, diagonal included);
* ``pca_explained_1..3``: explained-variance ratios of the first principal components of the rows (targets
  as samples, donors as features, columns centred); ``pca_components_80``: components needed for 80 %;
* ``spectral_radius``: max |eigenvalue| of C; ``condition_number``: largest / smallest singular value;
* ``receiver_entropy`` / ``receiver_gini`` (``donor_*``): entropy (nats) and Gini coefficient of the
  receiver (donor) scores across languages: how concentrated gaining (giving) is; the same two numbers per
  language, over its row (column), go to ``language_scores``;
* ``within_family_positive_share``: share of the positive off-diagonal mass sum max(C_ij, 0) that lies in
  same-family pairs (the reference counts the diagonal too; here, as for every property, it is left out;
  unknown families are never "same").

PCA, spectral radius and condition number need a complete matrix: they are computed on a square
core without missing cells (languages with the most missing cells are dropped first, a gap in a target row
counting double; the languages kept are ``n_complete_languages``), null below 2 languages. With
``exclude_unstable`` the rows flagged unstable are left out of every statistic (their count is always
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


def stable_offdiag(c: np.ndarray, unstable_rows: np.ndarray) -> np.ndarray:
    """The present off-diagonal cells of the rows not flagged unstable (flattened)."""
    keep = ~np.eye(len(c), dtype=bool) & ~np.asarray(unstable_rows, bool)[:, None] & np.isfinite(c)
    return c[keep]


def row_cosine_similarity(c: np.ndarray) -> np.ndarray:
    """Cosine similarity of every pair of rows over the columns present in both (NaN if a norm is 0)."""
    present = np.isfinite(c).astype(np.float64)
    values = np.where(present > 0, c, 0.0)
    squares = values**2
    dots = values @ values.T
    # each row's squared norm over the columns the other row has too
    norms = np.sqrt((squares @ present.T) * (present @ squares.T))
    shared = (present @ present.T) > 0
    ok = shared & (norms > 0)
    out = np.full(dots.shape, np.nan)
    out[ok] = np.clip(dots[ok] / norms[ok], -1.0, 1.0)
    return out


def mean_target_cosine(c: np.ndarray) -> float | None:
    """Mean cosine similarity over pairs of distinct target rows."""
    sim = row_cosine_similarity(c)
    return _nanmean_or_none(sim[~np.eye(len(c), dtype=bool)])


def complete_core(c: np.ndarray) -> np.ndarray:
    """Indices of a square core without missing cells (greedy: the language with most gaps goes first)."""
    keep = np.arange(len(c))
    while keep.size:
        sub = ~np.isfinite(c[np.ix_(keep, keep)])
        if not sub.any():
            break
        # a gap in a row (a target's runs) weighs more than one in a column, so ties drop the target
        worst = int(np.argmax(2 * sub.sum(axis=1) + sub.sum(axis=0)))
        keep = np.delete(keep, worst)
    return keep


def pca_explained_variance(c: np.ndarray) -> np.ndarray:
    """Explained-variance ratios of the principal components of the rows (columns centred), largest first."""
    centred = c - c.mean(axis=0, keepdims=True)
    singular = np.linalg.svd(centred, compute_uv=False)
    total = float(np.sum(singular**2))
    return singular**2 / total if total > 0 else np.zeros_like(singular)


def components_for(ratios: np.ndarray, share: float = 0.8) -> int | None:
    """The number of leading components whose explained variance reaches ``share``."""
    if ratios.size == 0 or ratios.sum() <= 0:
        return None
    return int(np.searchsorted(np.cumsum(ratios), share - 1e-12) + 1)


def spectral_radius(c: np.ndarray) -> float | None:
    return float(np.max(np.abs(np.linalg.eigvals(c)))) if c.size else None


def condition_number(c: np.ndarray) -> float | None:
    """s_max / s_min of C; None when C is singular (s_min is 0)."""
    if not c.size:
        return None
    singular = np.linalg.svd(c, compute_uv=False)
    return float(singular[0] / singular[-1]) if singular[-1] > 0 else None


def entropy(x: np.ndarray) -> float | None:
    """Shannon entropy (nats) of a non-negative vector normalised to sum 1; None when it sums to 0."""
    x = np.asarray(x, float)
    total = x.sum()
    if x.size == 0 or total <= 0:
        return None
    p = x[x > 0] / total
    return float(-np.sum(p * np.log(p)))


def gini(x: np.ndarray) -> float | None:
    """Gini coefficient of a non-negative vector (0 = equal, (n-1)/n = all on one); 0 for all zeros."""
    x = np.sort(np.asarray(x, float))
    n = x.size
    if n == 0:
        return None
    if x.sum() == 0:
        return 0.0
    return float(2.0 * np.sum(np.arange(1, n + 1) * x) / (n * x.sum()) - (n + 1) / n)


def within_family_positive_share(c: np.ndarray, families: list[str | None]) -> float | None:
    """Share of the positive off-diagonal mass that lies in pairs of one (known) family."""
    fam = np.array([f if f is not None else "" for f in families], dtype=object)
    same = (fam[:, None] == fam[None, :]) & (fam != "")[:, None]
    positive = np.where(np.isfinite(c) & ~np.eye(len(c), dtype=bool), np.clip(c, 0.0, None), 0.0)
    total = positive.sum()
    return float(positive[same].sum() / total) if total > 0 else None


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
    matrices = conform(matrices, MATRICES_COLUMNS, keep_extra=True)  # optional columns may be absent
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
        stable = stable_offdiag(c, np.array([lang in unstable_targets for lang in languages], dtype=bool))
        core = complete_core(c)
        square = c[np.ix_(core, core)] if core.size >= 2 else np.empty((0, 0))
        ratios = pca_explained_variance(square) if square.size else np.empty(0)
        positive = np.where(np.isfinite(c) & ~np.eye(len(c), dtype=bool), np.clip(c, 0.0, None), 0.0)
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
                "n_stable": int(stable.size),
                "mean_offdiag_stable": float(stable.mean()) if stable.size else None,
                "median_offdiag_stable": float(np.median(stable)) if stable.size else None,
                "mean_target_cosine": mean_target_cosine(c),
                "n_complete_languages": int(core.size),
                **{f"pca_explained_{k + 1}": float(ratios[k]) if k < ratios.size else None for k in range(3)},
                "pca_components_80": components_for(ratios),
                "spectral_radius": spectral_radius(square) if square.size else None,
                "condition_number": condition_number(square) if square.size else None,
                "receiver_entropy": entropy(recv),
                "receiver_gini": gini(recv),
                "donor_entropy": entropy(donor),
                "donor_gini": gini(donor),
                "within_family_positive_share": (
                    within_family_positive_share(c, [fam_map[lang] for lang in languages])
                    if families
                    else None
                ),
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
                    "receiver_entropy": entropy(positive[k, :]),
                    "receiver_gini": gini(np.delete(positive[k, :], k)),
                    "donor_entropy": entropy(positive[:, k]),
                    "donor_gini": gini(np.delete(positive[:, k], k)),
                }
            )
    schema_p = {**PROPERTIES_COLUMNS, "layer": MATRICES_COLUMNS["layer"]}
    props = pl.DataFrame(prop_rows, schema=schema_p)
    scores = pl.DataFrame(score_rows, schema={**LANGUAGE_SCORES_COLUMNS, "layer": MATRICES_COLUMNS["layer"]})
    return conform(props, PROPERTIES_COLUMNS), conform(scores, LANGUAGE_SCORES_COLUMNS)

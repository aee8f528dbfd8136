"""CLTM statistics: per-seed runs -> transfer matrices with delta-method standard errors (DESIGN §4.1).

For target i and donor j, with Perf higher-is-better and means over seeds:

* ``cltm = (Perf(i+j) - Perf(i)) / (Perf(i+i) - Perf(i))`` (rows targets, columns donors; the diagonal is 1
  with SE 0);
* ``m = (Perf(i+j) - Perf(i)) / Perf(i)`` (unnormalised; on the diagonal ``(Perf(i+i) - Perf(i)) / Perf(i)``);
* standard error by the delta method with var(mean) = between-seed variance (ddof=1) / S, per condition:
  Var(num) = v_ij + v_i, Var(den) = v_ii + v_i, Cov(num, den) ~= v_i, Var(R) ~= Var(num)/den^2 + num^2
  Var(den)/den^4 - 2 num Cov/den^3;
* ``p_positive = Phi(cltm / cltm_se)`` (normal approximation);
* ``unstable``: the own-data gain den = Perf(i+i) - Perf(i) is not clearly positive, i.e. ``not (den > max(z *
  SE(den), min_gain))`` with SE(den) = sqrt(Var(den)), z = 2 and min_gain = 1e-3 by default. With a single
  seed SE(den) is undefined and only the ``min_gain`` floor applies. The flag is per target row (the diagonal
  carries it too) because it is a property of the denominator.
* ``perf_zero_shot``: mean Perf(j -> i) of the donor-only model tested on the target; on the diagonal it is
  Perf(i) (a model trained on N of i and tested on i is the ``single`` condition).

Lower-is-better metrics (EER, minDCF) enter as Perf = 1 - value, so that a positive cell always means help.
"""

from __future__ import annotations

import numpy as np
import polars as pl
from scipy.stats import norm

from cltm.transfer.tables import (
    AGGREGATE_COLUMNS,
    LOWER_IS_BETTER,
    MATRICES_COLUMNS,
    MATRIX_KEYS,
    METRIC_COLUMNS,
    SKIPPED_COLUMNS,
    conform,
    empty_frame,
    validate_runs,
)

DEFAULT_METRIC_BY_TASK = {"speaker": "auc"}


class MetricError(ValueError):
    """The metric asked for (or the task's default) has no values in the runs table."""


DEFAULT_METRIC = "f1"


def default_metric(task: str | None, available: list[str] | None = None) -> str:
    """The metric a task's matrix uses by default: AUC for speaker verification, macro-F1 otherwise.

    When ``available`` (metric columns that hold values) is given and the default is not among them, the first
    available metric of ``METRIC_COLUMNS`` is used (so a WER-only reference CSV still gives a matrix).
    """
    choice = DEFAULT_METRIC_BY_TASK.get(task or "", DEFAULT_METRIC)
    if available is not None and choice not in available:
        ordered = [m for m in METRIC_COLUMNS if m in available]
        if ordered:
            return ordered[0]
    return choice


def delta_method_se(
    perf_single: np.ndarray,
    perf_self: np.ndarray,
    perf_pair: np.ndarray,
    var_single: np.ndarray,
    var_self: np.ndarray,
    var_pair: np.ndarray,
    n_single: np.ndarray,
    n_self: np.ndarray,
    n_pair: np.ndarray,
) -> np.ndarray:
    """Delta-method SE of (pair - single) / (self - single) from per-condition means, variances and seed
    counts.

    ``var_*`` are between-seed variances (ddof=1) of the per-seed values; the variance of each mean is var
    / n.
    """
    v_i = np.asarray(var_single, float) / np.asarray(n_single, float)
    v_ii = np.asarray(var_self, float) / np.asarray(n_self, float)
    v_ij = np.asarray(var_pair, float) / np.asarray(n_pair, float)
    num = np.asarray(perf_pair, float) - np.asarray(perf_single, float)
    den = np.asarray(perf_self, float) - np.asarray(perf_single, float)
    var_num = v_ij + v_i
    var_den = v_ii + v_i
    cov = v_i
    with np.errstate(divide="ignore", invalid="ignore"):
        var_r = var_num / den**2 + num**2 * var_den / den**4 - 2.0 * num * cov / den**3
    # A negative Var(R) can only come from rounding (the quadratic form is PSD); clip it.
    return np.sqrt(np.clip(var_r, 0.0, None))


def p_positive(cltm: np.ndarray, se: np.ndarray) -> np.ndarray:
    """P(cell > 0) = Phi(cltm / se); with se == 0 it is 1, 0 or 0.5 by the sign of the cell."""
    cltm = np.asarray(cltm, float)
    se = np.asarray(se, float)
    with np.errstate(divide="ignore", invalid="ignore"):
        out = norm.cdf(cltm / se)
    zero = se == 0
    out = np.where(zero, np.where(cltm > 0, 1.0, np.where(cltm < 0, 0.0, 0.5)), out)
    return np.where(np.isnan(cltm), np.nan, out)


def unstable_gain(
    den: np.ndarray, var_den_of_mean: np.ndarray, *, z: float = 2.0, min_gain: float = 1e-3
) -> np.ndarray:
    """True where the own-data gain ``den`` is not clearly positive: not (den > max(z*SE(den), min_gain))."""
    se_den = np.sqrt(np.asarray(var_den_of_mean, float))
    threshold = np.fmax(z * se_den, min_gain)  # fmax: a NaN SE (one seed) leaves the floor
    den = np.asarray(den, float)
    return ~(den > threshold)


def condition_summary(runs: pl.DataFrame, metric: str | None = None) -> pl.DataFrame:
    """Per (task, model, layer, probe, condition, target, donor): metric name, mean Perf, variance, seed
    count.

    Per-seed runs are aggregated here (variance ddof=1 over the seeds that have a value); aggregated runs
    (with ``seed_count``) pass through. Perf is higher-is-better (lower-is-better metrics become 1 - value).
    """
    out_schema = {
        **{k: MATRICES_COLUMNS[k] for k in MATRIX_KEYS},
        "condition": pl.String(),
        "target": pl.String(),
        "donor": pl.String(),
        "metric": pl.String(),
        "mean": pl.Float64(),
        "var": pl.Float64(),
        "count": pl.Int64(),
    }
    if runs.height == 0:
        return empty_frame(out_schema)
    aggregated = "seed_count" in runs.columns
    if aggregated:
        runs = conform(
            runs, {**{c: runs.schema[c] for c in runs.columns}, **AGGREGATE_COLUMNS}, keep_extra=True
        )
    pieces = []
    for key, group in runs.partition_by(list(MATRIX_KEYS), as_dict=True, maintain_order=True).items():
        available = [m for m in METRIC_COLUMNS if m in group.columns and group[m].null_count() < group.height]
        chosen = metric or default_metric(key[0], available)
        if chosen not in available:
            # an all-null column would give an all-null matrix: refuse instead
            what = "/".join("–" if k is None else str(k) for k in key)
            raise MetricError(
                f"metric {chosen!r} has no values in the runs of {what}; metrics with values: "
                f"{', '.join(available) or 'none'}" + (" (choose one with --metric)" if available else "")
            )
        value = pl.col(chosen).cast(pl.Float64)
        if chosen in LOWER_IS_BETTER:
            value = 1.0 - value
        if aggregated:
            summary = group.select(
                "condition",
                "target",
                "donor",
                value.alias("mean"),
                pl.col(f"{chosen}_var").cast(pl.Float64).alias("var"),
                pl.col("seed_count").cast(pl.Int64).alias("count"),
            )
        else:
            summary = (
                group.filter(pl.col(chosen).is_not_null() & pl.col(chosen).is_not_nan())
                .group_by("condition", "target", "donor", maintain_order=True)
                .agg(
                    value.mean().alias("mean"),
                    value.var(ddof=1).alias("var"),
                    value.count().cast(pl.Int64).alias("count"),
                )
            )
        summary = summary.with_columns(
            *[
                pl.lit(k, dtype=MATRICES_COLUMNS[name]).alias(name)
                for name, k in zip(MATRIX_KEYS, key, strict=True)
            ],
            pl.lit(chosen).alias("metric"),
        )
        pieces.append(summary.select(list(out_schema)))
    return pl.concat(pieces).cast(out_schema) if pieces else empty_frame(out_schema)


def matrix_from_runs(
    runs: pl.DataFrame, metric: str | None = None, *, z: float = 2.0, min_gain: float = 1e-3
) -> pl.DataFrame:
    """Matrices (one row per task, model, layer, probe, target, donor) from per-seed or aggregated runs.

    See the module docstring for every definition. A target needs its ``single`` and ``self`` runs; a cell
    needs the ``pair`` run as well (cells without one are left out, not filled; :func:`incomplete_targets`
    lists the targets left out). Duplicated condition rows, non-positive seed counts and negative variances
    raise ``RunsTableError``; a metric without values raises ``MetricError``. Columns: ``MATRICES_COLUMNS``.
    """
    if runs.height:
        validate_runs(runs, "runs table", require_conditions=False)
    summary = condition_summary(runs, metric)
    if summary.height == 0:
        return empty_frame(MATRICES_COLUMNS)
    rows: list[dict] = []
    for key, group in summary.partition_by(list(MATRIX_KEYS), as_dict=True, maintain_order=True).items():
        stats = {
            (c, t, d): (mu, v, n)
            for c, t, d, mu, v, n in group.select(
                "condition", "target", "donor", "mean", "var", "count"
            ).iter_rows()
        }
        chosen = group["metric"][0]
        donors_of: dict[str, set] = {}
        for c, t, d in stats:
            if c == "pair" and d != t:
                donors_of.setdefault(t, set()).add(d)
        targets = sorted(
            {t for (c, t, _d) in stats if c == "single"} & {t for (c, t, _d) in stats if c == "self"}
        )
        for target in targets:
            single = stats[("single", target, target)] if ("single", target, target) in stats else None
            own = stats[("self", target, target)] if ("self", target, target) in stats else None
            if single is None or own is None:
                continue
            donors = sorted(donors_of.get(target, ()))
            cell_rows = [(target, own, None)] + [
                (d, stats[("pair", target, d)], stats.get(("zero_shot", target, d))) for d in donors
            ]
            for donor, pair, zero in cell_rows:
                rows.append(
                    {
                        **dict(zip(MATRIX_KEYS, key, strict=True)),
                        "metric": chosen,
                        "target": target,
                        "donor": donor,
                        "diag": donor == target,
                        "mu_i": single[0],
                        "v_i": single[1],
                        "n_i": single[2],
                        "mu_ii": own[0],
                        "v_ii": own[1],
                        "n_ii": own[2],
                        "mu_ij": pair[0],
                        "v_ij": pair[1],
                        "n_ij": pair[2],
                        "zero": single[0] if donor == target else (zero[0] if zero else None),
                    }
                )
    if not rows:
        return empty_frame(MATRICES_COLUMNS)
    cells = pl.DataFrame(rows, infer_schema_length=None)

    def col(name: str) -> np.ndarray:
        return cells[name].cast(pl.Float64).fill_null(np.nan).to_numpy()

    mu_i, mu_ii, mu_ij = col("mu_i"), col("mu_ii"), col("mu_ij")
    v_i, v_ii, v_ij = col("v_i"), col("v_ii"), col("v_ij")
    n_i, n_ii, n_ij = col("n_i"), col("n_ii"), col("n_ij")
    diag = cells["diag"].to_numpy()
    num = mu_ij - mu_i
    den = mu_ii - mu_i
    with np.errstate(divide="ignore", invalid="ignore"):
        cltm = np.where(diag, 1.0, num / den)
        m = num / mu_i
    se = np.where(diag, 0.0, delta_method_se(mu_i, mu_ii, mu_ij, v_i, v_ii, v_ij, n_i, n_ii, n_ij))
    cltm = np.where(np.isfinite(cltm), cltm, np.nan)
    se = np.where(np.isfinite(cltm), se, np.nan)
    unstable = unstable_gain(den, v_ii / n_ii + v_i / n_i, z=z, min_gain=min_gain)
    out = cells.select(*MATRIX_KEYS, "metric", "target", "donor").with_columns(
        pl.Series("cltm", cltm).fill_nan(None),
        pl.Series("cltm_se", se).fill_nan(None),
        pl.Series("m", np.where(np.isfinite(m), m, np.nan)).fill_nan(None),
        pl.Series("p_positive", p_positive(cltm, se)).fill_nan(None),
        pl.Series("unstable", unstable),
        pl.Series("perf_single", mu_i).fill_nan(None),
        pl.Series("perf_self", mu_ii).fill_nan(None),
        pl.Series("perf_pair", mu_ij).fill_nan(None),
        cells["zero"].cast(pl.Float64).alias("perf_zero_shot"),
        pl.Series("n_seeds", np.nan_to_num(np.fmin(np.fmin(n_i, n_ii), n_ij)).astype(np.int64)),
    )
    return conform(out, MATRICES_COLUMNS)


def incomplete_targets(runs: pl.DataFrame) -> pl.DataFrame:
    """Targets with ``pair``/``zero_shot`` runs but no ``single`` or ``self`` run (no matrix row), and why.

    Columns ``SKIPPED_COLUMNS`` (language, reason), ready to be added to a result's ``skipped`` table.
    """
    rows = []
    if runs.height:
        per_target = runs.group_by([*MATRIX_KEYS, "target"], maintain_order=True).agg(
            pl.col("condition").unique()
        )
        for *key, target, present in per_target.iter_rows():
            lacking = [c for c in ("single", "self") if c not in present]
            if lacking and set(present) & {"pair", "zero_shot"}:
                where = "/".join("–" if k is None else str(k) for k in key)
                rows.append({"language": target, "reason": f"no {' or '.join(lacking)} runs ({where})"})
    return pl.DataFrame(rows, schema=SKIPPED_COLUMNS)


def matrix_array(matrices: pl.DataFrame, value: str = "cltm") -> tuple[list[str], np.ndarray]:
    """One matrix (a single task/model/layer/probe) as (languages, square array) with NaN for missing cells.

    Languages are the sorted union of targets and donors.
    """
    languages = sorted(set(matrices["target"].to_list()) | set(matrices["donor"].to_list()))
    index = {lang: k for k, lang in enumerate(languages)}
    arr = np.full((len(languages), len(languages)), np.nan)
    for t, d, v in matrices.select("target", "donor", value).iter_rows():
        arr[index[t], index[d]] = np.nan if v is None else v
    return languages, arr

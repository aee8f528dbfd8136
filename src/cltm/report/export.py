"""CSV and LaTeX exports of one matrix, in the heatmap's (family) order."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import polars as pl

from cltm.report.heatmap import HeatmapData

_LATEX_SPECIALS = {
    "\\": r"\textbackslash{}",
    "&": r"\&",
    "%": r"\%",
    "$": r"\$",
    "#": r"\#",
    "_": r"\_",
    "{": r"\{",
    "}": r"\}",
    "~": r"\textasciitilde{}",
    "^": r"\textasciicircum{}",
}


def matrix_wide(data: HeatmapData, *, values: str = "cltm") -> pl.DataFrame:
    """Targets as rows (first column ``target``), donors as columns; ``values`` = cltm, cltm_se or p_positive.

    The diagonal is 1 by definition and written as such when the table has no row for it.
    """
    array = {"cltm": data.values, "cltm_se": data.se, "p_positive": data.p_positive}[values].copy()
    if values == "cltm":
        array[data.diagonal & np.isnan(array)] = 1.0
    columns = {"target": data.rows}
    for j, donor in enumerate(data.cols):
        columns[donor] = [None if np.isnan(v) else float(v) for v in array[:, j]]
    return pl.DataFrame(columns, schema={"target": pl.Utf8} | {d: pl.Float64 for d in data.cols})


def heatmap_marks(data: HeatmapData) -> pl.DataFrame:
    """One row per cell with what the heatmap shows: value, SE, P(>0) and the marks it carries.

    ``clipped`` is +1 / -1 / 0; the boolean columns are ``unstable`` (hatched), ``faded`` (sign not decisive),
    ``diagonal`` and ``missing``. Written beside each heatmap so that a figure can be checked on data.
    """
    i, j = np.indices(data.values.shape)
    i, j = i.ravel(), j.ravel()

    def column(array: np.ndarray) -> list:
        return [None if np.isnan(v) else float(v) for v in array[i, j]]

    return pl.DataFrame(
        {
            "target": [data.rows[a] for a in i],
            "donor": [data.cols[b] for b in j],
            "cltm": column(data.values),
            "cltm_se": column(data.se),
            "p_positive": column(data.p_positive),
            "clipped": data.clipped[i, j].astype(np.int64),
            "unstable": data.unstable[i, j],
            "faded": data.faded[i, j],
            "diagonal": data.diagonal[i, j],
            "missing": data.missing[i, j],
        },
        schema_overrides={"cltm": pl.Float64, "cltm_se": pl.Float64, "p_positive": pl.Float64},
    )


def write_matrix_csv(data: HeatmapData, path: str | Path) -> Path:
    """Write the wide CLTM matrix as CSV (empty field = no value)."""
    path = Path(path)
    matrix_wide(data).write_csv(path, float_precision=6)
    return path


def latex_escape(text: str) -> str:
    return "".join(_LATEX_SPECIALS.get(ch, ch) for ch in str(text))


def matrix_latex(data: HeatmapData, *, decimals: int = 2) -> str:
    """A booktabs ``tabular`` of the matrix; unstable cells get a dagger, values beyond ±clip are bold."""
    header = " & ".join(r"\rotatebox{90}{" + latex_escape(c) + "}" for c in data.cols)
    lines = [
        f"% CLTM, {latex_escape(data.title)}. Rows: target language i; columns: donor language j.",
        r"% Needs \usepackage{booktabs,graphicx}. $\dagger$ = unstable (own-data gain within noise);",
        f"% bold = |CLTM| > {data.clip:g}; -- = no value.",
        r"\begin{tabular}{l" + "r" * len(data.cols) + "}",
        r"\toprule",
        r"target $\backslash$ donor & " + header + r" \\",
        r"\midrule",
    ]
    for i, target in enumerate(data.rows):
        cells = []
        for j in range(len(data.cols)):
            value = data.values[i, j]
            if data.diagonal[i, j]:
                cells.append("1")
            elif np.isnan(value):
                cells.append("--")
            else:
                text = f"{value:.{decimals}f}"
                if data.clipped[i, j]:
                    text = r"\textbf{" + text + "}"
                if data.unstable[i, j]:
                    text += r"$^\dagger$"
                cells.append(text)
        lines.append(latex_escape(target) + " & " + " & ".join(cells) + r" \\")
    lines += [r"\bottomrule", r"\end{tabular}", ""]
    return "\n".join(lines)


def write_matrix_latex(data: HeatmapData, path: str | Path) -> Path:
    path = Path(path)
    path.write_text(matrix_latex(data), encoding="utf-8")
    return path

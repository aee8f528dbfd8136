"""Heatmaps, layer curves, the HTML report and table exports.

``build_report(results_dir, out_dir, ReportSettings(...))`` is the entry point (``cltm report`` calls it); the
pieces are usable on their own: :func:`heatmap_data` decides what a heatmap shows (clipped / unstable / faded
cells, annotation size) and :func:`draw_heatmap` draws it. The report reads the engine's results object
(:class:`cltm.transfer.tables.MatrixResult`) through :func:`load_results` and never recomputes a property.
"""

from cltm.report.build import ReportSettings, build_report, normalise_formats
from cltm.report.export import heatmap_marks, matrix_latex, matrix_wide, write_matrix_csv, write_matrix_latex
from cltm.report.heatmap import HeatmapData, annotation_layout, draw_heatmap, heatmap_data
from cltm.report.results import ReportInputError, load_results, resolve_families

__all__ = [
    "HeatmapData",
    "ReportInputError",
    "ReportSettings",
    "annotation_layout",
    "build_report",
    "draw_heatmap",
    "heatmap_data",
    "heatmap_marks",
    "matrix_latex",
    "matrix_wide",
    "normalise_formats",
    "load_results",
    "resolve_families",
    "write_matrix_csv",
    "write_matrix_latex",
]

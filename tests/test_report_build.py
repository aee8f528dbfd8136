"""build_report / `cltm report` end to end on engine-made results: files, links, exports, fine-tune."""

from __future__ import annotations

import csv
import math
import re
from html.parser import HTMLParser
from pathlib import Path
from urllib.parse import unquote, urlparse

import numpy as np
import polars as pl
import pytest
from typer.testing import CliRunner

from cltm.cli import app
from cltm.report import build_report
from cltm.transfer.stats import matrix_from_runs
from report_fixtures import (
    FAMILIES,
    engine_result,
    family,
    synthetic_runs,
    write_engine_results,
    write_finetune_dir,
)


class _Refs(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.images: list[str] = []
        self.links: list[str] = []
        self.ids: set[str] = set()

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        if "id" in attrs:
            self.ids.add(attrs["id"])
        if tag == "img":
            self.images.append(attrs["src"])
        if tag == "a":
            self.links.append(attrs["href"])


def _refs(index: Path) -> _Refs:
    parser = _Refs()
    parser.feed(index.read_text(encoding="utf-8"))
    return parser


def _assert_all_resolve(index: Path) -> _Refs:
    refs = _refs(index)
    assert refs.images, "the page shows no image"
    for ref in refs.images + refs.links:
        parsed = urlparse(ref)
        if ref.startswith("#"):
            assert ref[1:] in refs.ids, f"dangling anchor {ref}"
            continue
        assert not parsed.scheme and not parsed.netloc, f"{ref}: the page must only use relative files"
        assert not Path(parsed.path).is_absolute()
        target = (index.parent / unquote(parsed.path)).resolve()
        assert target.is_file() and target.stat().st_size > 0, f"{ref} does not resolve"
        assert index.parent.resolve() in target.parents, f"{ref} points outside the report directory"
    return refs


@pytest.fixture(scope="module")
def six(tmp_path_factory):
    root = tmp_path_factory.mktemp("six")
    runs, confusion = synthetic_runs(
        6, layers=[0, 12], tasks=("gender", "speaker"), seeds=2, finetune_targets=4, seed=3
    )
    # probe and fine-tune runs in one set, as `cltm matrix --from-runs` of both would write it
    results = engine_result(runs, confusion).write(root / "results")
    index = build_report(results, root / "report", families=FAMILIES)
    return results, index


def test_six_language_report_files_and_links(six):
    results, index = six
    assert index.name == "index.html" and index.is_file()
    refs = _assert_all_resolve(index)
    html = index.read_text()
    matrices = pl.read_parquet(results / "matrices.parquet")
    probe = matrices.filter(pl.col("probe") == "logistic")
    for task in ("gender", "speaker"):
        assert f'id="task-{task}"' in html
        for layer in (0, 12):
            stem = f"{task}-tiny-hubert-logistic_L{layer}"
            assert (index.parent / "figures" / f"{stem}.png").is_file()
            for ext in (".csv", ".tex", "_se.csv"):
                name = f"tables/{stem}{ext}"
                assert name in refs.links, f"{name} not linked"
    assert all(src.endswith(".png") for src in refs.images)
    # configuration from the runs table
    runs = pl.read_parquet(results / "runs.parquet")
    for config_hash in runs.filter(pl.col("source") == "probe")["config_hash"].unique():
        assert config_hash in html
    assert "best layer" in html and "Spearman" in html
    assert (
        probe.height and (index.parent / "figures" / "gender-tiny-hubert-logistic_layer_curves.png").is_file()
    )
    assert (index.parent / "figures" / "gender-tiny-hubert-logistic_layers_grid.png").is_file()
    assert (index.parent / "figures" / "gender-tiny-hubert-logistic_donor_receiver.png").is_file()


def test_csv_and_latex_exports_hold_the_matrix(six):
    results, index = six
    matrices = pl.read_parquet(results / "matrices.parquet")
    cells = {
        (t, d): (v, u)
        for t, d, v, u in matrices.filter(
            (pl.col("task") == "speaker") & (pl.col("layer") == 12) & (pl.col("probe") == "logistic")
        )
        .select("target", "donor", "cltm", "unstable")
        .iter_rows()
    }
    with open(index.parent / "tables" / "speaker-tiny-hubert-logistic_L12.csv", newline="") as handle:
        rows = list(csv.reader(handle))
    header, body = rows[0], rows[1:]
    assert header[0] == "target"
    donors = header[1:]
    assert sorted(donors) == sorted({d for _, d in cells})
    assert len(body) == len({t for t, _ in cells})
    for row in body:
        for donor, text in zip(donors, row[1:], strict=True):
            assert math.isclose(float(text), cells[(row[0], donor)][0], rel_tol=1e-5, abs_tol=1e-6)
    tex = (index.parent / "tables" / "speaker-tiny-hubert-logistic_L12.tex").read_text()
    assert tex.count(r"$^\dagger$") == sum(u for (t, d), (_, u) in cells.items() if t != d)
    assert r"\begin{tabular}" in tex and r"\end{tabular}" in tex
    assert tex.count(r"\\") - 1 == len(body) + 0  # one header row + one row per target ("\\" per row)


def test_marks_written_beside_each_heatmap_match_the_matrix(six):
    results, index = six
    matrices = pl.read_parquet(results / "matrices.parquet").filter(
        (pl.col("task") == "gender") & (pl.col("layer") == 0) & (pl.col("probe") == "logistic")
    )
    marks = pl.read_csv(index.parent / "tables" / "gender-tiny-hubert-logistic_L0_marks.csv")
    assert marks.height == matrices.height
    shown = {(r["target"], r["donor"]): r for r in marks.iter_rows(named=True)}
    for target, donor, value, p_pos, unstable in matrices.select(
        "target", "donor", "cltm", "p_positive", "unstable"
    ).iter_rows():
        row = shown[(target, donor)]
        diagonal = target == donor
        assert row["diagonal"] == diagonal
        assert row["clipped"] == (0 if diagonal else (1 if value > 1.5 else (-1 if value < -1.5 else 0)))
        assert row["unstable"] == (unstable and not diagonal)
        assert row["faded"] == (not diagonal and 0.1 < p_pos < 0.9)
    assert marks["clipped"].abs().sum() > 0 and marks["unstable"].sum() > 0 and marks["faded"].sum() > 0


def test_finetune_section_spearman_matches_a_rank_reference(six):
    results, index = six
    table = pl.read_csv(index.parent / "tables" / "finetune_spearman.csv")
    matrices = pl.read_parquet(results / "matrices.parquet")
    ft = matrices.filter(pl.col("probe") == "finetune")
    assert table.height == 2 * 2  # 2 tasks x 2 probe layers
    for task, layer, rho in table.select("task", "layer", "spearman").iter_rows():
        probe = matrices.filter(
            (pl.col("task") == task) & (pl.col("layer") == layer) & (pl.col("probe") == "logistic")
        )
        ft_cells = {
            (t, d): v
            for t, d, v in ft.filter(pl.col("task") == task).select("target", "donor", "cltm").iter_rows()
            if t != d
        }
        x, y = [], []
        for t, d, v in probe.select("target", "donor", "cltm").iter_rows():
            if (t, d) in ft_cells:
                x.append(v)
                y.append(ft_cells[(t, d)])

        def ranks(values):  # no ties in continuous synthetic values
            order = sorted(range(len(values)), key=values.__getitem__)
            out = [0.0] * len(values)
            for rank, k in enumerate(order):
                out[k] = float(rank)
            return np.array(out)

        expected = np.corrcoef(ranks(x), ranks(y))[0, 1]
        assert math.isclose(rho, expected, abs_tol=1e-6)  # the CSV keeps 6 decimals


def test_fifty_four_languages_render(tmp_path):
    results = write_engine_results(tmp_path / "r", 54, layers=[12], seeds=2, seed=1)
    index = build_report(results, tmp_path / "out", families=FAMILIES)
    _assert_all_resolve(index)
    with open(tmp_path / "out" / "tables" / "gender-tiny-hubert-logistic_L12.csv") as handle:
        header = next(csv.reader(handle))
    assert len(header) == 55
    # family order: consecutive donors share a family block (each family appears in one run)
    families = [family(lang) for lang in header[1:]]
    runs = [f for k, f in enumerate(families) if k == 0 or families[k - 1] != f]
    assert len(runs) == len(set(families))


def test_engine_tables_and_a_finetune_runs_directory(tmp_path):
    """Results as the CLTM engine writes them; fine-tune runs only (as `cltm finetune` writes) beside them."""
    runs, confusion = synthetic_runs(5, layers=[1, 2], seeds=3, finetune_targets=3, seed=4)
    probe_runs = runs.filter(pl.col("source") == "probe")
    skipped = pl.DataFrame({"language": ["xx-YY"], "reason": ["only 3 speakers, 4 needed"]})
    engine = engine_result(probe_runs, confusion, skipped=skipped)
    matrices = engine.matrices
    results = engine.write(tmp_path / "results")
    finetune_dir = write_finetune_dir(tmp_path / "ft", runs)
    index = build_report(results, tmp_path / "report", families=FAMILIES, finetune_dirs=[finetune_dir])
    _assert_all_resolve(index)
    html = index.read_text()
    assert "(fine-tune)" in html and "probe vs fine-tune" in html
    assert "xx-YY" in html and "only 3 speakers, 4 needed" in html  # left-out languages are shown
    assert "language_scores.parquet" in html  # donor/receiver scores taken from the engine's table
    # the probe sweep itself given as --finetune would be compared with itself: refused, naming the fix
    from cltm.report import ReportInputError

    with pytest.raises(ReportInputError, match="no fine-tuned runs.*--finetune takes"):
        build_report(results, tmp_path / "again", families=FAMILIES, finetune_dirs=[results])
    spearman = pl.read_csv(tmp_path / "report" / "tables" / "finetune_spearman.csv")
    assert sorted(spearman["layer"].to_list()) == [1, 2]
    # zero-shot view: the CSV holds the engine's perf_zero_shot (diagonal: perf_single) at the best layer
    zero_files = sorted((tmp_path / "report" / "tables").glob("*-logistic_zero_shot.csv"))
    assert len(zero_files) == 1 and "Zero-shot" in html
    zero = pl.read_csv(zero_files[0])
    best = int(re.search(r"Heatmap at layer (\d+) \(best layer\)", html).group(1))
    at_best = matrices.filter(pl.col("layer") == best)
    for target, donor, value, own in at_best.select(
        "target", "donor", "perf_zero_shot", "perf_single"
    ).iter_rows():
        shown = zero.filter(pl.col("target") == target)[donor][0]
        assert math.isclose(shown, own if target == donor else value, abs_tol=1e-6)
    # the engine's properties table is shown (one of its columns)
    assert "deviation_from_ones" in html and "spectral_radius" in html
    # confusion matrices per language and for the zero-shot pairs, at the best layer, from confusion.parquet
    assert "Confusion matrices per language" in html and "Confusion matrices zero-shot pairs" in html
    shown = pl.read_csv(next((tmp_path / "report" / "tables").glob("*-logistic_confusion_single.csv")))
    expected = (
        confusion.filter((pl.col("layer") == best) & (pl.col("condition") == "single"))
        .group_by("target", "true", "pred")
        .agg(pl.col("count").sum())
    )
    for target, true, pred, count in expected.iter_rows():
        row = shown.filter((pl.col("target") == target) & (pl.col("true") == true) & (pl.col("pred") == pred))
        assert row["count"].to_list() == [count]
    zero = pl.read_csv(next((tmp_path / "report" / "tables").glob("*-logistic_confusion_zero_shot.csv")))
    assert zero.select("target", "donor").unique().height == 5 * 4  # every ordered pair


def test_svg_is_shown_when_asked_first(tmp_path):
    results = write_engine_results(tmp_path / "r", 3, layers=[5], seeds=2)
    index = build_report(results, tmp_path / "out", formats="svg,png")
    refs = _assert_all_resolve(index)
    assert all(src.endswith(".svg") for src in refs.images)
    assert any(link.endswith(".png") for link in refs.links)


def test_layers_selection_and_pdf_only(tmp_path):
    results = write_engine_results(tmp_path / "r", 3, layers=[0, 1, 2, 3], seeds=2)
    index = build_report(results, tmp_path / "out", formats="pdf", layers="1,-1", families=FAMILIES)
    refs = _assert_all_resolve(index)
    figures = sorted(p.name for p in (tmp_path / "out" / "figures").iterdir())
    assert "gender-tiny-hubert-logistic_L1.pdf" in figures and "gender-tiny-hubert-logistic_L1.png" in figures
    assert not any("_L0." in name or "_L2." in name for name in figures)
    assert any(link.endswith(".pdf") for link in refs.links)
    with pytest.raises(ValueError, match="layer 40 is out of range"):
        build_report(results, tmp_path / "out2", layers=[40])
    with pytest.raises(ValueError, match="format"):
        build_report(results, tmp_path / "out3", formats=("gif",))


def test_cli_report_and_its_errors(tmp_path):
    results = write_engine_results(tmp_path / "r", 3, layers=[0, 1], seeds=2)
    families = tmp_path / "fam.tsv"
    families.write_text("language\tfamily\nen\tWest\nde\tWest\nfr\tSouth\n")
    runner = CliRunner()
    out = tmp_path / "out"
    result = runner.invoke(
        app,
        [
            "report",
            str(results),
            "--out",
            str(out),
            "--families",
            str(families),
            "--layers",
            "0-1",
            "--clip",
            "2",
            "--quiet",
        ],
    )
    assert result.exit_code == 0, result.output
    assert (out / "index.html").is_file()
    assert "±2" in (out / "index.html").read_text()
    _assert_all_resolve(out / "index.html")
    bad_layers = runner.invoke(app, ["report", str(results), "--out", str(out), "--layers", "x"])
    assert bad_layers.exit_code != 0 and "--layers" in bad_layers.output
    every = runner.invoke(
        app, ["report", str(results), "--out", str(tmp_path / "all"), "--layers", "all", "-q"]
    )
    assert every.exit_code == 0, every.output
    assert {p.name for p in (tmp_path / "all" / "figures").glob("*_L*.png")} == {
        "gender-tiny-hubert-logistic_L0.png",
        "gender-tiny-hubert-logistic_L1.png",
    }
    missing = runner.invoke(app, ["report", str(tmp_path / "nope"), "--out", str(out), "-q"])
    assert missing.exit_code == 2 and "not a directory" in missing.output
    assert "Traceback" not in missing.output
    bad_format = runner.invoke(app, ["report", str(results), "--out", str(out), "--format", "gif"])
    assert bad_format.exit_code != 0 and "format" in bad_format.output
    broken = tmp_path / "broken"
    broken.mkdir()
    pl.DataFrame({"task": ["g"], "target": ["en"]}).write_parquet(broken / "matrices.parquet")
    missing_columns = runner.invoke(app, ["report", str(broken), "--out", str(out), "-q"])
    assert missing_columns.exit_code == 2 and re.search(r"missing column\(s\).*donor", missing_columns.output)
    assert "matrices.parquet" in missing_columns.output
    help_text = runner.invoke(app, ["report", "--help"])
    assert help_text.exit_code == 0 and "--families" in help_text.output


REFERENCE_CSV = (
    "type,lang_src,lang_tgt,auc_mean,auc_var,seed_count\n"
    "single,ca,,0.80,0.0004,10\ndual,ca,ca,0.86,0.0004,10\ndual,ca,es,0.84,0.0005,10\ndual,ca,de,0.79,0.0005,10\n"
    "single,es,,0.78,0.0003,10\ndual,es,es,0.85,0.0003,10\ndual,es,ca,0.83,0.0004,10\ndual,es,de,0.80,0.0004,10\n"
    "single,de,,0.82,0.0003,10\ndual,de,de,0.88,0.0003,10\ndual,de,ca,0.83,0.0004,10\ndual,de,es,0.84,0.0004,10\n"
)


def test_from_runs_output_own_output_and_finetune_output_all_render(tmp_path):
    """`cltm report` renders the three kinds of results directory (issue: one results object)."""
    runner = CliRunner()
    # 1. `cltm matrix --from-runs` of the published reference CSV (no layer in it)
    csv_path = tmp_path / "speaker_matrix.csv"
    csv_path.write_text(REFERENCE_CSV)
    made = runner.invoke(
        app, ["matrix", "--from-runs", str(csv_path), "--out", str(tmp_path / "ref"), "--quiet"]
    )
    assert made.exit_code == 0, made.output
    shown = runner.invoke(app, ["report", str(tmp_path / "ref"), "--out", str(tmp_path / "ref_report"), "-q"])
    assert shown.exit_code == 0, shown.output
    refs = _assert_all_resolve(tmp_path / "ref_report" / "index.html")
    html = (tmp_path / "ref_report" / "index.html").read_text()
    assert "layer n/a" in html and any("_Ln-a" in src for src in refs.images)
    table = pl.read_csv(tmp_path / "ref_report" / "tables" / "speaker-reference-finetune_Ln-a.csv")
    assert table.filter(pl.col("target") == "ca")["es"][0] == pytest.approx(
        (0.84 - 0.80) / (0.86 - 0.80), abs=1e-5
    )
    # 2. cltm's own output, 3. a fine-tune output directory (runs only) given as the results directory
    runs, _ = synthetic_runs(3, layers=[0, 1], seeds=2, finetune_targets=3, seed=2)
    for name, directory in (
        ("own", write_engine_results(tmp_path / "own", 3, layers=[0, 1], seeds=2)),
        ("finetune", write_finetune_dir(tmp_path / "ft", runs)),
    ):
        done = runner.invoke(app, ["report", str(directory), "--out", str(tmp_path / f"{name}_report"), "-q"])
        assert done.exit_code == 0, (name, done.output)
        _assert_all_resolve(tmp_path / f"{name}_report" / "index.html")
    ft_html = (tmp_path / "finetune_report" / "index.html").read_text()
    assert "finetune (fine-tune)" in ft_html  # its matrices were computed by the engine from its runs
    engine = matrix_from_runs(runs.filter((pl.col("source") == "finetune") & (pl.col("task") == "gender")))
    shown = pl.read_csv(tmp_path / "finetune_report" / "tables" / "gender-tiny-hubert-finetune_L1.csv")
    for target, donor, value in (
        engine.filter(pl.col("target") != pl.col("donor")).select("target", "donor", "cltm").iter_rows()
    ):
        assert shown.filter(pl.col("target") == target)[donor][0] == pytest.approx(value, abs=1e-5)


def test_report_settings_object_and_keywords_are_one_interface(tmp_path):
    from cltm.report import ReportSettings

    runs, confusion = synthetic_runs(4, layers=[1, 2], seeds=2, seed=6)
    results = engine_result(runs.filter(pl.col("source") == "probe"), confusion).write(tmp_path / "results")
    build_report(results, tmp_path / "a", ReportSettings(layers="-1", formats=("svg",)))
    build_report(results, tmp_path / "b", layers="-1", formats="svg")
    figures = sorted(p.name for p in (tmp_path / "a").rglob("*.svg"))
    assert figures and figures == sorted(p.name for p in (tmp_path / "b").rglob("*.svg"))
    assert not list((tmp_path / "a").rglob("*.png"))  # the settings reached the drawing
    build_report(results, tmp_path / "c", ReportSettings(formats=("svg",)), formats="png")
    assert list((tmp_path / "c").rglob("*.png"))  # keywords override the settings object
    with pytest.raises(TypeError):
        build_report(results, tmp_path / "d", colour="red")

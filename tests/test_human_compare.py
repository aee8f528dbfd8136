"""`cltm human compare` end to end on a fabricated manifest, listener table and predictions table; every
number checked against a slow recomputation (library metrics, scikit-learn kappa, scipy Spearman)."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import numpy as np
import polars as pl
import pytest
from scipy.stats import spearmanr
from sklearn.metrics import cohen_kappa_score
from typer.testing import CliRunner

from cltm.cli import app
from cltm.human import (
    COMPARISON_FILES,
    BootstrapSettings,
    CompareSettings,
    ListenerColumnMap,
    ListenerImport,
    compare,
    read_comparison,
    validate_listeners,
)
from cltm.human.report import HumanReportSettings, human_section, model_layer_curves
from cltm.probes.metrics import accuracy, macro_f1, uar
from cltm.transfer.tables import PREDICTIONS_COLUMNS, RUNS_COLUMNS, conform

LANGS = ("de", "en", "zh")
CLASSES = ("angry", "happy", "neutral", "sad")
CORPUS_WORDS = {"angry": "anger", "happy": "happiness", "neutral": "neutral", "sad": "sadness"}
MAP = "listener=subject,group=L1,utt_id=stimulus,response=answer,confidence=conf"


def _wrong(rng, true):
    return rng.choice([c for c in CLASSES if c != true])


def _fabricate() -> tuple[pl.DataFrame, pl.DataFrame, pl.DataFrame]:
    rng = np.random.default_rng(11)
    utts = [(f"{lang}{i:02d}", lang, CLASSES[i % 4]) for lang in LANGS for i in range(12)]
    manifest = pl.DataFrame(
        {
            "utt_id": [u for u, _, _ in utts],
            "path": [f"{u}.wav" for u, _, _ in utts],
            "language": [lang for _, lang, _ in utts],
            "emotion": [CORPUS_WORDS[e] for _, _, e in utts],  # corpus vocabulary, normalised on import
        }
    )
    answers = []
    for group in LANGS:
        for k in range(4):
            for utt, lang, emotion in utts:
                p = 0.85 if group == lang else 0.55 + 0.05 * LANGS.index(group)
                answer = emotion if rng.random() < p else _wrong(rng, emotion)
                answers.append(
                    {
                        "subject": f"{group}-{k}",
                        "L1": group,
                        "stimulus": utt,
                        "answer": answer.title(),
                        "conf": 3,
                    }
                )
    preds = []
    for layer in range(3):
        for train in LANGS:
            for utt, lang, emotion in utts:
                for seed in range(2):
                    p = 0.45 + 0.15 * layer if train == lang else 0.3 + 0.1 * LANGS.index(train)
                    pred = emotion if rng.random() < p else _wrong(rng, emotion)
                    preds.append(
                        {
                            "utt_id": utt,
                            "task": "emotion",
                            "model": "m",
                            "layer": layer,
                            "probe": "logreg",
                            "condition": "single" if train == lang else "zero_shot",
                            "target": lang,
                            "donor": train,
                            "train_languages": train,
                            "seed": seed,
                            "true": CORPUS_WORDS[emotion],
                            "pred": pred,
                            "classes": list(CLASSES),
                            "scores": [0.25] * 4,
                            "source": "probe",
                        }
                    )
    return manifest, pl.DataFrame(answers), conform(pl.DataFrame(preds), PREDICTIONS_COLUMNS)


def _vote(labels: list[str]) -> str:
    counts = Counter(labels)
    top = max(counts.values())
    return sorted(c for c, n in counts.items() if n == top)[0]


@pytest.fixture(scope="module")
def compared(tmp_path_factory) -> tuple[Path, pl.DataFrame, pl.DataFrame, str]:
    tmp = tmp_path_factory.mktemp("human")
    manifest, answers, preds = _fabricate()
    manifest.write_parquet(tmp / "manifest.parquet")
    answers.write_csv(tmp / "answers.csv")
    preds.write_parquet(tmp / "predictions.parquet")
    runner = CliRunner()
    result = runner.invoke(
        app,
        ["human", "import", str(tmp / "answers.csv"), "--map", MAP, "-m", str(tmp / "manifest.parquet")]
        + ["--out", str(tmp / "listeners.parquet")],
    )
    assert result.exit_code == 0, result.output
    result = runner.invoke(
        app,
        ["human", "compare", "-l", str(tmp / "listeners.parquet"), "-p", str(tmp / "predictions.parquet")]
        + ["--out", str(tmp / "cmp"), "--boot", "200", "--quiet"],
    )
    assert result.exit_code == 0, result.output
    listeners = pl.read_parquet(tmp / "listeners.parquet")
    return tmp / "cmp", listeners, preds, result.output


def test_every_table_is_written_with_its_contract(compared):
    out, _, _, printed = compared
    for file, columns in COMPARISON_FILES.values():
        table = pl.read_parquet(out / file)
        assert table.schema == pl.Schema(columns), file
        assert table.height > 0, file
    assert "comparison tables ->" in printed


def test_panel_scores_equal_the_library_metrics_per_cell(compared):
    out, listeners, _, _ = compared
    result = read_comparison(out)
    groups = result.scores.filter(pl.col("level") == "group")
    assert groups.height == 3 * 3 * 3  # groups x languages x metrics
    for row in groups.iter_rows(named=True):
        part = listeners.filter((pl.col("group") == row["group"]) & (pl.col("language") == row["language"]))
        fn = {"accuracy": accuracy, "uar": uar, "f1": macro_f1}[row["metric"]]
        assert row["value"] == pytest.approx(fn(part["true"].to_numpy(), part["response"].to_numpy()))
        assert row["native"] == (row["group"] == row["language"])
        assert (row["n_listeners"], row["n_utts"], row["n_answers"]) == (4, 12, 48)
        assert row["ci_low"] <= row["value"] + 1e-9 and row["value"] <= row["ci_high"] + 1e-9
        assert row["ci_high"] - row["ci_low"] > 0.02
    pooled = result.scores.filter((pl.col("level") == "nativeness") & (pl.col("metric") == "accuracy"))
    for row in pooled.iter_rows(named=True):
        native = listeners["group"] == listeners["language"]
        part = listeners.filter(
            (pl.col("language") == row["language"]) & (native == (row["group"] == "native"))
        )
        assert row["value"] == pytest.approx(float(part["correct"].mean()))
        assert row["n_listeners"] == (4 if row["group"] == "native" else 8)


def test_listener_scores(compared):
    out, listeners, _, _ = compared
    result = read_comparison(out)
    assert result.listener_scores.height == 12 * 3
    row = result.listener_scores.filter((pl.col("listener") == "zh-1") & (pl.col("language") == "en")).row(
        0, named=True
    )
    part = listeners.filter((pl.col("listener") == "zh-1") & (pl.col("language") == "en"))
    assert row["accuracy"] == pytest.approx(float(part["correct"].mean()))
    assert row["uar"] == pytest.approx(uar(part["true"].to_numpy(), part["response"].to_numpy()))
    assert row["mean_confidence"] == 3.0 and row["mean_rt"] is None


def test_recall_and_confusion_add_up(compared):
    out, listeners, _, _ = compared
    result = read_comparison(out)
    cell = listeners.filter((pl.col("group") == "en") & (pl.col("language") == "de"))
    recall = result.recall.filter(
        (pl.col("level") == "group") & (pl.col("group") == "en") & (pl.col("language") == "de")
    )
    for row in recall.iter_rows(named=True):
        answered = cell.filter(pl.col("true") == row["class"])
        assert row["n"] == answered.height
        assert row["recall"] == pytest.approx(float((answered["response"] == row["class"]).mean()))
    confusion = result.confusion.filter(pl.col("level") == "group")
    totals = confusion.group_by("group", "language").agg(pl.col("count").sum())
    assert set(totals["count"]) == {48}


def test_model_scores_and_settings(compared):
    out, _, preds, _ = compared
    result = read_comparison(out)
    scores = result.model_scores
    assert set(scores["setting"]) == {"monolingual", "cross-lingual"}
    row = scores.filter(
        (pl.col("layer") == 1) & (pl.col("train_languages") == "en") & (pl.col("language") == "de")
    )
    part = preds.filter(
        (pl.col("layer") == 1) & (pl.col("train_languages") == "en") & (pl.col("target") == "de")
    )
    truth = [{v: k for k, v in CORPUS_WORDS.items()}[t] for t in part["true"]]
    assert row["setting"][0] == "cross-lingual"
    assert row["accuracy"][0] == pytest.approx(accuracy(np.array(truth), part["pred"].to_numpy()))


def test_agreement_equals_sklearn_kappa_on_recomputed_votes(compared):
    out, listeners, preds, _ = compared
    result = read_comparison(out)
    system = (
        (pl.col("layer") == 2) & (pl.col("condition") == "zero_shot") & (pl.col("train_languages") == "zh")
    )
    model_votes = {
        utt: _vote(part["pred"].to_list())
        for (utt,), part in preds.filter(system & (pl.col("target") == "en")).group_by("utt_id")
    }
    cell = listeners.filter((pl.col("group") == "de") & (pl.col("language") == "en"))
    majority = {utt: _vote(part["response"].to_list()) for (utt,), part in cell.group_by("utt_id")}
    utts = sorted(majority)
    expected = cohen_kappa_score([majority[u] for u in utts], [model_votes[u] for u in utts])
    row = result.agreement.filter(
        system & (pl.col("rater") == "majority") & (pl.col("group") == "de") & (pl.col("language") == "en")
    )
    assert row.height == 1
    assert row["kappa"][0] == pytest.approx(expected, abs=1e-12)
    assert row["agreement"][0] == pytest.approx(np.mean([majority[u] == model_votes[u] for u in utts]))

    one = cell.filter(pl.col("listener") == "de-2").sort("utt_id")
    expected = cohen_kappa_score(one["response"].to_list(), [model_votes[u] for u in one["utt_id"]])
    row = result.agreement.filter(system & (pl.col("listener") == "de-2") & (pl.col("language") == "en"))
    assert row["kappa"][0] == pytest.approx(expected, abs=1e-12)

    utt = utts[5]
    per_utt = result.utterance_agreement.filter(
        system & (pl.col("group") == "de") & (pl.col("utt_id") == utt)
    )
    answers = cell.filter(pl.col("utt_id") == utt)["response"].to_list()
    assert per_utt["agreement_rate"][0] == pytest.approx(np.mean([a == model_votes[utt] for a in answers]))
    assert per_utt["majority"][0] == majority[utt]
    assert per_utt["n_listeners"][0] == 4


def test_drops_and_rank_correlation(compared):
    out, listeners, _, _ = compared
    result = read_comparison(out)

    def acc(group, language):
        part = listeners.filter((pl.col("group") == group) & (pl.col("language") == language))
        return float(part["correct"].mean())

    human = result.drops.filter(pl.col("side") == "human")
    assert human.height == 6  # ordered pairs of 3 languages
    for row in human.iter_rows(named=True):
        expected = acc(row["language"], row["language"]) - acc(row["from_language"], row["language"])
        assert row["drop"] == pytest.approx(expected)
    for layer in range(3):
        model = result.drops.filter((pl.col("side") == "model") & (pl.col("layer") == layer))
        scores = result.model_scores.filter(pl.col("layer") == layer)
        for row in model.iter_rows(named=True):
            mono = scores.filter(
                (pl.col("setting") == "monolingual") & (pl.col("language") == row["language"])
            )
            cross = scores.filter(
                (pl.col("train_languages") == row["from_language"]) & (pl.col("language") == row["language"])
            )
            assert row["drop"] == pytest.approx(mono["accuracy"][0] - cross["accuracy"][0])
        joined = model.join(human, on=["from_language", "language"], suffix="_human").sort(
            "from_language", "language"
        )
        rank = result.rank_correlation.filter(pl.col("layer") == layer)
        assert rank["n_pairs"][0] == 6
        expected = spearmanr(joined["drop_human"].to_numpy(), joined["drop"].to_numpy()).statistic
        assert rank["spearman"][0] == pytest.approx(expected, abs=1e-12)


def test_printed_summary_names_the_best_layer(compared):
    out, _, _, _ = compared
    result = read_comparison(out)
    mono = result.model_scores.filter(pl.col("setting") == "monolingual")
    best = mono.group_by("layer").agg(pl.col("accuracy").mean()).sort("accuracy", descending=True)["layer"][0]
    runner = CliRunner()
    tmp = out.parent
    printed = runner.invoke(
        app,
        ["human", "compare", "-l", str(tmp / "listeners.parquet"), "-p", str(tmp)]
        + ["--out", str(tmp / "cmp2"), "--boot", "50"],
    ).output
    assert f"best layer {best} " in printed
    assert "(native)" in printed and "non-native on de" in printed


def test_listeners_only_and_refused_inputs():
    manifest, answers, preds = _fabricate()
    columns = ListenerColumnMap.parse(MAP)
    listeners = validate_listeners(answers, manifest, ListenerImport(columns=columns))
    settings = CompareSettings(bootstrap=BootstrapSettings(n_boot=50))
    alone = compare(listeners, None, settings)
    assert alone.scores.height == (9 + 6) * 3 and alone.model_scores.is_empty()
    assert set(alone.drops["side"]) == {"human"} and alone.rank_correlation.is_empty()

    bad = preds.with_columns(
        pl.when(pl.col("utt_id") == "de00").then(pl.lit("sad")).otherwise("true").alias("true")
    )
    with pytest.raises(ValueError, match="another true label.*'de00'"):
        compare(listeners, bad, settings)
    with pytest.raises(ValueError, match="no prediction is for an utterance"):
        compare(listeners, preds.with_columns(pl.lit("other").alias("task")), settings)


def test_cli_compare_refuses_bad_inputs_with_one_line(compared, tmp_path):
    out, _, preds, _ = compared
    listeners = out.parent / "listeners.parquet"
    runner = CliRunner()
    result = runner.invoke(
        app, ["human", "compare", "-l", str(tmp_path / "none.parquet"), "-o", str(tmp_path)]
    )
    assert result.exit_code == 2 and "no such file" in result.output and "Traceback" not in result.output
    result = runner.invoke(
        app, ["human", "compare", "-l", str(listeners), "-p", str(tmp_path), "-o", str(tmp_path)]
    )
    assert result.exit_code == 2 and "--predictions" in result.output
    preds.with_columns(pl.col("utt_id") + "x").write_parquet(tmp_path / "predictions.parquet")
    result = runner.invoke(
        app, ["human", "compare", "-l", str(listeners), "-p", str(tmp_path), "-o", str(tmp_path)]
    )
    assert result.exit_code == 2 and "no prediction is for an utterance the listeners heard" in result.output
    assert not (tmp_path / "human_scores.parquet").exists()


def test_progress_is_reported_per_cell():
    manifest, answers, _ = _fabricate()
    listeners = validate_listeners(answers, manifest, ListenerImport(columns=ListenerColumnMap.parse(MAP)))
    calls = []
    compare(
        listeners,
        None,
        CompareSettings(bootstrap=BootstrapSettings(n_boot=5)),
        progress=lambda *a: calls.append(a),
    )
    assert calls == [(i, 15) for i in range(1, 16)]  # 9 group cells + 6 native / non-native cells


def test_sequential_transfer_is_its_own_setting_and_stays_out_of_the_drops():
    manifest, answers, preds = _fabricate()
    listeners = validate_listeners(answers, manifest, ListenerImport(columns=ListenerColumnMap.parse(MAP)))
    settings = CompareSettings(bootstrap=BootstrapSettings(n_boot=20))
    sequential = preds.filter(pl.col("condition") == "zero_shot").with_columns(
        pl.lit("sequential").alias("condition"),
        (pl.col("train_languages") + ">" + pl.col("target")).alias("train_languages"),
        pl.col("true").alias("pred"),  # a perfect adapted model: would change every drop if it counted
    )
    plain = compare(listeners, preds, settings)
    both = compare(listeners, pl.concat([preds, sequential]), settings)
    transfer = both.model_scores.filter(pl.col("setting") == "transfer")
    assert transfer.height == 3 * 6 and (transfer["accuracy"] == 1.0).all()
    assert both.drops.equals(plain.drops)
    assert both.rank_correlation.equals(plain.rank_correlation)


def test_human_section_draws_figures_from_the_tables(compared, tmp_path):
    out, _, _, _ = compared
    result = read_comparison(out)
    fast = HumanReportSettings(dpi=30)
    html = human_section(out, tmp_path / "report", settings=fast)
    for stem in ("human_groups", "human_layers", "human_drops"):
        png = tmp_path / "report" / "figures" / f"{stem}.png"
        assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
        assert f'src="figures/{stem}.png"' in html
    assert html.startswith('<section id="humans-vs-models">') and html.endswith("</section>")

    # the section reads the tables: every group score is in the fragment's table
    groups = result.scores.filter((pl.col("level") == "group") & (pl.col("metric") == "accuracy"))
    for value in groups["value"]:
        assert f"<td>{value:.3f}</td>" in html


def test_model_curves_come_from_the_runs_table_when_given(compared):
    out, _, _, _ = compared
    result = read_comparison(out)
    runs = conform(
        pl.DataFrame(
            {
                "task": ["emotion"] * 6,
                "model": ["m"] * 6,
                "layer": [0, 1, 0, 1, 1, 1],
                "probe": ["logreg"] * 6,
                "condition": ["single", "single", "zero_shot", "zero_shot", "zero_shot", "sequential"],
                "target": ["de"] * 6,
                "donor": ["de", "de", "en", "en", "zh", "en"],
                "seed": [0] * 6,
                "accuracy": [0.4, 0.9, 0.3, 0.5, 0.7, 0.99],
                "source": ["probe"] * 6,
            }
        ),
        RUNS_COLUMNS,
    )
    curves = model_layer_curves(result, runs)
    got = {(r["setting"], r["layer"]): r["accuracy"] for r in curves.iter_rows(named=True)}
    assert got == pytest.approx(
        {
            ("monolingual", 0): 0.4,
            ("monolingual", 1): 0.9,
            ("cross-lingual", 0): 0.3,
            ("cross-lingual", 1): 0.6,
            ("transfer", 1): 0.99,
        }
    )
    from_predictions = model_layer_curves(result)
    assert set(from_predictions["layer"]) == {0, 1, 2} and set(from_predictions["language"]) == set(LANGS)


def test_cltm_report_human_adds_the_section(compared, tmp_path):
    from report_fixtures import write_engine_results

    out, _, _, _ = compared
    results = write_engine_results(tmp_path / "results", n_languages=3)
    result = CliRunner().invoke(
        app,
        ["report", str(results), "--out", str(tmp_path / "report"), "--human", str(out), "--quiet"],
    )
    assert result.exit_code == 0, result.output
    page = (tmp_path / "report" / "index.html").read_text()
    assert page.count('<section id="humans-vs-models">') == 1
    assert 'href="#humans-vs-models"' in page
    assert (tmp_path / "report" / "figures" / "human_groups.png").exists()
    without = CliRunner().invoke(app, ["report", str(results), "--out", str(tmp_path / "plain"), "--quiet"])
    assert without.exit_code == 0, without.output
    assert "humans-vs-models" not in (tmp_path / "plain" / "index.html").read_text()

"""The fine-tune campaign end to end on a tiny model and a tiny synthetic corpus (CPU)."""

from __future__ import annotations

import copy

import numpy as np
import polars as pl
import pytest
import soundfile as sf
import torch

from cltm.audio import load_audio
from cltm.corpus import read_manifest, write_manifest
from cltm.extract.models import build_tiny_model, load_model
from cltm.finetune.model import PooledEncoderClassifier
from cltm.finetune.peft_modes import apply_peft
from cltm.finetune.runner import FinetuneError, cells_from_matrix, parse_cells, run_finetune
from cltm.finetune.runs import FinetuneError as RunsError
from cltm.finetune.train import TrainSettings, train_classifier
from cltm.transfer.conditions import plan_conditions
from cltm.transfer.stats import matrix_from_runs
from cltm.transfer.tables import RUNS_COLUMNS, read_runs, write_results

SR = 16000
LANGS = ("en", "de", "fr")


def _write_corpus(root) -> tuple:
    """3 languages x 8 speakers (4 female, 4 male) x 3 utterances of 0.3 s; pitch follows gender and speaker.

    An explicit split: speakers 0-3 (2 f, 2 m) train, 4-7 test, so both genders and >= 2 speakers per gender
    are in every test set (same-gender verification trials need that).
    """
    rng = np.random.default_rng(0)
    rows = []
    t = np.arange(int(0.3 * SR)) / SR
    for li, lang in enumerate(LANGS):
        for s in range(8):
            gender = "female" if s % 2 == 0 else "male"
            f0 = (210.0 if gender == "female" else 110.0) * (1 + 0.04 * s) + 7 * li
            for u in range(3):
                wave = np.sin(2 * np.pi * f0 * t) + (0.2 + 0.1 * li) * np.sin(2 * np.pi * 3 * f0 * t)
                wave = 0.3 * wave + 0.02 * rng.standard_normal(len(t))
                path = root / f"{lang}_{s}_{u}.wav"
                sf.write(path, wave.astype(np.float32), SR)
                rows.append(
                    dict(
                        utt_id=f"{lang}-{s}-{u}",
                        path=path.name,
                        language=lang,
                        speaker=f"{lang}-spk{s}",
                        gender=gender,
                        split="train" if s < 4 else "test",
                    )
                )
    return write_manifest(pl.DataFrame(rows), root / "manifest.parquet")


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    root = tmp_path_factory.mktemp("corpus")
    manifest_path = _write_corpus(root)
    model_dir = build_tiny_model(
        root / "tiny", seed=1, mask_time_prob=0.0, hidden_size=16, intermediate_size=32
    )
    return manifest_path, model_dir


FAST = TrainSettings(lr=1e-3)  # the published 1e-5 barely moves a random tiny model; the plumbing is the same


@pytest.fixture(scope="module")
def gender_run(corpus, tmp_path_factory):
    manifest_path, model_dir = corpus
    out = tmp_path_factory.mktemp("ft") / "gender"
    result = run_finetune(
        manifest_path,
        model_dir,
        "gender",
        parse_cells("en:de,en:fr"),
        n=2,
        seeds=[0, 1],
        out_dir=out,
        settings=FAST,
        device="cpu",
        progress=False,
    )
    return result, out


def test_two_cells_two_seeds_give_a_complete_runs_table(gender_run, corpus):
    result, out = gender_run
    runs = pl.read_parquet(out / "runs.parquet")
    assert result.ran == 8 and result.skipped == 0
    expected = {
        (c, "en", d, s)
        for s in (0, 1)
        for c, d in (("single", "en"), ("self", "en"), ("pair", "de"), ("pair", "fr"))
    }
    got = set(runs.select("condition", "target", "donor", "seed").iter_rows())
    assert got == expected and runs.height == 8  # single/self of en once per seed, not once per cell
    assert set(RUNS_COLUMNS) <= set(runs.columns)
    assert runs["source"].unique().to_list() == ["finetune"]
    assert runs["probe"].unique().to_list() == ["finetune"]
    assert runs["layer"].unique().to_list() == [load_model(corpus[1]).n_layers - 1]
    assert runs["config_hash"].n_unique() == 1
    for metric in ("f1", "accuracy"):
        assert runs[metric].null_count() == 0 and runs[metric].is_between(0, 1).all()
    n_train = dict(zip(runs["condition"], runs["n_train"], strict=False))
    assert n_train == {"single": 4, "self": 8, "pair": 8}  # N=2 per class


def test_runs_use_the_probe_sweeps_subsets(gender_run, corpus):
    """Fine-tune cells train on exactly the rows the probe sweep's planner gives (all languages planned)."""
    result, _ = gender_run
    manifest = read_manifest(corpus[0])
    sweep = {
        (p.condition, p.target, p.donor, p.seed): p for p in plan_conditions(manifest, "gender", n=2, seeds=2)
    }
    for plan in result.plans:
        reference = sweep[(plan.condition, plan.target, plan.donor, plan.seed)]
        assert np.array_equal(np.sort(plan.train_rows), np.sort(reference.train_rows))
        assert np.array_equal(np.sort(plan.test_rows), np.sort(reference.test_rows))


def test_one_run_matches_a_hand_made_reference(gender_run, corpus):
    """Rebuild the (single, en, seed 1) run by hand: same rows, labels, seed -> the same macro-F1."""
    from sklearn.metrics import accuracy_score, f1_score
    from transformers import set_seed

    result, out = gender_run
    manifest = read_manifest(corpus[0])
    plan = next(p for p in result.plans if (p.condition, p.seed) == ("single", 1))
    classes = ["female", "male"]
    labels = manifest["gender"].to_list()
    waves = [load_audio(manifest["path"][int(r)]) for r in plan.train_rows]
    encoder = load_model(
        corpus[1]
    ).model  # loading may draw random numbers: seed after it, as the runner does
    set_seed(1)
    model = PooledEncoderClassifier(copy.deepcopy(encoder), 2, embed_last_k=4)
    apply_peft(model, "none")
    train_classifier(model, waves, [classes.index(labels[int(r)]) for r in plan.train_rows], FAST, seed=1)
    model.eval()
    predictions, truth = [], []
    with torch.no_grad():
        for r in plan.test_rows:
            wave = load_audio(manifest["path"][int(r)])
            wave = (wave - wave.mean()) / np.sqrt(wave.var() + 1e-7)
            x = torch.from_numpy(wave)[None]
            predictions.append(int(model(x, torch.ones_like(x, dtype=torch.long)).argmax()))
            truth.append(classes.index(labels[int(r)]))
    row = pl.read_parquet(out / "runs.parquet").filter(
        (pl.col("condition") == "single") & (pl.col("seed") == 1)
    )
    assert row["f1"][0] == pytest.approx(f1_score(truth, predictions, average="macro"), abs=1e-12)
    assert row["accuracy"][0] == pytest.approx(accuracy_score(truth, predictions), abs=1e-12)


def test_resume_skips_finished_runs(gender_run, corpus, tmp_path):
    result, out = gender_run
    copy_dir = tmp_path / "again"
    copy_dir.mkdir()
    runs = pl.read_parquet(out / "runs.parquet")
    # drop one finished run: only that one must run again, the other seven are kept byte for byte
    dropped = runs.filter(
        ~((pl.col("condition") == "pair") & (pl.col("donor") == "fr") & (pl.col("seed") == 0))
    )
    dropped.write_parquet(copy_dir / "runs.parquet")
    again = run_finetune(
        corpus[0],
        corpus[1],
        "gender",
        [("en", "de"), ("en", "fr")],
        n=2,
        seeds=[0, 1],
        out_dir=copy_dir,
        settings=FAST,
        device="cpu",
        progress=False,
    )
    assert (again.ran, again.skipped) == (1, 7)
    key = ["condition", "target", "donor", "seed"]
    assert again.runs.sort(key).select(key).equals(runs.sort(key).select(key))
    redone = again.runs.filter((pl.col("donor") == "fr") & (pl.col("seed") == 0))
    assert redone["f1"][0] == runs.filter((pl.col("donor") == "fr") & (pl.col("seed") == 0))["f1"][0]
    third = run_finetune(
        corpus[0],
        corpus[1],
        "gender",
        [("en", "de"), ("en", "fr")],
        n=2,
        seeds=[0, 1],
        out_dir=copy_dir,
        settings=FAST,
        device="cpu",
        progress=False,
    )
    assert (third.ran, third.skipped) == (0, 8)


def test_another_configuration_in_the_same_directory_is_refused(gender_run, corpus):
    _, out = gender_run
    with pytest.raises(RunsError, match="another configuration"):
        run_finetune(
            corpus[0],
            corpus[1],
            "gender",
            [("en", "de")],
            n=2,
            seeds=[0],
            out_dir=out,
            settings=TrainSettings(lr=5e-4),
            device="cpu",
            progress=False,
        )


def test_runs_table_reads_as_cltm_runs_and_gives_a_matrix(gender_run):
    _, out = gender_run
    runs = read_runs(out / "runs.parquet")
    matrices = matrix_from_runs(runs)
    cells = set(matrices.filter(pl.col("target") != pl.col("donor")).select("target", "donor").iter_rows())
    assert cells == {("en", "de"), ("en", "fr")}
    assert (matrices["probe"] == "finetune").all()


def test_speaker_task_scores_cosine_trials(corpus, tmp_path):
    result = run_finetune(
        corpus[0],
        corpus[1],
        "speaker",
        [("en", "de")],
        n=4,
        seeds=[0],
        out_dir=tmp_path / "spk",
        settings=TrainSettings(lr=1e-3, peft="adapter", embed_last_k=2),
        device="cpu",
        progress=False,
    )
    runs = result.runs
    assert runs.height == 3 and (runs["probe"] == "finetune-adapter").all()
    for metric in ("auc", "eer", "min_dcf_01", "min_dcf_05"):
        assert runs[metric].null_count() == 0 and runs[metric].is_between(0, 1).all()
    assert runs["f1"].null_count() == runs.height  # classification metrics do not apply


def test_cells_from_matrix_picks_top_by_abs_and_unstable(tmp_path):
    def cell(t, d, value, se, unstable):
        return dict(
            task="gender",
            model="m",
            layer=3,
            probe="logistic",
            metric="f1",
            target=t,
            donor=d,
            cltm=value,
            cltm_se=se,
            unstable=unstable,
        )

    rows = [
        cell("en", "en", 1.0, 0.0, False),
        cell("en", "de", 0.2, 0.1, False),
        cell("en", "fr", -1.5, 0.3, False),
        cell("de", "en", 0.9, 2.0, True),
        cell("de", "fr", 0.1, 0.5, True),
    ]
    # a shallower layer, picked only when asked for
    rows += [
        {**r, "layer": 1, "cltm": 9.0 if (r["target"], r["donor"]) == ("en", "de") else 0.0} for r in rows
    ]
    matrices = pl.DataFrame(rows)
    write_results(tmp_path, pl.DataFrame(schema=RUNS_COLUMNS), matrices, pl.DataFrame())
    assert cells_from_matrix(tmp_path, task="gender", top=2) == [("en", "fr"), ("de", "en")]
    assert cells_from_matrix(tmp_path, task="gender", top=2, by="unstable") == [("de", "en"), ("de", "fr")]
    assert cells_from_matrix(tmp_path, task="gender", top=1, layer=1) == [("en", "de")]


def test_parse_cells():
    assert parse_cells(" en:es , en:de,en:es") == [("en", "es"), ("en", "de")]
    for bad in ("en", "en:", "en:en", "en:de:fr", ","):
        with pytest.raises(FinetuneError):
            parse_cells(bad)


# --- the command line


def _cli(args):
    from typer.testing import CliRunner

    from cltm.cli import app

    return CliRunner().invoke(app, args)


def test_cli_runs_then_resumes(corpus, tmp_path):
    manifest_path, model_dir = corpus
    args = [
        "finetune",
        "--manifest",
        str(manifest_path),
        "--model",
        str(model_dir),
        "--task",
        "gender",
        "--cells",
        "fr:de",
        "--n",
        "2",
        "--seeds",
        "1",
        "--out",
        str(tmp_path / "o"),
        "--lr",
        "1e-3",
        "--peft",
        "lora",
        "--device",
        "cpu",
        "--quiet",
    ]
    first = _cli(args)
    assert first.exit_code == 0, first.output
    runs = pl.read_parquet(tmp_path / "o" / "runs.parquet")
    assert sorted(runs["condition"].to_list()) == ["pair", "self", "single"]
    assert (runs["probe"] == "finetune-lora").all() and (runs["target"] == "fr").all()
    assert "3 run(s) trained" in first.output
    second = _cli(args)
    assert second.exit_code == 0 and "0 run(s) trained, 3 already done" in second.output


@pytest.mark.parametrize(
    "extra, message",
    [
        (["--cells", "fr"], "TARGET:DONOR"),
        (["--cells", "fr:de", "--task", "emotion"], "emotion"),
        (["--cells", "fr:xx"], "xx"),
        (["--cells", "fr:de", "--peft", "prefix"], "--peft"),
        (["--cells", "fr:de", "--seeds", "two"], "--seeds"),
    ],
)
def test_cli_bad_input_gives_a_clean_error(corpus, tmp_path, extra, message):
    manifest_path, model_dir = corpus
    args = [
        "finetune",
        "--manifest",
        str(manifest_path),
        "--model",
        str(model_dir),
        "--task",
        "gender",
        "--n",
        "2",
        "--out",
        str(tmp_path / "o"),
        "--device",
        "cpu",
        "--quiet",
        *extra,
    ]
    result = _cli(args)
    assert result.exit_code != 0
    assert message in result.output
    assert "Traceback" not in result.output


def test_two_processes_split_the_runs_and_match_one_process(gender_run, corpus, tmp_path):
    """torchrun with 2 CPU processes (gloo): rank r takes runs r, r+2, ...; parts merge into one table whose
    metrics equal the single-process run's."""
    import os
    import subprocess
    import sys

    manifest_path, model_dir = corpus
    out = tmp_path / "dist"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        "--nproc-per-node",
        "2",
        "-m",
        "cltm.finetune",
        "--manifest",
        str(manifest_path),
        "--model",
        str(model_dir),
        "--task",
        "gender",
        "--cells",
        "en:de,en:fr",
        "-N",
        "2",
        "--seeds",
        "1",
        "--lr",
        "1e-3",
        "--out",
        str(out),
        "--device",
        "cpu",
        "--quiet",
    ]
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert done.stdout.count("run(s) trained") == 1  # only rank 0 reports
    assert not (out / "runs.parts").exists()  # rank 0 folded the part files into runs.parquet
    key = ["condition", "target", "donor", "seed"]
    dist = pl.read_parquet(out / "runs.parquet").sort(key)
    single = gender_run[0].runs.filter(pl.col("seed") == 0).sort(key)  # 4 runs, 2 per rank
    assert dist.select(key).equals(single.select(key))
    np.testing.assert_allclose(dist["f1"].to_numpy(), single["f1"].to_numpy(), atol=1e-9)
    np.testing.assert_allclose(dist["train_loss"].to_numpy(), single["train_loss"].to_numpy(), rtol=1e-4)


def test_cltm_matrix_from_runs_reads_the_finetune_table(gender_run, tmp_path):
    _, out = gender_run
    result = _cli(
        ["matrix", "--from-runs", str(out / "runs.parquet"), "--out", str(tmp_path / "m"), "--quiet"]
    )
    assert result.exit_code == 0, result.output
    matrices = pl.read_parquet(tmp_path / "m" / "matrices.parquet")
    cells = matrices.filter(pl.col("target") != pl.col("donor"))
    assert set(cells.select("target", "donor").iter_rows()) == {("en", "de"), ("en", "fr")}
    assert (matrices["probe"] == "finetune").all() and (matrices["task"] == "gender").all()
    # the perf columns are the seed means of this table's runs
    runs = pl.read_parquet(out / "runs.parquet")
    single = runs.filter(pl.col("condition") == "single")["f1"].mean()
    assert cells["perf_single"][0] == pytest.approx(single)


def test_cli_from_matrix_runs_the_top_cell(corpus, tmp_path):
    manifest_path, model_dir = corpus
    matrices = pl.DataFrame(
        [
            dict(
                task="gender",
                model="m",
                layer=2,
                probe="logreg",
                metric="f1",
                target=t,
                donor=d,
                cltm=v,
                cltm_se=0.1,
                unstable=False,
            )
            for t, d, v in (("de", "fr", 0.1), ("fr", "en", -2.0), ("en", "de", 0.5))
        ]
    )
    write_results(tmp_path / "sweep", pl.DataFrame(schema=RUNS_COLUMNS), matrices, pl.DataFrame())
    result = _cli(
        [
            "finetune",
            "--manifest",
            str(manifest_path),
            "--model",
            str(model_dir),
            "--task",
            "gender",
            "--from-matrix",
            str(tmp_path / "sweep"),
            "--top",
            "1",
            "--n",
            "2",
            "--seeds",
            "1",
            "--out",
            str(tmp_path / "o"),
            "--device",
            "cpu",
            "--quiet",
        ]
    )
    assert result.exit_code == 0, result.output
    runs = pl.read_parquet(tmp_path / "o" / "runs.parquet")
    assert set(runs.select("condition", "target", "donor").iter_rows()) == {
        ("single", "fr", "fr"),
        ("self", "fr", "fr"),
        ("pair", "fr", "en"),
    }

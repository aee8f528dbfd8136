"""The emotion study's fine-tuning: emotion as a task, monolingual / zero-shot / sequential transfer, layer K,
early stopping on dev, per-utterance predictions (tiny model, tiny synthetic corpus, CPU)."""

from __future__ import annotations

import copy

import numpy as np
import polars as pl
import pytest
import soundfile as sf
import torch
from sklearn.metrics import accuracy_score, balanced_accuracy_score, f1_score

from cltm.corpus import read_manifest, write_manifest
from cltm.extract.models import build_tiny_model, load_model
from cltm.finetune.model import PooledEncoderClassifier, truncate_encoder
from cltm.finetune.peft_modes import apply_peft
from cltm.finetune.runner import (
    FinetuneError,
    ManifestWaves,
    SequentialPlan,
    StageCache,
    best_layer,
    dev_rows,
    parse_conditions,
    plan_finetune_runs,
    run_finetune,
    run_one,
    task_labels,
    train_languages,
)
from cltm.finetune.train import TrainSettings, train_classifier
from cltm.transfer.conditions import plan_conditions
from cltm.transfer.tables import PREDICTIONS_COLUMNS, RUNS_COLUMNS, write_results

SR = 16000
EMOTIONS = ("angry", "happy", "neutral", "sad")
F0 = {"angry": 260.0, "happy": 220.0, "neutral": 150.0, "sad": 110.0}


def _write_corpus(root):
    """2 languages x 6 speakers x 4 emotions x 1 utterance of 0.2 s: speakers 0-3 train, 4 dev, 5 test."""
    rng = np.random.default_rng(1)
    t = np.arange(int(0.2 * SR)) / SR
    rows = []
    for li, lang in enumerate(("en", "de")):
        for s in range(6):
            for emotion in EMOTIONS:
                f0 = F0[emotion] * (1 + 0.03 * s) + 5 * li
                wave = 0.3 * np.sin(2 * np.pi * f0 * t) + 0.02 * rng.standard_normal(len(t))
                path = root / f"{lang}_{s}_{emotion}.wav"
                sf.write(path, wave.astype(np.float32), SR)
                rows.append(
                    dict(
                        utt_id=f"{lang}-{s}-{emotion}",
                        path=path.name,
                        language=lang,
                        speaker=f"{lang}-spk{s}",
                        gender="female" if s % 2 else "male",
                        emotion=emotion,
                        split="train" if s < 4 else ("dev" if s == 4 else "test"),
                    )
                )
    return write_manifest(pl.DataFrame(rows), root / "manifest.parquet")


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    root = tmp_path_factory.mktemp("emo")
    manifest_path = _write_corpus(root)
    model_dir = build_tiny_model(
        root / "tiny", seed=2, mask_time_prob=0.0, hidden_size=16, intermediate_size=32, num_hidden_layers=3
    )
    return manifest_path, model_dir


def _manifest(corpus) -> pl.DataFrame:
    return read_manifest(corpus[0])  # paths resolved to absolute ones


SETTINGS = TrainSettings(lr=1e-2, epochs=2, patience=1, layer=2, peft="lora", lora_rank=2, lora_alpha=4)


@pytest.fixture(scope="module")
def study(corpus, tmp_path_factory):
    out = tmp_path_factory.mktemp("study") / "ft"
    result = run_finetune(
        _manifest(corpus),
        corpus[1],
        "emotion",
        [("en", "de")],
        n=1,
        seeds=[0],
        out_dir=out,
        settings=SETTINGS,
        device="cpu",
        progress=False,
        conditions=("single", "zero_shot", "sequential"),
        predictions=True,
    )
    return result, out


def test_study_conditions_are_in_the_runs_table_at_layer_k(study):
    result, out = study
    runs = pl.read_parquet(out / "runs.parquet")
    assert set(RUNS_COLUMNS) <= set(runs.columns)
    got = {
        (r["condition"], r["target"], r["donor"], r["train_languages"]) for r in runs.iter_rows(named=True)
    }
    assert got == {
        ("single", "en", "en", "en"),
        ("zero_shot", "en", "de", "de"),
        ("sequential", "en", "de", "de>en"),
    }
    assert (runs["layer"] == 2).all() and (runs["probe"] == "finetune-lora").all()
    assert (runs["source"] == "finetune").all() and runs["fold"].null_count() == runs.height
    for metric in ("f1", "accuracy", "uar"):
        assert runs[metric].null_count() == 0 and runs[metric].is_between(0, 1).all()
    n_train = dict(zip(runs["condition"], runs["n_train"], strict=True))
    assert n_train == {"single": 4, "zero_shot": 4, "sequential": 8}  # N=1 per class x 4 emotions
    # early stopping ran on dev: a best epoch within the epochs asked for
    assert runs["best_epoch"].is_between(1, SETTINGS.epochs).all()
    # the sequential run's donor stage is the zero-shot model: loaded, not trained again
    assert result.reused_stages == 1
    assert [p.condition for p in result.plans] == ["zero_shot", "sequential", "single"]


def test_runs_use_the_sweeps_rows_and_sequential_chains_donor_then_target(study, corpus):
    result, _ = study
    sweep = plan_conditions(_manifest(corpus), "emotion", n=1, seeds=[0])
    by_key = {(p.condition, p.target, p.donor): p for p in sweep}
    for plan in result.plans:
        if isinstance(plan, SequentialPlan):
            first, second = plan.stages
            assert first.languages == ("de",) and second.languages == ("en",)
            assert np.array_equal(first.rows, by_key[("zero_shot", "en", "de")].train_rows)
            assert np.array_equal(second.rows, by_key[("single", "en", "en")].train_rows)
        else:
            reference = by_key[(plan.condition, plan.target, plan.donor)]
            assert np.array_equal(plan.train_rows, reference.train_rows)
        assert np.array_equal(plan.test_rows, by_key[("single", "en", "en")].test_rows)


def test_predictions_agree_with_the_runs_metrics(study):
    result, out = study
    predictions = pl.read_parquet(out / "predictions.parquet")
    assert predictions.columns == list(PREDICTIONS_COLUMNS)
    assert (predictions["source"] == "finetune").all() and (predictions["task"] == "emotion").all()
    assert predictions.equals(result.predictions)
    runs = pl.read_parquet(out / "runs.parquet")
    test_utts = {f"en-5-{e}" for e in EMOTIONS}
    for run in runs.iter_rows(named=True):
        rows = predictions.filter(
            (pl.col("condition") == run["condition"]) & (pl.col("donor") == run["donor"])
        )
        assert set(rows["utt_id"]) == test_utts and rows.height == 4
        assert (rows["train_languages"] == run["train_languages"]).all() and (rows["layer"] == 2).all()
        true, pred = rows["true"].to_list(), rows["pred"].to_list()
        assert run["f1"] == pytest.approx(f1_score(true, pred, average="macro"), abs=1e-12)
        assert run["accuracy"] == pytest.approx(accuracy_score(true, pred), abs=1e-12)
        assert run["uar"] == pytest.approx(balanced_accuracy_score(true, pred), abs=1e-12)
        for classes, scores, p in zip(rows["classes"], rows["scores"], pred, strict=True):
            assert list(classes) == list(EMOTIONS)
            assert sum(scores) == pytest.approx(1.0) and classes[int(np.argmax(scores))] == p


def test_resume_reruns_only_runs_without_predictions(study, corpus, tmp_path):
    _, out = study
    copy_dir = tmp_path / "again"
    copy_dir.mkdir()
    pl.read_parquet(out / "runs.parquet").write_parquet(copy_dir / "runs.parquet")
    predictions = pl.read_parquet(out / "predictions.parquet")
    predictions.filter(pl.col("condition") != "zero_shot").write_parquet(copy_dir / "predictions.parquet")
    (copy_dir / "finetune_config.json").write_text((out / "finetune_config.json").read_text())
    kwargs = dict(
        n=1,
        seeds=[0],
        settings=SETTINGS,
        device="cpu",
        progress=False,
        conditions=("single", "zero_shot", "sequential"),
    )
    again = run_finetune(
        _manifest(corpus), corpus[1], "emotion", [("en", "de")], out_dir=copy_dir, predictions=True, **kwargs
    )
    assert (again.ran, again.skipped) == (1, 2)
    key = ["utt_id", "condition", "donor"]
    assert again.predictions.sort(key).equals(predictions.sort(key))  # the re-run reproduces its predictions
    third = run_finetune(
        _manifest(corpus), corpus[1], "emotion", [("en", "de")], out_dir=copy_dir, predictions=False, **kwargs
    )
    assert (third.ran, third.skipped) == (0, 3)


def _plan(corpus, condition: str, settings=SETTINGS):
    manifest = _manifest(corpus)
    plans = plan_finetune_runs(manifest, "emotion", [("en", "de")], n=1, seeds=[0], conditions=[condition])
    return manifest, next(p for p in plans if p.condition == condition)


def _base(corpus, layer: int | None = 2):
    loaded = load_model(corpus[1])
    encoder = loaded.model
    if layer is not None:
        truncate_encoder(encoder, layer)
    return loaded, encoder


def test_sequential_second_stage_starts_from_the_first_stages_weights(corpus):
    """The state after stage 1 is the state stage 2 starts from; and the whole run equals two hand-made
    stages (train on the donor's rows, then on the target's): same predictions and scores."""
    from transformers import set_seed

    manifest, plan = _plan(corpus, "sequential")
    loaded, encoder = _base(corpus)
    states: dict[tuple[int, str], dict[str, torch.Tensor]] = {}

    def record(index, when, model):
        states[(index, when)] = {k: v.detach().clone() for k, v in model.state_dict().items()}

    settings = TrainSettings(lr=1e-2, epochs=1, peft="adapter", adapter_size=4, layer=2)
    output = run_one(
        plan,
        manifest=manifest,
        task="emotion",
        base_encoder=encoder,
        sampling_rate=loaded.sampling_rate,
        min_samples=loaded.min_samples,
        pass_attention_mask=loaded.return_attention_mask,
        settings=settings,
        on_stage=record,
    )
    assert sorted(states) == [(0, "end"), (0, "start"), (1, "end"), (1, "start")]
    after_first, second_start = states[(0, "end")], states[(1, "start")]
    assert after_first.keys() == second_start.keys()
    for name, value in after_first.items():
        assert torch.equal(value, second_start[name]), name
    trained = [k for k in after_first if ".adapter." in k or k.startswith("head.")]
    # stage 1 did train (its adapters and head moved from the initial state), and stage 2 went on from there
    assert any(not torch.equal(states[(0, "start")][k], after_first[k]) for k in trained)
    assert any(not torch.equal(states[(1, "end")][k], second_start[k]) for k in trained)
    labels = task_labels(manifest, "emotion").to_list()
    classes = list(EMOTIONS)
    set_seed(0)
    model = apply_peft(
        PooledEncoderClassifier(copy.deepcopy(encoder), 4, embed_last_k=settings.embed_last_k),
        "adapter",
        size=4,
    )
    waves = lambda rows: ManifestWaves(manifest, rows, sampling_rate=SR, min_samples=loaded.min_samples)  # noqa: E731
    for index, stage in enumerate(plan.stages):
        if index:
            set_seed(1)  # stage k > 0 draws dropout from seed * 1000 + k
        train_classifier(
            model, waves(stage.rows), [classes.index(labels[int(r)]) for r in stage.rows], settings, seed=0
        )
    from cltm.finetune.train import predict_logits

    logits = predict_logits(model, waves(plan.test_rows), settings)
    expected = [classes[i] for i in logits.argmax(axis=1)]
    assert output.predictions["pred"].to_list() == expected
    assert output.predictions["true"].to_list() == [labels[int(r)] for r in plan.test_rows]
    np.testing.assert_allclose(
        np.array(output.predictions["scores"].to_list()),
        torch.softmax(torch.from_numpy(logits).double(), 1).numpy(),
        atol=1e-9,
    )

    # the donor stage, trained by the zero-shot run and loaded from the cache, gives the same sequential run
    cache = StageCache()
    common = dict(
        manifest=manifest,
        task="emotion",
        base_encoder=encoder,
        sampling_rate=loaded.sampling_rate,
        min_samples=loaded.min_samples,
        pass_attention_mask=loaded.return_attention_mask,
        settings=settings,
        stage_cache=cache,
    )
    _, zero_shot = _plan(corpus, "zero_shot")
    run_one(zero_shot, **common)
    assert cache.hits == 0
    cached = run_one(plan, **common)
    assert cache.hits == 1
    assert cached.predictions.equals(output.predictions)
    assert cached.metrics == output.metrics


def test_dev_rows_come_from_the_training_languages_dev_split_only(corpus):
    manifest = _manifest(corpus)
    labels = task_labels(manifest, "emotion")
    rows = dev_rows(manifest, labels, ["de"], list(EMOTIONS))
    picked = manifest[rows.tolist()]
    assert set(picked["split"]) == {"dev"} and set(picked["language"]) == {"de"} and picked.height == 4
    with pytest.raises(FinetuneError, match="fr"):
        dev_rows(manifest, labels, ["de", "fr"], list(EMOTIONS))
    with pytest.raises(FinetuneError, match="split"):
        dev_rows(manifest.drop("split"), labels, ["de"], list(EMOTIONS))


@pytest.mark.parametrize(
    "scripted, best_epoch, epochs_run",
    [
        ([(0.50, 1.0), (0.70, 0.9), (0.60, 0.8), (0.9, 0.1)], 2, 3),  # stops one epoch after its best
        ([(0.50, 1.0), (0.50, 0.8), (0.50, 0.9), (0.5, 0.95)], 2, 3),  # equal UAR: the lower dev loss wins
        ([(0.50, 1.0), (0.60, 0.9), (0.70, 0.8), (0.8, 0.7)], 4, 4),  # always improving: every epoch runs
    ],
)
def test_early_stopping_keeps_the_best_dev_epochs_weights(
    corpus, monkeypatch, scripted, best_epoch, epochs_run
):
    """Dev scores are scripted; the weights seen at each epoch's evaluation are recorded. The model ends with
    the best epoch's weights, and training stops `patience` epochs after the best one."""
    import cltm.finetune.train as train_module

    manifest, plan = _plan(corpus, "single")
    loaded, encoder = _base(corpus, layer=1)
    labels = task_labels(manifest, "emotion").to_list()
    rows = plan.train_rows[:2]
    waves = ManifestWaves(manifest, rows, sampling_rate=SR, min_samples=loaded.min_samples)
    train = [list(EMOTIONS).index(labels[int(r)]) for r in rows]
    seen: list[dict[str, torch.Tensor]] = []

    def scripted_score(model, dev, settings, device, num_workers):
        seen.append({k: v.detach().clone() for k, v in model.state_dict().items()})
        return scripted[len(seen) - 1]

    monkeypatch.setattr(train_module, "_dev_score", scripted_score)
    model = apply_peft(PooledEncoderClassifier(copy.deepcopy(encoder), 4), "none")
    settings = TrainSettings(lr=1e-2, epochs=4, patience=1)
    log = train_classifier(model, waves, train, settings, seed=0, dev=(waves, train))
    assert (log.best_epoch, log.epochs_run, len(seen)) == (best_epoch, epochs_run, epochs_run)
    final = model.state_dict()
    for name, value in seen[best_epoch - 1].items():
        assert torch.equal(final[name], value), name
    if best_epoch != epochs_run:
        assert any(not torch.equal(final[k], v) for k, v in seen[-1].items())


def test_dev_score_is_uar_and_cross_entropy(corpus):
    from cltm.finetune.train import _dev_score, predict_logits

    manifest, plan = _plan(corpus, "single")
    loaded, encoder = _base(corpus, layer=1)
    waves = ManifestWaves(manifest, plan.test_rows, sampling_rate=SR, min_samples=loaded.min_samples)
    torch.manual_seed(3)
    model = PooledEncoderClassifier(copy.deepcopy(encoder), 4)
    truth = [0, 1, 2, 3]
    settings = TrainSettings()
    score = _dev_score(model, (waves, truth), settings, "cpu", 0)
    logits = predict_logits(model, waves, settings)
    log_p = logits - np.log(np.exp(logits).sum(axis=1, keepdims=True))
    assert score[0] == pytest.approx(balanced_accuracy_score(truth, logits.argmax(1)))
    assert score[1] == pytest.approx(-np.mean(log_p[np.arange(4), truth]), rel=1e-5)


def test_train_languages_and_conditions():
    assert parse_conditions("sequential, single ,zero_shot") == ("single", "zero_shot", "sequential")
    with pytest.raises(FinetuneError, match="choose from"):
        parse_conditions("single,transfer")


def test_train_languages_strings(corpus):
    manifest = _manifest(corpus)
    plans = plan_finetune_runs(
        manifest,
        "emotion",
        [("en", "de")],
        n=1,
        seeds=[0],
        conditions=("single", "self", "pair", "zero_shot", "sequential"),
    )
    got = {p.condition: train_languages(p) for p in plans}
    assert got == {"single": "en", "self": "en", "pair": "en+de", "zero_shot": "de", "sequential": "de>en"}


def test_best_layer_is_the_best_mean_monolingual_probe_score(tmp_path):
    def cell(layer, target, donor, perf):
        return dict(
            task="emotion",
            model="m",
            layer=layer,
            probe="logistic",
            metric="f1",
            target=target,
            donor=donor,
            cltm=1.0,
            perf_single=perf,
        )

    rows = [
        cell(1, "en", "en", 0.5),
        cell(1, "de", "de", 0.5),
        cell(2, "en", "en", 0.9),
        cell(2, "de", "de", 0.3),  # mean 0.6: the best
        cell(2, "en", "de", 0.0),  # off-diagonal rows do not count
        cell(3, "en", "en", 0.55),
        cell(3, "de", "de", 0.55),
    ]
    write_results(tmp_path, pl.DataFrame(schema=RUNS_COLUMNS), pl.DataFrame(rows), pl.DataFrame())
    assert best_layer(tmp_path, task="emotion") == 2
    with pytest.raises(FinetuneError, match="gender"):
        best_layer(tmp_path, task="gender")


# --- the command line


def _cli(args):
    from typer.testing import CliRunner

    from cltm.cli import app

    return CliRunner().invoke(app, args)


def _args(corpus, tmp_path, *extra):
    return [
        "finetune",
        "--manifest",
        str(corpus[0]),
        "--model",
        str(corpus[1]),
        "--task",
        "emotion",
        "--n",
        "1",
        "--seeds",
        "1",
        "--out",
        str(tmp_path / "o"),
        "--device",
        "cpu",
        "--quiet",
        *extra,
    ]


def test_cli_emotion_study_at_the_best_layer(corpus, tmp_path):
    sweep = [
        dict(
            task="emotion",
            model="m",
            layer=k,
            probe="logistic",
            metric="f1",
            target=t,
            donor=d,
            cltm=c,
            perf_single=p,
        )
        for k, p in ((1, 0.4), (2, 0.7), (3, 0.5))
        for t, d, c in (("en", "en", 1.0), ("de", "de", 1.0), ("en", "de", 0.5), ("de", "en", 0.1))
    ]
    write_results(tmp_path / "sweep", pl.DataFrame(schema=RUNS_COLUMNS), pl.DataFrame(sweep), pl.DataFrame())
    result = _cli(
        _args(
            corpus,
            tmp_path,
            "--from-matrix",
            str(tmp_path / "sweep"),
            "--top",
            "1",
            "--layer",
            "best",
            "--conditions",
            "single,zero_shot,sequential",
            "--peft",
            "weighted",
            "--lr",
            "1e-2",
            "--predictions",
        )
    )
    assert result.exit_code == 0, result.output
    runs = pl.read_parquet(tmp_path / "o" / "runs.parquet")
    assert set(runs["condition"]) == {"single", "zero_shot", "sequential"}
    assert (runs["layer"] == 2).all() and (runs["target"] == "en").all()
    assert (runs["probe"] == "finetune-weighted").all()
    predictions = pl.read_parquet(tmp_path / "o" / "predictions.parquet")
    assert set(predictions["train_languages"]) == {"en", "de", "de>en"}
    assert "12 prediction(s)" in result.output


@pytest.mark.parametrize(
    "extra, message",
    [
        (["--cells", "en:de", "--conditions", "single,transfer"], "transfer"),
        (["--cells", "en:de", "--layer", "9"], "--layer 9"),
        (["--cells", "en:de", "--layer", "best"], "--from-matrix"),
        (["--cells", "en:de", "--layer", "-1"], "--layer"),
        (["--cells", "en:de", "--peft", "lora", "--lora-targets", "qkv"], "qkv"),
        (["--cells", "en:de", "--patience", "1"], "--epochs"),
    ],
)
def test_cli_bad_study_options_give_a_clean_error(corpus, tmp_path, extra, message):
    result = _cli(_args(corpus, tmp_path, *extra))
    assert result.exit_code != 0
    assert message in result.output, result.output
    assert "Traceback" not in result.output


def _prediction_rows(run: dict, utts: list[str]) -> pl.DataFrame:
    return pl.DataFrame(
        [
            {
                **run,
                "utt_id": u,
                "true": "sad",
                "pred": "sad",
                "classes": ["happy", "sad"],
                "scores": [0.2, 0.8],
                "source": "finetune",
            }
            for u in utts
        ]
    )


def test_rank_part_files_of_predictions_fold_into_one_table(tmp_path):
    """What a 2-process run leaves (part files of runs and predictions) folds into one table of each."""
    from cltm.finetune.runs import (
        PREDICTIONS_PARTS_DIR,
        consolidate,
        part_path,
        read_finetune_predictions,
    )

    base = dict(task="emotion", model="m", layer=2, probe="finetune", target="en", seed=0)
    runs = [
        {**base, "condition": "single", "donor": "en", "train_languages": "en"},
        {**base, "condition": "sequential", "donor": "de", "train_languages": "de>en"},
    ]
    for rank, run in enumerate(runs):
        row = {**run, "config_hash": "h", "f1": 1.0, "source": "finetune"}
        path = part_path(tmp_path, rank)
        path.parent.mkdir(parents=True, exist_ok=True)
        pl.DataFrame([row]).write_parquet(path)
        ppath = part_path(tmp_path, rank, PREDICTIONS_PARTS_DIR)
        ppath.parent.mkdir(parents=True, exist_ok=True)
        _prediction_rows(run, ["u1", "u2"]).write_parquet(ppath)
    assert read_finetune_predictions(tmp_path).height == 4  # readers see the parts before folding
    folded = consolidate(tmp_path)
    assert folded.height == 2
    predictions = pl.read_parquet(tmp_path / "predictions.parquet")
    assert predictions.columns == list(PREDICTIONS_COLUMNS) and predictions.height == 4
    assert set(predictions["train_languages"]) == {"en", "de>en"}
    assert not (tmp_path / "runs.parts").exists() and not (tmp_path / PREDICTIONS_PARTS_DIR).exists()


def test_another_layer_may_share_the_directory_but_not_another_configuration(tmp_path):
    from cltm.finetune.runs import check_same_config

    runs = pl.DataFrame([dict(task="emotion", model="m", layer=2, probe="finetune-lora", config_hash="aaa")])
    check_same_config(
        runs, task="emotion", model="m", probe="finetune-lora", hash_="bbb", out_dir=tmp_path, layer=5
    )
    with pytest.raises(FinetuneError, match="at layer 2"):
        check_same_config(
            runs, task="emotion", model="m", probe="finetune-lora", hash_="bbb", out_dir=tmp_path, layer=2
        )


def test_from_matrix_that_is_not_a_results_directory_is_a_usage_error(corpus, tmp_path):
    (tmp_path / "empty").mkdir()
    result = _cli(_args(corpus, tmp_path, "--from-matrix", str(tmp_path / "empty")))
    assert result.exit_code == 2, result.output
    assert "--from-matrix" in result.output and "no results tables" in result.output
    missing = _cli(_args(corpus, tmp_path, "--from-matrix", str(tmp_path / "nope")))
    assert missing.exit_code == 2 and "Traceback" not in missing.output


def test_model_path_and_device_that_cannot_work_are_usage_errors(corpus, tmp_path):
    import torch

    args = [a if a != str(corpus[1]) else str(tmp_path / "no-model") for a in _args(corpus, tmp_path)]
    missing = _cli([*args, "--cells", "en:de"])
    assert missing.exit_code == 2 and "no such directory" in missing.output, missing.output
    if not torch.cuda.is_available():
        cuda = _cli(_args(corpus, tmp_path, "--cells", "en:de", "--device", "cuda"))
        assert cuda.exit_code == 2 and "no CUDA device" in cuda.output, cuda.output

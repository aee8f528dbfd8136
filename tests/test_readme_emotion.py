"""The README's emotion walkthrough ("Emotion across languages, humans vs models"), run at small scale.

The bash block marked ``<!-- walkthrough-emotion -->`` is read from README.md and run in a temporary
directory on two fake public corpora laid out as distributed (EmoDB: ``wav/03a01Wa.wav``; RAVDESS:
``Actor_01/03-01-05-01-01-01-01.wav``) whose clips are synthesised tones (an emotion-dependent pitch and
loudness, a speaker-dependent offset, noise), plus a fabricated listening-test table. Only what cannot run
offline or in seconds is substituted: the hub model id becomes a tiny local model, the GPU options become CPU,
sizes, seeds and folds become small ones.
"""

from __future__ import annotations

import csv
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import polars as pl
import soundfile as sf

README = Path(__file__).resolve().parents[1] / "README.md"
SR = 16000
#: shared emotion -> (EmoDB letter, RAVDESS code, pitch in Hz, loudness)
EMOTIONS = {
    "angry": ("W", "05", 260.0, 0.5),
    "happy": ("F", "03", 320.0, 0.35),
    "neutral": ("N", "01", 180.0, 0.2),
    "sad": ("T", "04", 140.0, 0.1),
}
EMODB_SPEAKERS = ("03", "08", "09", "10", "11", "12", "13", "14", "15", "16")


def _block() -> str:
    pattern = re.compile(r"<!-- walkthrough-emotion -->\n```bash\n(.*?)```", re.S)
    blocks = pattern.findall(README.read_text())
    assert len(blocks) == 1, "README emotion walkthrough marker changed"
    return blocks[0]


def _replacements(tiny_model: Path) -> list[tuple[str, str]]:
    return [
        ("facebook/wav2vec2-base", str(tiny_model)),
        ("--device cuda --dtype bfloat16", "--device cpu --num-workers 0"),
        ("--n 20", "--n 3"),
        ("--seeds 10", "--seeds 2"),
        ("--seeds 3", "--seeds 1"),
        ("--folds 5", "--folds 2"),
        ("--epochs 3", "--epochs 1"),
    ]


def _tone(path: Path, emotion: str, speaker: int, rng: np.random.Generator) -> None:
    _, _, pitch, loudness = EMOTIONS[emotion]
    seconds = 0.6 + 0.2 * rng.random()
    t = np.arange(int(seconds * SR)) / SR
    f0 = pitch * (1.0 + 0.04 * (speaker % 5)) * (1.0 + 0.02 * rng.standard_normal())
    signal = loudness * np.sin(2 * np.pi * f0 * t) + 0.3 * loudness * np.sin(4 * np.pi * f0 * t)
    signal += 0.01 * rng.standard_normal(t.size)
    path.parent.mkdir(parents=True, exist_ok=True)
    sf.write(path, signal.astype(np.float32), SR)


def _fake_emodb(root: Path, rng: np.random.Generator) -> None:
    for k, speaker in enumerate(EMODB_SPEAKERS):
        for emotion, (letter, _, _, _) in EMOTIONS.items():
            for text in ("a01", "a02", "b01"):
                _tone(root / "wav" / f"{speaker}{text}{letter}a.wav", emotion, k, rng)


def _fake_ravdess(root: Path, rng: np.random.Generator) -> None:
    for actor in range(1, 11):
        for emotion, (_, code, _, _) in EMOTIONS.items():
            for statement in ("01", "02"):
                for repetition in ("01", "02"):
                    intensity = "01" if emotion == "neutral" else "02"
                    name = f"03-01-{code}-{intensity}-{statement}-{repetition}-{actor:02d}.wav"
                    _tone(root / f"Actor_{actor:02d}" / name, emotion, actor, rng)


def _listening_test(manifest: pl.DataFrame, path: Path, rng: np.random.Generator) -> None:
    """Two listener groups (German and English L1), each answering every stimulus; natives are better."""
    words = {"angry": "Anger", "happy": "Happiness", "neutral": "Neutral", "sad": "Sadness"}
    with open(path, "w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(["participant", "L1", "stimulus", "answer"])
        for group in ("de", "en"):
            for k in range(3):
                for row in manifest.iter_rows(named=True):
                    right = rng.random() < (0.8 if row["language"] == group else 0.55)
                    answer = row["emotion"] if right else rng.choice(sorted(set(EMOTIONS) - {row["emotion"]}))
                    writer.writerow([f"{group}-{k}", group, row["utt_id"], words[answer]])


def test_readme_emotion_walkthrough_runs_as_written(tmp_path: Path) -> None:
    from cltm.extract import build_tiny_model

    block = _block()
    for old, _ in _replacements(tmp_path):
        assert old in block, f"README no longer contains {old!r}: update this test's substitutions"
    rng = np.random.default_rng(0)
    _fake_emodb(tmp_path / "EmoDB", rng)
    _fake_ravdess(tmp_path / "RAVDESS", rng)
    tiny_model = build_tiny_model(tmp_path / "tiny-model", arch="wav2vec2", seed=0, num_hidden_layers=2)

    env = dict(os.environ)
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    env.setdefault("OMP_NUM_THREADS", "1")
    script = block
    for old, new in _replacements(tiny_model):
        script = script.replace(old, new)
    # the listening test is the one input a researcher brings: fabricate it from the manifest the block makes
    head, marker, tail = script.partition("cltm human import")
    assert marker, "the walkthrough no longer imports a listening test"

    def run(code: str) -> None:
        done = subprocess.run(
            ["bash", "-c", "set -euxo pipefail\n" + code],
            cwd=tmp_path,
            env=env,
            capture_output=True,
            text=True,
            timeout=900,
        )
        assert done.returncode == 0, f"README command failed:\n{done.stderr[-4000:]}\n{done.stdout[-2000:]}"

    run(head)
    manifest = pl.read_parquet(tmp_path / "emotion.parquet")
    assert set(manifest["language"]) == {"de", "en"}
    assert set(manifest["emotion"]) == set(EMOTIONS)
    _listening_test(manifest, tmp_path / "listening_test.csv", rng)
    run(marker + tail)

    for path in [
        "emo.zarr",
        "emo/logreg/probe.parquet",
        "emo/logreg/cross.parquet",
        "emo/logreg/predictions.parquet",
        "emo/lda/probe.parquet",
        "emo/mlp/probe.parquet",
        "results/emotion/matrices.parquet",
        "results/emotion/confusion.parquet",
        "finetune/emotion/runs.parquet",
        "finetune/emotion/predictions.parquet",
        "listeners.parquet",
        "humans",
        "report/emotion/index.html",
    ]:
        assert (tmp_path / path).exists(), f"the walkthrough did not produce {path}"
    runs = pl.read_parquet(tmp_path / "results/emotion/runs.parquet")
    assert runs["uar"].is_not_null().all()
    finetune = pl.read_parquet(tmp_path / "finetune/emotion/runs.parquet")
    assert {"single", "zero_shot", "sequential"} <= set(finetune["condition"])
    page = (tmp_path / "report/emotion/index.html").read_text()
    assert 'id="humans-vs-models"' in page

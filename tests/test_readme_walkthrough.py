"""The README's real-data walkthrough, run as written at small scale.

The bash blocks marked ``<!-- walkthrough -->`` and the Python block marked ``<!-- walkthrough-python -->``
are read from README.md and run in order in a temporary directory. Only what cannot run offline or in seconds
is substituted: the hub model id becomes a tiny local model, the GPU options become CPU, and N, seeds, top-K
and layer numbers become ones that a small fake Common Voice release supports. A command that stops working,
or a README edit that breaks a command, fails this test.
"""

from __future__ import annotations

import csv
import os
import re
import subprocess
import sys
from pathlib import Path

import polars as pl

README = Path(__file__).resolve().parents[1] / "README.md"
# Common Voice locale -> the demo-corpus language that provides its audio
LOCALES = {"ca": "en", "es": "de", "eu": "es"}


def _blocks(marker: str, language: str) -> list[str]:
    text = README.read_text()
    pattern = re.compile(rf"<!-- {re.escape(marker)} -->\n```{language}\n(.*?)```", re.S)
    return pattern.findall(text)


def _replacements(tiny_model: Path) -> list[tuple[str, str]]:
    return [
        ("utter-project/mHuBERT-147", str(tiny_model)),
        ("--device cuda --dtype bfloat16", "--device cpu --num-workers 0"),
        ("--n 60", "--n 3"),
        ("--n 1000", "--n 6"),
        ("--seeds 10", "--seeds 2"),
        ("--seeds 3", "--seeds 1"),
        ("--top 4", "--top 1"),
        ("n=60", "n=3"),
        ("n=1000", "n=6"),
        ("seeds=10", "seeds=2"),
        ("layers=[6, 9, 12]", "layers=[0, 1, 2]"),
        ("read_layer(9)", "read_layer(2)"),
        ('pl.col("layer") == 9', 'pl.col("layer") == 2'),
    ]


def _substitute(text: str, tiny_model: Path) -> str:
    for old, new in _replacements(tiny_model):
        text = text.replace(old, new)
    return text


def _fake_common_voice(root: Path, corpus_dir: Path) -> None:
    """A Common Voice release layout (new gender vocabulary) whose clips come from the synthetic corpus."""
    manifest = pl.read_parquet(corpus_dir / "manifest.parquet")
    gender_vocab = {"female": "female_feminine", "male": "male_masculine"}
    header = ["client_id", "path", "sentence", "up_votes", "down_votes", "age", "gender", "accents", "locale"]
    for locale, language in LOCALES.items():
        clips = root / locale / "clips"
        clips.mkdir(parents=True)
        rows = manifest.filter(pl.col("language") == language)
        by_split: dict[str, list[list[str]]] = {"train": [], "dev": [], "test": []}
        for row in rows.iter_rows(named=True):
            name = f"common_voice_{locale}_{row['utt_id']}.wav"
            os.link(corpus_dir / row["path"], clips / name)
            speaker, gender = f"{locale}-{row['speaker']}", gender_vocab[row["gender"]]
            by_split[row["split"]].append([speaker, name, "text", "2", "0", "", gender, "", locale])
        for split, lines in by_split.items():
            with open(root / locale / f"{split}.tsv", "w", newline="") as f:
                writer = csv.writer(f, delimiter="\t", quoting=csv.QUOTE_NONE)
                writer.writerow(header)
                writer.writerows(lines)


def test_readme_walkthrough_runs_as_written(tmp_path: Path) -> None:
    from cltm.corpus.synth import synthesize_corpus
    from cltm.extract import build_tiny_model

    bash_blocks = _blocks("walkthrough", "bash")
    python_blocks = _blocks("walkthrough-python", "python")
    assert len(bash_blocks) == 2 and len(python_blocks) == 1, "README walkthrough markers changed"
    readme_code = "".join(bash_blocks + python_blocks)
    for old, _ in _replacements(tmp_path):
        assert old in readme_code, f"README no longer contains {old!r}: update this test's substitutions"

    corpus_dir = synthesize_corpus(
        tmp_path / "synth",
        languages=list(LOCALES.values()),
        speakers_per_gender=3,
        utts_per_speaker=8,
        progress=False,
    ).parent
    _fake_common_voice(tmp_path / "cv-corpus-20.0", corpus_dir)
    tiny_model = build_tiny_model(tmp_path / "tiny-model", arch="hubert", seed=0, num_hidden_layers=2)

    env = dict(os.environ)
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    env.setdefault("OMP_NUM_THREADS", "1")
    for block in bash_blocks:
        script = "set -euxo pipefail\n" + _substitute(block, tiny_model)
        done = subprocess.run(
            ["bash", "-c", script], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600
        )
        assert done.returncode == 0, f"README command failed:\n{done.stderr[-4000:]}\n{done.stdout[-2000:]}"

    # what the walkthrough promises exists and holds the three locales
    for path in [
        "cv.parquet",
        "cv-mhubert.zarr",
        "results/gender/matrices.parquet",
        "results/speaker/matrices.parquet",
        "report/gender/index.html",
        "finetune/gender/runs.parquet",
        "results/gender-finetune/matrices.parquet",
        "report/gender-vs-finetune/index.html",
        "probe/gender/probe.parquet",
        "probe/speaker/probe.parquet",
    ]:
        assert (tmp_path / path).exists(), f"the walkthrough did not produce {path}"
    matrices = pl.read_parquet(tmp_path / "results/gender/matrices.parquet")
    assert set(matrices["target"]) == set(LOCALES)
    finetune_runs = pl.read_parquet(tmp_path / "finetune/gender/runs.parquet")
    assert set(finetune_runs["source"]) == {"finetune"}

    code = _substitute(python_blocks[0], tiny_model)
    done = subprocess.run(
        [sys.executable, "-c", code], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600
    )
    assert done.returncode == 0, f"README Python example failed:\n{done.stderr[-4000:]}"

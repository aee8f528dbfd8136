"""`cltm corpus synth`: the built-in demo corpus. A plain function; the `cltm corpus` group registers it."""

from __future__ import annotations

from pathlib import Path

import typer

from cltm.cli._errors import EXIT_FAILED, EXIT_USAGE, fail


def synth_command(
    out: Path = typer.Option(
        ...,
        "--out",
        help="Directory to write into: DIR/audio/<lang>/<speaker>/*.wav, DIR/manifest.parquet, "
        "DIR/speakers.parquet (created if missing; existing files of the same name are overwritten).",
    ),
    languages: str = typer.Option(
        None,
        "--languages",
        help="Comma-separated espeak-ng language codes with built-in sentences, e.g. en,de,es. "
        "Default: en,de,es,it,pl,cs. Built in: cs,de,en,es,fr,it,nl,pl,pt,sv.",
    ),
    speakers_per_gender: int = typer.Option(
        6,
        "--speakers-per-gender",
        min=3,
        help="Female and male speakers per language (>= 3); the last max(2, K/4) of each gender are the "
        "test split.",
    ),
    utts_per_speaker: int = typer.Option(
        10, "--utts-per-speaker", min=2, help="Utterances (short sentences) per speaker (>= 2)."
    ),
    seed: int = typer.Option(
        0, "--seed", help="Seed for the voices, sentences and noise; the same seed gives identical files."
    ),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="No progress bar."),
) -> None:
    import polars as pl
    from rich.console import Console

    from cltm.corpus.synth import SynthError, synthesize_corpus

    console = Console()
    langs = None
    if languages is not None:
        langs = [code.strip() for code in languages.split(",") if code.strip()]
        if not langs:
            raise fail("--languages: give at least one language code, e.g. en,de,es", EXIT_USAGE)
    try:
        manifest_path = synthesize_corpus(
            out,
            languages=langs,
            speakers_per_gender=speakers_per_gender,
            utts_per_speaker=utts_per_speaker,
            seed=seed,
            progress=not quiet,
        )
    except ValueError as err:  # unknown language, bad sizes, --out a file: the message says what is allowed
        raise fail(str(err), EXIT_USAGE) from None
    except SynthError as err:
        raise fail(str(err), EXIT_FAILED) from None
    except OSError as err:  # read-only or full disk
        raise fail(f"cannot write the corpus to {out}: {err}", EXIT_FAILED) from None

    manifest = pl.read_parquet(manifest_path)
    by_split = dict(manifest.group_by("split").agg(pl.col("speaker").n_unique()).iter_rows())
    console.print(
        f"[bold]{manifest.height}[/bold] utterances, {manifest['speaker'].n_unique()} speakers "
        f"({by_split.get('train', 0)} train / {by_split.get('test', 0)} test), "
        f"{manifest['duration'].sum() / 60:.1f} min of audio in {manifest['language'].n_unique()} languages: "
        f"{', '.join(manifest['language'].unique(maintain_order=True).to_list())}"
    )
    console.print(f"manifest: {manifest_path}")


# one line per paragraph: the help renderer keeps single newlines
synth_command.__doc__ = (
    "Synthesise the multilingual, multi-speaker demo corpus offline with espeak-ng.\n\n"
    "Speakers are espeak voice variants (female f1-f5, male m1-m7) with their own pitch, pitch range, "
    "speaking rate, word gap and noise level; each language has its own recording channel. The split is "
    "speaker-disjoint, with two or more test speakers per gender. Prints a summary and the manifest path."
)

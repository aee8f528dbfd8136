"""`cltm demo`: the whole pipeline on the built-in synthetic corpus, offline."""

from __future__ import annotations

from pathlib import Path

import typer

ORDER = 90


def demo(
    out: Path = typer.Option(
        Path("demo-out"), "--out", help="Directory for everything the demo writes (reused: a re-run resumes)."
    ),
    quick: bool = typer.Option(
        False, "--quick", help="A smaller corpus, model and sweep (about a minute): for CI and a first look."
    ),
    seed: int = typer.Option(0, "--seed", help="Seed for the corpus and the tiny model's random weights."),
    progress: bool = typer.Option(True, "--progress/--no-progress", help="Show progress bars."),
) -> None:
    """Run the whole pipeline on the built-in demo, offline, in a few minutes on a laptop.

    Synthesises a multilingual corpus with espeak-ng, builds a tiny random-weight HuBERT (plus the log-mel
    fbank baseline), extracts all layers into Zarr caches, computes gender and speaker-verification CLTMs for
    every layer, and renders the HTML report.
    """
    from rich.console import Console

    from cltm.demo import run_demo

    console = Console()
    summary = run_demo(out, quick=quick, seed=seed, progress=progress, log=console.print)
    timings = ", ".join(f"{k} {v:.0f} s" for k, v in summary.seconds.items())
    console.print(f"\n[bold green]Demo done[/] ({timings}).")
    if summary.skipped.height:
        console.print(f"Left out for too little data: {summary.skipped.height} (task, language) pair(s).")
    console.print(f"  report:   [bold]{summary.report}[/]  (open it in a browser)")
    console.print(f"  results:  {summary.results_dir}/{{runs,matrices,properties}}.parquet")
    console.print(f"  caches:   {', '.join(str(p) for p in summary.caches.values())}")
    console.print(f"  corpus:   {summary.manifest}")
    console.print(
        "Next: `cltm matrix --help` for your own sweeps, `cltm report --help` for the figures; "
        "the tiny model's layers are random, so read its matrices as a pipeline check, not as findings."
    )


def register(app: typer.Typer) -> None:
    app.command("demo")(demo)

"""`cltm store info|verify|export`: look at, check and convert an embedding cache.

Exit codes (cltm.cli._errors): 0 ok; 1 the cache has problems (verify) or the work failed; 2 a bad option or a
CACHE that cannot be opened.
"""

from __future__ import annotations

from pathlib import Path

import typer

from cltm.cli._errors import EXIT_FAILED, EXIT_USAGE, fail

ORDER = 30

store_app = typer.Typer(
    help="Inspect, verify and export an embedding cache built by `cltm extract`.", no_args_is_help=True
)


def _open(cache_path: Path):
    from cltm.store import Cache, CacheError

    try:
        return Cache.open(cache_path)
    except CacheError as err:
        raise fail(str(err), EXIT_USAGE) from None


def _human_bytes(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(n) < 1024 or unit == "TiB":
            return f"{n:,.1f} {unit}"
        n /= 1024
    return f"{n} B"


@store_app.command("info")
def info_command(
    cache_path: Path = typer.Argument(..., metavar="CACHE", help="Cache directory (e.g. feats.zarr)."),
    failures: int = typer.Option(10, "--failures", help="How many failed rows to list."),
) -> None:
    """Model, layers, dim, rows done/failed, bytes on disk and per hour of audio."""
    from rich.console import Console
    from rich.table import Table

    from cltm.store.tools import cache_info

    cache = _open(cache_path)
    try:
        info = cache_info(cache)
        fails = cache.failures
    except Exception as err:  # damaged arrays or tables: say so, and point at verify
        raise fail(
            f"{cache_path}: cannot read the cache ({type(err).__name__}: {err}); run `cltm store verify "
            f"{cache_path}`",
            EXIT_FAILED,
        ) from None
    table = Table(show_header=False, box=None)
    for key in (
        "path",
        "model_id",
        "revision",
        "config_hash",
        "n_layers",
        "dim",
        "pooling",
        "dtype",
        "rows",
        "done",
        "failed",
        "pending",
        "frames_layers",
        "tool",
        "created",
    ):
        table.add_row(key, str(info[key]))
    table.add_row("audio hours (done)", f"{info['audio_hours_done']:.3f}")
    table.add_row("bytes on disk", _human_bytes(info["bytes_on_disk"]))
    per_hour = info["bytes_per_audio_hour"]
    table.add_row("bytes per audio hour", _human_bytes(per_hour) if per_hour == per_hour else "n/a")
    console = Console()
    console.print(table)
    if fails.height:
        console.print(f"\n[yellow]{fails.height} failed rows[/yellow] (first {min(failures, fails.height)}):")
        for rec in fails.head(failures).iter_rows(named=True):
            console.print(f"  {rec['utt_id']}  {rec['stage']}: {rec['error']}")


@store_app.command("verify")
def verify_command(
    cache_path: Path = typer.Argument(..., metavar="CACHE", help="Cache directory to check."),
    repair: bool = typer.Option(
        False, "--repair", help="Mark rows with missing/bad data not done, so `cltm extract` redoes them."
    ),
) -> None:
    """Check every done row: chunk present, intact (size, checksum), finite, consistent with the manifest.

    Exit 1 on problems (each listed), 0 when the cache is sound.
    """
    from rich.console import Console

    from cltm.store.tools import repair_cache, verify_path

    console = Console()
    report = verify_path(cache_path)
    for warning in report.warnings:
        console.print(f"[yellow]warning:[/yellow] {warning}")
    if report.ok:
        console.print(f"[green]ok[/green]: {report.checked_rows} done rows checked in {cache_path}")
        return
    for problem in report.problems:
        console.print(f"[red]problem:[/red] {problem}")
    if repair and report.bad_rows:
        try:
            n = repair_cache(cache_path, report)
        except Exception as err:
            raise fail(
                f"{cache_path}: --repair could not write the done flags ({err})", EXIT_FAILED
            ) from None
        console.print(
            f"[yellow]{len(report.problems)} problem(s)[/yellow]; {n} row(s) marked not done. Re-run the "
            "same `cltm extract` command to recompute them."
        )
    else:
        console.print(
            f"[red]{len(report.problems)} problem(s)[/red]. "
            + (
                f"{len(report.bad_rows)} row(s) can be recomputed: `cltm store verify --repair`, then re-run "
                "the same `cltm extract`."
                if report.bad_rows
                else "The cache itself is inconsistent; rebuild it with `cltm extract --force`."
            )
        )
    raise typer.Exit(EXIT_FAILED)


@store_app.command("export")
def export_command(
    cache_path: Path = typer.Argument(..., metavar="CACHE", help="Cache directory to export."),
    format: str = typer.Option("h5", "--format", help="Output format: h5 (HDF5, with metadata) or npz."),
    out: Path = typer.Option(..., "--out", help="Output file (never inside a cache)."),
    force: bool = typer.Option(False, "--force", help="Replace --out if it already exists."),
) -> None:
    """Write the pooled features, flags, manifest, failures and metadata to one file."""
    from cltm.store import CacheError
    from cltm.store.tools import EXPORTERS, export_cache

    if format not in EXPORTERS:
        raise fail(f"--format: use one of {', '.join(sorted(EXPORTERS))}; got {format!r}", EXIT_USAGE)
    cache = _open(cache_path)
    try:
        written = export_cache(cache, out, format, force=force)
    except (CacheError, FileExistsError) as err:
        raise fail(str(err), EXIT_USAGE) from None
    except Exception as err:  # disk full, read-only target, a damaged chunk
        raise fail(
            f"export to {out} failed ({type(err).__name__}: {err}); nothing was written", EXIT_FAILED
        ) from None
    typer.echo(f"wrote {written}")


def register(app: typer.Typer) -> None:
    app.add_typer(store_app, name="store")

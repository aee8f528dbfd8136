"""`cltm extract`: pooled hidden states of every layer into a resumable Zarr cache.

Exit codes (cltm.cli._errors): 0 done (failed inputs are recorded and reported); 1 the run failed (the disk,
or not one row could be extracted), another writer holds the cache, or --strict with failed inputs; 2 a bad
option, manifest, model or --out.
"""

from __future__ import annotations

import errno
from pathlib import Path

import typer

from cltm.cli._errors import EXIT_FAILED, EXIT_USAGE, fail

_DISK_ERRNOS = {errno.ENOSPC, errno.EROFS, errno.EACCES, errno.EPERM, errno.EIO, errno.EDQUOT}

ORDER = 20


def _csv_ints(text: str | None, option: str) -> list[int]:
    if not text:
        return []
    try:
        return [int(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise fail(f"{option}: expected comma-separated layer numbers, e.g. 6,9; got {text!r}") from None


def extract_command(
    manifest: Path = typer.Option(..., "--manifest", help="Corpus manifest (Parquet/CSV/TSV) to extract."),
    model: str = typer.Option(
        ...,
        "--model",
        help="HF model id (e.g. utter-project/mHuBERT-147), a local model directory, or 'fbank'.",
    ),
    out: Path = typer.Option(..., "--out", help="Cache directory to create or resume (e.g. feats.zarr)."),
    revision: str | None = typer.Option(None, "--revision", help="Model revision (branch, tag or commit)."),
    device: str = typer.Option("auto", "--device", help="auto | cpu | cuda (auto = cuda when available)."),
    dtype: str = typer.Option(
        "float32", "--dtype", help="Compute precision: float32 | float16 | bfloat16 (autocast)."
    ),
    batch_seconds: float = typer.Option(
        120.0, "--batch-seconds", help="Audio seconds per batch (utterances are sorted by length first)."
    ),
    num_workers: int | None = typer.Option(
        None,
        "--num-workers",
        help="DataLoader worker processes for decoding (default: 2 on CPU, up to 8 on a GPU).",
    ),
    pool: str = typer.Option("mean,std", "--pool", help="Pooled statistics to store: mean, std or mean,std."),
    frames_layers: str | None = typer.Option(
        None, "--frames-layers", help="Also store frame-level features of these layers, e.g. 6,9."
    ),
    trim_silence: bool = typer.Option(
        False, "--trim-silence", help="Cut leading/trailing silence before encoding."
    ),
    max_seconds: float = typer.Option(
        60.0,
        "--max-seconds",
        help="Files longer than this are encoded in windows of this length (at least 0.5).",
    ),
    strict: bool = typer.Option(False, "--strict", help="Exit non-zero if any input failed."),
    force: bool = typer.Option(
        False,
        "--force",
        help="Rebuild a cache made from another model/revision/manifest/dtype (default: refuse); "
        "on a matching cache, re-extract this shard's rows. Deletes only a directory that is provably a "
        "cltm cache, and never while another writer runs in it.",
    ),
    shard: str | None = typer.Option(
        None, "--shard", help="k/n: extract shard k (from 0) of n. Default: RANK/WORLD_SIZE env (torchrun)."
    ),
    trust_remote_code: bool = typer.Option(
        False, "--trust-remote-code", help="Allow model code from the hub repository (off by default)."
    ),
    flush_seconds: float = typer.Option(
        60.0,
        "--flush-seconds",
        help="Write journaled rows into the cache chunks at least this often (a crash loses at most the "
        "batch in flight either way: finished batches are journaled first).",
    ),
    chunk_rows: int = typer.Option(
        512, "--chunk-rows", help="Rows per cache chunk (new caches only); shards own whole chunks."
    ),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="No progress bar."),
) -> None:
    """Extract pooled (mean/std over valid frames) hidden states of EVERY layer into a Zarr cache.

    Re-running the same command resumes (done rows are skipped). Unusable audio is recorded in the cache's
    failure table and the run goes on; see `cltm store info CACHE`.
    """
    from rich.console import Console

    from cltm.corpus import ManifestError
    from cltm.extract.runner import MIN_MAX_SECONDS, extract, parse_shard
    from cltm.store import CacheError
    from cltm.store.lock import CacheLockedError

    try:  # the CLI has its own progress bar; transformers' weight-loading bars would interleave with it
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()
    except ImportError:
        pass
    console = Console(stderr=True)
    pools = [p.strip() for p in pool.split(",") if p.strip()]
    if not pools or any(p not in ("mean", "std") for p in pools):
        raise fail(f"--pool: use mean, std or mean,std; got {pool!r}")
    if dtype not in ("float32", "float16", "bfloat16"):
        raise fail(f"--dtype: use float32, float16 or bfloat16; got {dtype!r}")
    if device not in ("auto", "cpu", "cuda") and not device.startswith("cuda:"):
        raise fail(f"--device: use auto, cpu or cuda; got {device!r}")
    if chunk_rows < 1:
        raise fail("--chunk-rows: must be at least 1")
    if not batch_seconds > 0:
        raise fail(f"--batch-seconds: must be positive; got {batch_seconds}")
    if not max_seconds >= MIN_MAX_SECONDS:
        raise fail(
            f"--max-seconds {max_seconds}: must be at least {MIN_MAX_SECONDS} (shorter windows pool only "
            "a few frames each; the default is 60)"
        )
    try:
        shard_kn = parse_shard(shard)
    except ValueError as err:
        raise fail(f"--shard: {err}") from None
    if not manifest.is_file():
        raise fail(f"--manifest: {manifest} does not exist" + (" (a directory)" if manifest.is_dir() else ""))
    layers = _csv_ints(frames_layers, "--frames-layers")
    try:
        summary = extract(
            manifest,
            model,
            out,
            revision=revision,
            trust_remote_code=trust_remote_code,
            device=device,
            dtype=dtype,
            batch_seconds=batch_seconds,
            num_workers=num_workers,
            pool=pools,
            frames_layers=layers,
            trim_silence=trim_silence,
            force=force,
            shard=shard_kn,
            max_seconds=max_seconds,
            flush_seconds=flush_seconds,
            chunk_rows=chunk_rows,
            progress=not quiet,
        )
    except CacheLockedError as err:
        raise fail(str(err), EXIT_FAILED) from None
    except (CacheError, ManifestError, ValueError) as err:
        raise fail(str(err), EXIT_USAGE) from None
    except OSError as err:
        # the disk (full, read-only, no permission) failed the run; anything else (a model directory without
        # weights, an unknown hub id offline) is an input to fix
        code = EXIT_FAILED if getattr(err, "errno", None) in _DISK_ERRNOS else EXIT_USAGE
        raise fail(f"{type(err).__name__}: {err}", code) from None
    except RuntimeError as err:  # a writer thread that died
        raise fail(str(err), EXIT_FAILED) from None
    except ImportError as err:  # e.g. a model class this transformers does not have
        raise fail(f"cannot load the model {model}: {err}", EXIT_USAGE) from None
    except KeyboardInterrupt:
        console.print(
            f"[yellow]interrupted[/yellow]: finished rows were written to {out}; run the same command again "
            "to resume."
        )
        raise typer.Exit(130) from None
    k, n = summary.shard
    where = f" (shard {k}/{n})" if n > 1 else ""
    console.print(
        f"[bold]{summary.n_done_now}[/bold] rows extracted{where}, {summary.n_skipped} already done, "
        f"[bold]{summary.n_failed}[/bold] failed; {summary.audio_seconds / 3600:.3f} h of audio in "
        f"{summary.wall_seconds:.1f} s ({summary.realtime_factor:.0f}x real time)."
    )
    console.print(f"cache: {summary.cache_path}  ({summary.n_done_total}/{summary.n_rows} rows done)")
    if summary.n_failed:
        for rec in summary.failures.head(5).iter_rows(named=True):
            console.print(f"  [yellow]{rec['utt_id']}[/yellow] {rec['stage']}: {rec['error']}")
        more = summary.n_failed - min(5, summary.n_failed)
        console.print(
            (f"  … and {more} more. " if more else "  ")
            + f"All failures: `cltm store info {summary.cache_path}` or Cache.open(...).failures."
        )
        if summary.n_done_total == 0:
            raise fail("no row of the manifest could be extracted; see the reasons above.", EXIT_FAILED)
        if strict:
            raise fail("--strict: failing because some inputs could not be extracted.", EXIT_FAILED)


def register(app: typer.Typer) -> None:
    app.command("extract")(extract_command)

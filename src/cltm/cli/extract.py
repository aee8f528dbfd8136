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
from cltm.extract.settings import (  # no torch: the defaults are read here, the run is imported on use
    MIN_MAX_SECONDS,
    BatchSettings,
    ExtractSettings,
    ModelSettings,
    OutputSettings,
    SettingsError,
    parse_shard,
)

_DISK_ERRNOS = {errno.ENOSPC, errno.EROFS, errno.EACCES, errno.EPERM, errno.EIO, errno.EDQUOT}

ORDER = 20
# the options' defaults are the settings' defaults (one place)
_MODEL, _BATCH, _OUTPUT = ModelSettings(), BatchSettings(), OutputSettings()


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
    revision: str | None = typer.Option(
        _MODEL.revision, "--revision", help="Model revision (branch, tag or commit)."
    ),
    device: str = typer.Option(
        _MODEL.device, "--device", help="auto | cpu | cuda (auto = cuda when available)."
    ),
    dtype: str = typer.Option(
        _MODEL.dtype, "--dtype", help="Compute precision: float32 | float16 | bfloat16 (autocast)."
    ),
    batch_seconds: float = typer.Option(
        _BATCH.batch_seconds,
        "--batch-seconds",
        help="Audio seconds per batch (utterances are sorted by length first).",
    ),
    num_workers: int | None = typer.Option(
        _BATCH.num_workers,
        "--num-workers",
        help="DataLoader worker processes for decoding (default: 2 on CPU, up to 8 on a GPU).",
    ),
    pool: str = typer.Option(
        ",".join(_OUTPUT.pool), "--pool", help="Pooled statistics to store: mean, std or mean,std."
    ),
    frames_layers: str | None = typer.Option(
        None, "--frames-layers", help="Also store frame-level features of these layers, e.g. 6,9."
    ),
    trim_silence: bool = typer.Option(
        _BATCH.trim_silence, "--trim-silence", help="Cut leading/trailing silence before encoding."
    ),
    max_seconds: float = typer.Option(
        _BATCH.max_seconds,
        "--max-seconds",
        help=f"Files longer than this are encoded in windows of this length (at least {MIN_MAX_SECONDS}).",
    ),
    strict: bool = typer.Option(False, "--strict", help="Exit non-zero if any input failed."),
    force: bool = typer.Option(
        _OUTPUT.force,
        "--force",
        help="Rebuild a cache made from another model/revision/manifest/dtype (default: refuse); "
        "on a matching cache, re-extract this shard's rows. Deletes only a directory that is provably a "
        "cltm cache, and never while another writer runs in it.",
    ),
    shard: str | None = typer.Option(
        None, "--shard", help="k/n: extract shard k (from 0) of n. Default: RANK/WORLD_SIZE env (torchrun)."
    ),
    trust_remote_code: bool = typer.Option(
        _MODEL.trust_remote_code,
        "--trust-remote-code",
        help="Allow model code from the hub repository (off by default).",
    ),
    flush_seconds: float = typer.Option(
        _OUTPUT.flush_seconds,
        "--flush-seconds",
        help="Write journaled rows into the cache chunks at least this often (a crash loses at most the "
        "batch in flight either way: finished batches are journaled first).",
    ),
    chunk_rows: int = typer.Option(
        _OUTPUT.chunk_rows,
        "--chunk-rows",
        help="Rows per cache chunk (new caches only); shards own whole chunks.",
    ),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="No progress bar."),
) -> None:
    """Extract pooled (mean/std over valid frames) hidden states of EVERY layer into a Zarr cache.

    Re-running the same command resumes (done rows are skipped). Unusable audio is recorded in the cache's
    failure table and the run goes on; see `cltm store info CACHE`.
    """
    from rich.console import Console

    from cltm.corpus import ManifestError
    from cltm.extract.runner import extract
    from cltm.progress import counting_progress
    from cltm.store import CacheError
    from cltm.store.lock import CacheLockedError

    try:  # the CLI has its own progress bar; transformers' weight-loading bars would interleave with it
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()
    except ImportError:
        pass
    console = Console(stderr=True)
    pools = tuple(p.strip() for p in pool.split(",") if p.strip())
    layers = _csv_ints(frames_layers, "--frames-layers")
    raw = {"pool": pool, "frames_layers": frames_layers, "shard": shard}  # as typed, for the messages
    try:
        shard_kn = parse_shard(shard)  # RANK/WORLD_SIZE are read (and checked) here when --shard is absent
    except ValueError as err:
        raise fail(f"--shard: {err}") from None
    try:
        settings = ExtractSettings(
            model=ModelSettings(
                revision=revision, trust_remote_code=trust_remote_code, device=device, dtype=dtype
            ),
            batching=BatchSettings(
                batch_seconds=batch_seconds,
                num_workers=num_workers,
                max_seconds=max_seconds,
                trim_silence=trim_silence,
            ),
            output=OutputSettings(
                pool=pools,
                frames_layers=tuple(layers),
                chunk_rows=chunk_rows,
                flush_seconds=flush_seconds,
                force=force,
            ),
            shard=shard_kn,
        )
    except SettingsError as err:  # the option's name and the value as typed, not the dataclass field
        option = "--" + err.field.replace("_", "-")
        raise fail(f"{option}: {err.rule}; got {raw.get(err.field, err.value)!r}") from None
    if not manifest.is_file():
        raise fail(f"--manifest: {manifest} does not exist" + (" (a directory)" if manifest.is_dir() else ""))
    bar = counting_progress(
        "audio s", title="[bold]{task.description}", console=console, enabled=not quiet, transient=False
    )
    label = f"extract shard {shard_kn[0]}/{shard_kn[1]}" if shard_kn[1] > 1 else "extract"

    def advance(done: float, total: float) -> None:  # the runner's progress(done_seconds, total_seconds)
        if not bar.task_ids:  # added at the first call: no empty bar while the model loads
            bar.add_task(label, total=max(total, 1e-9))
        task = bar.tasks[0]
        speed = f" · {done / task.elapsed:.0f}x real time" if task.elapsed and done > 0 else ""
        bar.update(task.id, completed=done, total=max(total, 1e-9), description=label + speed)

    try:
        with bar:
            summary = extract(manifest, model, out, settings=settings, progress=advance)
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

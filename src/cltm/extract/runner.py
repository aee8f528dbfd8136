"""The resumable, shardable extraction runner: manifest + model -> pooled hidden states of every layer.

How a run goes:

Settings come as one :class:`cltm.extract.settings.ExtractSettings` (validated when built); progress goes to a
callback (``progress(done_seconds, total_seconds)``), never to the terminal.

1. Rows this process owns: the cache's row chunks (C rows each) are dealt round-robin to ``n`` shards, so two
   writers never touch the same chunk file. Rows already ``done`` are skipped (resume).
2. The owned rows are processed window by window (a few chunks at a time, in cache order); inside a window
   they are sorted by duration, longest first, and cut into batches of about ``batch_seconds`` of audio, so
   padding is small and a batch that would not fit in memory shows up at once.
3. DataLoader workers decode (``cltm.audio.load_audio``: mono, resampled), normalise as the model's feature
   extractor would, pad too-short inputs to the model's receptive field and cut too-long ones into windows.
4. The main thread runs the model (autocast on GPU) and pools every hidden state over valid frames only
   (frame counts from the model's own conv arithmetic); windows of one file are merged exactly (Chan's
   parallel mean/variance).
5. Every finished batch is first saved to a small journal file (``CACHE/journal/<shard>/``, written to a
   temporary name and renamed, so a file is complete or absent); a writer thread buffers the rows and writes
   them into the cache when a window is complete or every ``flush_seconds`` (data first, ``done`` flags
   after), then deletes the journal files it has covered. A run that finds journal files (a killed run)
   writes them into the cache before it starts, so a SIGKILL loses at most the batch in flight, while the
   chunk files are still written once per window.
6. The run holds its shard's writer lock (``CACHE/locks/<shard>.lock``, :mod:`cltm.store.lock`) from when
   the cache is open until it returns: a second writer of the same shard, or a ``--force`` that would delete
   the cache under it, is refused with the holder's pid and host. A killed run's lock does not block.

Rows whose pooled mean is all zeros at some layer (silence through a model whose biases are zero) are
recorded as failures, not stored: such a row cannot be told apart from lost data, and ``cltm store verify``
would flag it, so extraction and verification tell the same story.
"""

from __future__ import annotations

import os
import queue
import shutil
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl
import torch

from cltm.extract.models import LoadedModel, load_model, windows
from cltm.extract.settings import (  # noqa: F401 (MIN_MAX_SECONDS: re-exported, its old home)
    MIN_MAX_SECONDS,
    BatchSettings,
    ExtractSettings,
    ModelSettings,
    OutputSettings,
    ProgressCallback,
    parse_shard,
)
from cltm.fileio import atomic_write
from cltm.store.cache import Cache, open_or_create
from cltm.store.lock import shard_lock

# failure stages: "decode" (cltm.audio could not give samples), "forward" (the model failed or gave NaN/inf)


@dataclass
class ExtractionSummary:
    """What one run did. ``failed`` counts this run's rows that could not be extracted."""

    cache_path: Path
    n_rows: int  # rows in the cache
    n_owned: int  # rows this shard owns
    n_skipped: int  # owned rows already done before this run
    n_done_now: int  # rows extracted and written by this run
    n_failed: int
    audio_seconds: float  # audio extracted by this run
    wall_seconds: float
    shard: tuple[int, int] = (0, 1)
    failures: pl.DataFrame = field(default_factory=lambda: pl.DataFrame())

    @property
    def n_done_total(self) -> int:
        return int(Cache.open(self.cache_path).done.sum())

    @property
    def realtime_factor(self) -> float:
        return self.audio_seconds / self.wall_seconds if self.wall_seconds > 0 else float("nan")


def owned_chunks(n_chunks: int, shard: tuple[int, int]) -> np.ndarray:
    """The chunk indices shard k of n writes: k, k+n, k+2n, … (disjoint across shards, covering all)."""
    k, n = shard
    return np.arange(k, n_chunks, n, dtype=np.int64)


def header_durations(manifest: pl.DataFrame, rows: np.ndarray, *, threads: int = 8) -> np.ndarray:
    """Seconds per row for sorting: manifest duration, end-start, or the file header (NaN if unreadable)."""
    from cltm.audio import AudioError, audio_duration

    def column(name: str) -> np.ndarray:
        if name not in manifest.columns:
            return np.full(len(rows), np.nan)
        return manifest[name].cast(pl.Float64).fill_null(np.nan).to_numpy()[rows].astype(float)

    dur, starts, ends = column("duration"), column("start"), column("end")
    seg = ~np.isnan(ends)
    dur = np.where(np.isnan(dur) & seg, ends - np.nan_to_num(starts), dur)
    missing = np.flatnonzero(np.isnan(dur))
    if missing.size:
        paths = manifest["path"].to_numpy()[rows[missing]]

        def one(path: str) -> float:
            try:
                return audio_duration(path)
            except (AudioError, OSError, ValueError):
                return float("nan")

        with ThreadPoolExecutor(max_workers=threads) as pool:
            found = np.array(list(pool.map(one, paths)), dtype=float)
        dur[missing] = found - np.nan_to_num(starts[missing])
    return dur


def plan_batches(
    rows: np.ndarray,
    durations: np.ndarray,
    chunk_of_row: np.ndarray,
    *,
    batch_seconds: float,
    window_chunks: int,
) -> list[tuple[int, list[int]]]:
    """Cut rows into (window id, batch rows).

    Windows of ``window_chunks`` owned chunks in cache order; inside, longest first, batches of at most
    ``batch_seconds`` of audio (a longer file is a batch of its own).
    """
    plan: list[tuple[int, list[int]]] = []
    chunks = np.unique(chunk_of_row)
    for w, start in enumerate(range(0, len(chunks), window_chunks)):
        mask = np.isin(chunk_of_row, chunks[start : start + window_chunks])
        w_rows, w_dur = rows[mask], np.nan_to_num(durations[mask], nan=0.0)
        order = np.argsort(-w_dur, kind="stable")
        batch: list[int] = []
        total = 0.0
        for i in order:
            d = max(float(w_dur[i]), 0.0)
            if batch and total + d > batch_seconds:
                plan.append((w, batch))
                batch, total = [], 0.0
            batch.append(int(w_rows[i]))
            total += d
        if batch:
            plan.append((w, batch))
    return plan


# --------------------------------------------------------------------------------------------- decoding
class _DecodeDataset(torch.utils.data.Dataset):
    """Index = manifest row -> the row's windows (normalised, padded to the receptive field) or an error."""

    def __init__(
        self,
        manifest: pl.DataFrame,
        *,
        sampling_rate: int,
        normalize: Callable[[np.ndarray], np.ndarray],
        min_samples: int,
        max_samples: int,
        trim_silence: bool,
    ):
        self.paths = manifest["path"].to_list()
        self.starts = manifest["start"].to_list() if "start" in manifest.columns else [None] * manifest.height
        self.ends = manifest["end"].to_list() if "end" in manifest.columns else [None] * manifest.height
        self.sr = sampling_rate
        self.normalize = normalize
        self.min_samples = min_samples
        self.max_samples = max_samples
        self.trim_silence = trim_silence

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, row: int) -> dict[str, Any]:
        from cltm.audio import AudioError, load_audio

        try:
            wave = load_audio(
                self.paths[row],
                target_sr=self.sr,
                start=self.starts[row],
                end=self.ends[row],
                trim_silence=self.trim_silence,
            )
        except AudioError as err:
            return {"row": row, "error": err.reason}
        except Exception as err:  # a decoder bug must cost one row, not the run
            return {"row": row, "error": f"{type(err).__name__}: {err}"}
        n = len(wave)
        pieces = []
        for a, b in windows(n, self.max_samples, self.min_samples):
            piece = self.normalize(wave[a:b])  # each window is what the model would see as a file
            if len(piece) < self.min_samples:  # shorter than one receptive field: pad with silence
                piece = np.pad(piece, (0, self.min_samples - len(piece)))
            pieces.append(piece)
        return {"row": row, "pieces": pieces, "seconds": n / self.sr}


def _collate(items: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return items  # padding happens per micro-batch in the main thread (pieces are re-sorted there)


# ------------------------------------------------------------------------------------------------ pooling
def pool_batch(
    model: LoadedModel,
    pieces: Sequence[np.ndarray],
    *,
    device: torch.device,
    autocast_dtype: torch.dtype | None,
    frames_layers: Sequence[int] = (),
    use_attention_mask: bool | None = None,
    exact_group_norm: bool = True,
) -> tuple[np.ndarray, np.ndarray, np.ndarray, dict[int, list[np.ndarray]]]:
    """Run one padded batch; per piece: valid frame count [B], mean and M2 (sum of squared deviations)
    [n_layers, B, dim] in float64, and the valid frames of ``frames_layers``."""
    lengths = torch.tensor([len(p) for p in pieces], dtype=torch.long)
    total = int(lengths.max())
    x = torch.zeros(len(pieces), total, dtype=torch.float32)
    for i, p in enumerate(pieces):
        x[i, : len(p)] = torch.from_numpy(np.ascontiguousarray(p, dtype=np.float32))
    use_mask = model.return_attention_mask if use_attention_mask is None else use_attention_mask
    mask = (torch.arange(total)[None, :] < lengths[:, None]).long() if use_mask else None
    x = x.to(device, non_blocking=True)
    if mask is not None:
        mask = mask.to(device, non_blocking=True)
    with torch.autocast(device.type, dtype=autocast_dtype, enabled=autocast_dtype is not None):
        if exact_group_norm and model.per_utterance_cnn and len(pieces) > 1:
            hidden = model.hidden_states_unpadded_cnn(x, lengths)
        else:
            hidden = model.hidden_states(x, mask)
    n_frames_max = hidden[0].shape[1]
    frames = model.frame_lengths(lengths).clamp(max=n_frames_max).to(device)
    valid = (torch.arange(n_frames_max, device=device)[None, :] < frames[:, None]).float()  # [B, F]
    count = valid.sum(1).clamp(min=1.0)  # [B]
    means, m2s = [], []
    frame_out: dict[int, list[np.ndarray]] = {layer: [] for layer in frames_layers}
    for layer, h in enumerate(hidden):  # one layer at a time keeps peak memory at one [B, F, D] in float32
        h = h.float()
        mean = (h * valid[:, :, None]).sum(1) / count[:, None]
        m2 = (((h - mean[:, None, :]) * valid[:, :, None]) ** 2).sum(1)
        means.append(mean)
        m2s.append(m2)
        if layer in frame_out:
            for i in range(len(pieces)):
                frame_out[layer].append(h[i, : int(frames[i])].to(torch.float16).cpu().numpy())
    mean_np = torch.stack(means).double().cpu().numpy()
    m2_np = torch.stack(m2s).double().cpu().numpy()
    return frames.cpu().numpy().astype(np.int64), mean_np, m2_np, frame_out


def merge_moments(
    counts: Sequence[int], means: Sequence[np.ndarray], m2s: Sequence[np.ndarray]
) -> tuple[int, np.ndarray, np.ndarray]:
    """Chan et al.'s exact merge of (count, mean, M2) over the windows of one file."""
    n, mean, m2 = int(counts[0]), means[0].copy(), m2s[0].copy()
    for nb, mb, m2b in zip(counts[1:], means[1:], m2s[1:], strict=True):
        tot = n + int(nb)
        delta = mb - mean
        mean = mean + delta * (nb / tot)
        m2 = m2 + m2b + delta**2 * (n * nb / tot)
        n = tot
    return n, mean, m2


# ------------------------------------------------------------------------------------------------- writer
class _Writer(threading.Thread):
    """Buffers finished rows and writes them (data, then done flags) off the compute thread."""

    def __init__(self, cache: Cache, tag: str, flush_seconds: float, pooling: Sequence[str]):
        super().__init__(name="cltm-cache-writer", daemon=True)
        self.cache, self.tag, self.flush_seconds, self.pooling = cache, tag, flush_seconds, list(pooling)
        self.dtype = np.dtype(str(cache.array(f"pooled/{self.pooling[0]}").dtype))
        self.queue: queue.Queue = queue.Queue(maxsize=16)
        self.error: BaseException | None = None
        self.failures: list[dict[str, str]] = []
        self.n_written = 0
        self._reset()

    def _reset(self) -> None:
        self.rows: list[int] = []
        self.pooled: dict[str, list[np.ndarray]] = {s: [] for s in self.pooling}
        self.n_frames: list[int] = []
        self.seconds: list[float] = []
        self.frames: dict[int, list[np.ndarray]] = {}
        self.journal_files: list[Path] = []  # journal files whose rows are all in this buffer
        self._failures_dirty = False

    def put(self, item: Any) -> None:
        if self.error is not None:
            raise RuntimeError(f"writing to the cache failed: {self.error}") from self.error
        self.queue.put(item)

    def run(self) -> None:
        last = time.monotonic()
        try:
            while True:
                item = self.queue.get()
                if item is None:
                    self._flush()
                    return
                kind, payload = item
                if kind == "row":
                    row, stats, n_frames, seconds, frames = payload
                    self.rows.append(row)
                    self.seconds.append(seconds)
                    for s in self.pooling:
                        # buffer in the cache's dtype: a window of large-model rows is 2x smaller
                        self.pooled[s].append(stats[s].astype(self.dtype))
                    self.n_frames.append(n_frames)
                    for layer, f in frames.items():
                        self.frames.setdefault(layer, []).append(f)
                elif kind == "fail":
                    self.failures.append(payload)
                    self._failures_dirty = True
                elif kind == "journaled":
                    self.journal_files.append(payload)
                elif kind == "flush":
                    self._flush()
                    last = time.monotonic()
                if time.monotonic() - last >= self.flush_seconds:
                    self._flush()
                    last = time.monotonic()
        except BaseException as err:  # keep the error for the main thread; keep draining so it never blocks
            self.error = err
            while self.queue.get() is not None:
                pass

    def _flush(self) -> None:
        if self.rows:
            pooled = {s: np.stack(self.pooled[s], axis=1) for s in self.pooling}  # [L, rows, D]
            self.cache.write_rows(
                np.array(self.rows),
                pooled,
                np.array(self.n_frames),
                seconds=np.array(self.seconds),
                frames=self.frames or None,
                writer=self.tag,
            )
            self.n_written += len(self.rows)
        if self._failures_dirty:
            self.cache.write_failures(
                pl.DataFrame(self.failures, schema=dict.fromkeys(("utt_id", "stage", "error"), pl.Utf8)),
                self.tag,
            )
        for path in self.journal_files:  # their rows are in the cache now (a kill before this replays them)
            path.unlink(missing_ok=True)
        self._reset()


# ------------------------------------------------------------------------------------------------ journal
def journal_dir(cache: Cache, tag: str) -> Path:
    """Where shard ``tag`` journals finished batches until they reach the cache."""
    return cache.path / "journal" / tag


def write_journal(directory: Path, seq: int, results: list, pooling: Sequence[str], dtype: np.dtype) -> Path:
    """Save one batch's finished rows atomically (temporary name, then rename); returns the file."""
    arrays: dict[str, np.ndarray] = {
        "rows": np.array([r[0] for r in results], dtype=np.int64),
        "seconds": np.array([r[1] for r in results], dtype=np.float64),
        "n_frames": np.array([r[3] for r in results], dtype=np.int64),
    }
    for stat in pooling:
        arrays[f"pooled_{stat}"] = np.stack([r[2][stat] for r in results], axis=1).astype(dtype)  # [L, k, D]
    for layer in results[0][4] if results else ():
        pieces = [r[4][layer] for r in results]
        arrays[f"frames_{layer}"] = np.concatenate(pieces)
        arrays[f"frame_lengths_{layer}"] = np.array([len(f) for f in pieces], dtype=np.int64)
    # no parents=True: if the cache was deleted under us, fail instead of re-creating a journal-only directory
    directory.parent.mkdir(exist_ok=True)
    directory.mkdir(exist_ok=True)

    def save(tmp: Path) -> None:
        with open(tmp, "wb") as fh:  # a file handle: np.savez would append .npz to a path
            np.savez(fh, **arrays)

    return atomic_write(directory / f"{seq:09d}.npz", save)


def replay_journal(cache: Cache, directory: Path, tag: str) -> int:
    """Write the rows a killed run journaled but never flushed into the cache; returns how many rows.

    Replaying is idempotent (a row rewritten with the same values), so a kill during replay is harmless.
    """
    n = 0
    for path in sorted(directory.glob("*.npz")):
        with np.load(path) as saved:
            rows = saved["rows"]
            frames = {
                int(key.removeprefix("frames_")): np.split(
                    saved[key], np.cumsum(saved[f"frame_lengths_{key.removeprefix('frames_')}"])[:-1]
                )
                for key in saved.files
                if key.startswith("frames_")
            }
            cache.write_rows(
                rows,
                {stat: saved[f"pooled_{stat}"] for stat in cache.pooling},
                saved["n_frames"],
                seconds=saved["seconds"],
                frames=frames or None,
                writer=tag,
            )
        n += len(rows)
        path.unlink()
    for stray in [*directory.glob(".*.tmp"), *directory.glob(".*.partial")]:  # a kill mid-write: in flight
        stray.unlink(missing_ok=True)
    return n


# ---------------------------------------------------------------------------------------------------- run
def _resolve_device(device: str) -> torch.device:
    """auto -> cuda when available. Under torchrun/accelerate (LOCAL_RANK set) each process takes its own
    GPU, so ``--device cuda`` on 8 GPUs does not put 8 shards on GPU 0."""
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise ValueError("--device cuda asked for, but torch sees no CUDA device")
    if device == "cuda" and "LOCAL_RANK" in os.environ:
        return torch.device(f"cuda:{int(os.environ['LOCAL_RANK']) % torch.cuda.device_count()}")
    return torch.device(device)


# autocast dtype of each of cltm.extract.settings.COMPUTE_DTYPES (float32: no autocast)
_DTYPES = {"float32": None, "float16": torch.float16, "bfloat16": torch.bfloat16}


def _read_input_manifest(manifest: str | Path | pl.DataFrame) -> pl.DataFrame:
    from cltm.corpus import conform, read_manifest, validate

    if isinstance(manifest, pl.DataFrame):  # paths as given (relative ones resolve against the cwd)
        return conform(validate(manifest))
    return read_manifest(manifest)


_GROUPS = {"model": ModelSettings, "batching": BatchSettings, "output": OutputSettings}


def _refuse_old_keywords(old: dict[str, Any]) -> None:
    """extract() took 22 keywords once; say where each one lives now instead of a bare TypeError."""
    hints = []
    for name in old:
        group = next((g for g, cls in _GROUPS.items() if name in {f.name for f in fields(cls)}), None)
        if group is not None:
            hints.append(
                f"{name}= -> settings=ExtractSettings({group}={_GROUPS[group].__name__}({name}=...))"
            )
        elif name == "shard":
            hints.append("shard= -> settings=ExtractSettings(shard=...)")
        else:
            raise TypeError(f"extract() got an unexpected keyword argument {name!r}")
    if hints:
        raise TypeError("extract() takes its settings as one ExtractSettings object: " + "; ".join(hints))


def extract(
    manifest: str | Path | pl.DataFrame,
    model: str | Path | LoadedModel,
    out: str | Path,
    *,
    settings: ExtractSettings | None = None,
    progress: ProgressCallback | None = None,
    max_batches: int | None = None,
    **old_keywords: Any,
) -> ExtractionSummary:
    """Extract pooled hidden states of every layer for every manifest row into the cache at ``out``.

    ``settings`` (:class:`cltm.extract.settings.ExtractSettings`; default: ``cltm extract``'s defaults) holds
    model loading and compute, batching and audio, the cache's contents and writing, and the shard.
    ``progress(done_seconds, total_seconds)`` is called before the first batch and after every batch (audio
    seconds; see :data:`cltm.extract.settings.ProgressCallback`); this function draws nothing.
    ``max_batches`` stops after that many batches (tests, benchmarks).

    Resumes when ``out`` already holds a cache of the same model/revision/config/manifest/dtype/frames layers
    (done rows are skipped); a cache of anything else is refused (:class:`cltm.store.CacheMismatchError`)
    unless ``settings.output.force``, which deletes only a provable cltm cache. The shard's writer lock is
    held throughout (:class:`cltm.store.lock.CacheLockedError` if another live process holds it). Unusable
    inputs go to the cache's failure table and the run goes on. ``settings.shard`` (default RANK/WORLD_SIZE
    from the environment) extracts only the chunks that shard owns. An empty manifest, frames layers the
    model does not have and a bad ``max_batches`` raise ValueError (bad settings already did when they were
    built: :class:`cltm.extract.settings.SettingsError`). Returns an :class:`ExtractionSummary`.
    """
    import cltm
    from cltm.corpus import manifest_hash

    t0 = time.perf_counter()
    if isinstance(progress, bool):
        raise TypeError(
            "extract(): progress is a callback progress(done_seconds, total_seconds) or None, not a bool; "
            "the library draws no bar (the CLI draws one with cltm.progress)"
        )
    _refuse_old_keywords(old_keywords)
    settings = ExtractSettings() if settings is None else settings
    if not isinstance(settings, ExtractSettings):
        raise TypeError(f"extract(): settings must be an ExtractSettings, got {type(settings).__name__}")
    if progress is not None and not callable(progress):
        raise TypeError("extract(): progress must be callable as progress(done_seconds, total_seconds)")
    if max_batches is not None and not (isinstance(max_batches, int) and max_batches >= 0):
        raise ValueError(f"max_batches: must be an integer of at least 0 or None; got {max_batches!r}")
    load, out_settings = settings.model, settings.output
    k, n = parse_shard(settings.shard)  # a tuple already, or None: from the environment
    table = _read_input_manifest(manifest)
    if table.height == 0:
        where = "the manifest" if isinstance(manifest, pl.DataFrame) else str(manifest)
        raise ValueError(f"{where} has no rows: nothing to extract")
    mhash = manifest_hash(table)
    loaded = (
        model
        if isinstance(model, LoadedModel)
        else load_model(model, revision=load.revision, trust_remote_code=load.trust_remote_code)
    )
    bad_layers = [x for x in out_settings.frames_layers if not 0 <= x < loaded.n_layers]
    if bad_layers:
        raise ValueError(
            f"frames layers {bad_layers} out of range: the model has {loaded.n_layers} hidden states"
        )
    attention_mask = load.use_attention_mask
    attrs = {
        "model_id": loaded.model_id,
        "revision": loaded.revision,
        "config_hash": loaded.config_hash,
        "weights_hash": loaded.weights_hash,
        "manifest_hash": mhash,
        "trim_silence": bool(settings.batching.trim_silence),
        "sampling_rate": loaded.sampling_rate,
        "hidden_state_definition": loaded.hidden_state_definition,
        "do_normalize": loaded.do_normalize,
        "attention_mask": loaded.return_attention_mask if attention_mask is None else attention_mask,
        "max_seconds": float(settings.batching.max_seconds),
        "compute_dtype": load.dtype,
        "pooling_definition": "mean and population std over valid (unpadded) frames of the whole file",
        "tool": f"cltm {cltm.__version__}",
        "model_info": loaded.extra,
    }
    cache = open_or_create(
        out,
        manifest=table,
        n_layers=loaded.n_layers,
        dim=loaded.hidden_size,
        attrs=attrs,
        pooling=out_settings.pool,
        dtype=out_settings.cache_dtype,
        chunk_rows=out_settings.chunk_rows,
        frames_layers=out_settings.frames_layers,
        force=out_settings.force,
    )
    tag = f"shard-{k}-of-{n}"
    lock = shard_lock(cache.path, tag).acquire()  # raises CacheLockedError naming the running writer
    try:
        return _extract_locked(
            cache,
            table,
            loaded,
            tag,
            (k, n),
            t0,
            out=out,
            settings=settings,
            progress=progress,
            max_batches=max_batches,
        )
    finally:
        lock.release()


def _extract_locked(
    cache: Cache,
    table: pl.DataFrame,
    loaded: LoadedModel,
    tag: str,
    shard: tuple[int, int],
    t0: float,
    *,
    out: str | Path,
    settings: ExtractSettings,
    progress: ProgressCallback | None,
    max_batches: int | None,
) -> ExtractionSummary:
    """The run itself, with the shard's writer lock held."""
    k, n = shard
    load, batching, output = settings.model, settings.batching, settings.output
    n_rows = cache.n_rows
    owned = np.fromiter(iter_owned_rows(cache, (k, n)), dtype=np.int64)
    journal = journal_dir(cache, tag)
    if output.force:  # a matching cache with --force: redo this shard's rows
        shutil.rmtree(journal, ignore_errors=True)
        cache.reset_rows(owned)
    elif journal.exists():
        replay_journal(cache, journal, tag)
    done = cache.done
    todo = owned[~done[owned]]
    n_skipped = int(len(owned) - len(todo))
    durations = header_durations(table, todo) if len(todo) else np.zeros(0)
    plan = plan_batches(
        todo,
        durations,
        cache.chunk_of(todo),
        batch_seconds=batching.batch_seconds,
        window_chunks=output.window_chunks,
    )
    if max_batches is not None:
        plan = plan[:max_batches]
    writer = _Writer(cache, tag, output.flush_seconds, cache.pooling)
    dev = _resolve_device(load.device)
    num_workers = batching.num_workers
    if num_workers is None:  # a GPU eats batches faster than 2 decoders deliver them (mp3 + resampling)
        num_workers = min(8, max(1, (os.cpu_count() or 2) - 1)) if dev.type == "cuda" else 2
    loaded.to(dev)
    autocast_dtype = _DTYPES[load.dtype]
    dataset = _DecodeDataset(
        table,
        sampling_rate=loaded.sampling_rate,
        normalize=loaded.normalize,
        min_samples=loaded.min_samples,
        max_samples=int(batching.max_seconds * loaded.sampling_rate),
        trim_silence=batching.trim_silence,
    )
    loader = torch.utils.data.DataLoader(
        dataset,
        batch_sampler=[b for _, b in plan],
        num_workers=num_workers,
        collate_fn=_collate,
        pin_memory=dev.type == "cuda",
        prefetch_factor=4 if num_workers > 0 else None,
    )
    # fork the decoding workers before the writer thread exists (forking a process with busy threads is
    # how locks end up held forever in the child)
    batches = iter(loader)
    writer.start()
    utt_ids = table["utt_id"].to_list()
    run_failures: list[dict[str, str]] = []
    seconds_done = 0.0
    n_done_now = 0
    max_piece_samples = int(batching.batch_seconds * loaded.sampling_rate)

    def fail(row: int, stage: str, error: str) -> None:
        entry = {"utt_id": str(utt_ids[row]), "stage": stage, "error": error}
        run_failures.append(entry)
        writer.put(("fail", entry))

    seconds_of = dict(zip(todo.tolist(), np.nan_to_num(durations, nan=0.0).tolist(), strict=True))
    # summed batch by batch, in the order progressed is: the last report is exactly (total, total)
    batch_audio = [sum(seconds_of[r] for r in batch) for _, batch in plan]
    total_seconds = float(sum(batch_audio))
    progressed = 0.0
    report = progress or (lambda done, total: None)
    try:
        report(0.0, total_seconds)
        last_window = None
        for batch_index, ((window, _), items) in enumerate(zip(plan, batches, strict=True)):
            if last_window is not None and window != last_window:
                writer.put(("flush", None))  # a window is finished: its chunks are written once
            last_window = window
            ok = []
            for item in items:
                if "error" in item:
                    fail(item["row"], "decode", item["error"])
                else:
                    ok.append(item)
            results = _forward_items(
                loaded,
                ok,
                dev,
                autocast_dtype,
                output.frames_layers,
                load.use_attention_mask,
                max_piece_samples,
                fail,
            )
            if results:  # on disk before the writer sees it: a kill now loses only the next batch
                journaled = write_journal(journal, batch_index, results, cache.pooling, writer.dtype)
            for row, seconds, stats, nf, frames in results:
                writer.put(("row", (row, stats, nf, seconds, frames)))
                seconds_done += seconds
                n_done_now += 1
            if results:
                writer.put(("journaled", journaled))
            progressed += batch_audio[batch_index]
            report(progressed, total_seconds)
    finally:  # also on Ctrl-C (or a progress callback that raises): computed rows are written before we stop
        writer.queue.put(None)
        writer.join()
    if writer.error is not None:
        raise RuntimeError(f"writing to the cache {out} failed: {writer.error}") from writer.error
    failures = pl.DataFrame(run_failures, schema=dict.fromkeys(("utt_id", "stage", "error"), pl.Utf8))
    return ExtractionSummary(
        cache_path=Path(out),
        n_rows=n_rows,
        n_owned=int(len(owned)),
        n_skipped=n_skipped,
        n_done_now=n_done_now,
        n_failed=failures.height,
        audio_seconds=seconds_done,
        wall_seconds=time.perf_counter() - t0,
        shard=(k, n),
        failures=failures,
    )


def _forward_items(
    model: LoadedModel,
    items: list[dict[str, Any]],
    device: torch.device,
    autocast_dtype: torch.dtype | None,
    frames_layers: Sequence[int],
    use_attention_mask: bool | None,
    max_batch_samples: int,
    fail: Callable[[int, str, str], None],
) -> list[tuple[int, float, dict[str, np.ndarray], int, dict[int, np.ndarray]]]:
    """Forward all pieces of the decoded items in micro-batches of <= max_batch_samples padded samples, then
    merge each file's pieces. Returns (row, seconds, {"mean","std"} [L, D] float32, n_frames, frames)."""
    pieces = [(i, j, p) for i, it in enumerate(items) for j, p in enumerate(it["pieces"])]
    pieces.sort(key=lambda t: -len(t[2]))
    per_item: dict[int, list[tuple[int, int, np.ndarray, np.ndarray, dict[int, np.ndarray]]]] = {}
    broken: set[int] = set()
    start = 0
    while start < len(pieces):
        longest = len(pieces[start][2])  # sorted longest first: padded size = count x longest
        stop = start + max(1, max_batch_samples // max(longest, 1))
        group = pieces[start:stop]
        start = stop
        try:
            counts, means, m2s, frames = pool_batch(
                model,
                [p for _, _, p in group],
                device=device,
                autocast_dtype=autocast_dtype,
                frames_layers=frames_layers,
                use_attention_mask=use_attention_mask,
            )
        except (RuntimeError, ValueError) as err:  # e.g. out of memory on one huge file: lose those rows only
            for i, _, _ in group:
                broken.add(i)
                per_item.pop(i, None)
            for i in {i for i, _, _ in group}:
                fail(items[i]["row"], "forward", f"{type(err).__name__}: {str(err)[:300]}")
            if device.type == "cuda":
                torch.cuda.empty_cache()
            continue
        for b, (i, j, _) in enumerate(group):
            if i in broken:
                continue
            per_item.setdefault(i, []).append(
                (j, int(counts[b]), means[:, b], m2s[:, b], {layer: f[b] for layer, f in frames.items()})
            )
    out = []
    for i, parts in per_item.items():
        if i in broken or len(parts) != len(items[i]["pieces"]):
            continue
        parts.sort(key=lambda t: t[0])
        n, mean, m2 = merge_moments([p[1] for p in parts], [p[2] for p in parts], [p[3] for p in parts])
        std = np.sqrt(np.maximum(m2 / max(n, 1), 0.0))
        row = items[i]["row"]
        if not (np.isfinite(mean).all() and np.isfinite(std).all()):
            fail(row, "forward", "non-finite hidden states (try --dtype float32)")
            continue
        zero = np.flatnonzero(~mean.astype(np.float16).any(axis=1))  # as stored: float16 underflow counts
        if zero.size:
            fail(
                row,
                "forward",
                f"all-zero pooled mean at layer(s) {', '.join(map(str, zero[:8].tolist()))}: the model gives "
                "no signal for this input (silence?); not stored, as it could not be told from lost data",
            )
            continue
        frames = {layer: np.concatenate([p[4][layer] for p in parts]) for layer in frames_layers}
        stats = {"mean": mean.astype(np.float32), "std": std.astype(np.float32)}
        out.append((row, float(items[i]["seconds"]), stats, n, frames))
    return out


def iter_owned_rows(cache: Cache, shard: tuple[int, int]) -> Iterator[int]:
    for c in owned_chunks(cache.n_chunks, shard):
        yield from cache.chunk_rows_range(int(c))

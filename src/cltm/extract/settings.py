"""Typed, validated settings of an extraction run (what ``cltm extract``'s options become in Python).

``extract(manifest, model, out, settings=ExtractSettings(...), progress=callback)`` takes one
:class:`ExtractSettings`, made of :class:`ModelSettings` (loading and compute), :class:`BatchSettings`
(batching and audio) and :class:`OutputSettings` (what the cache holds and how it is written), plus the shard.
Every field is checked when the object is built: a bad value raises :class:`SettingsError` (a ``ValueError``)
naming the field, the allowed values and the value given, before a model is loaded or a file written. The
defaults are ``cltm extract``'s (the CLI takes them from here).

This module imports neither torch nor numpy, so the CLI can read the defaults without loading them.
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, NoReturn

# shorter windows pool a handful of frames (--max-seconds 0.001 cut a file into one-frame windows)
MIN_MAX_SECONDS = 0.5
COMPUTE_DTYPES = ("float32", "float16", "bfloat16")  # float32 = no autocast
CACHE_DTYPES = ("float16", "float32")
POOLINGS = ("mean", "std")
DEVICES = ("auto", "cpu", "cuda")  # and cuda:N

ProgressCallback = Callable[[float, float], None]
"""``progress(done_seconds, total_seconds)``: audio seconds of this run's batches processed so far (decoded,
failed or extracted) and in all. Called once with ``done_seconds == 0`` before the first batch, then after
every batch."""


class SettingsError(ValueError):
    """A settings field with a value outside its allowed range. ``field`` is the field's name (the CLI option
    is ``--`` + the name with dashes), ``rule`` what is allowed, ``value`` what was given."""

    def __init__(self, owner: str, field: str, rule: str, value: Any):
        self.owner, self.field, self.rule, self.value = owner, field, rule, value
        super().__init__(f"{owner}.{field}: {rule}; got {value!r}")


def _is_bool(value: Any) -> bool:
    return type(value).__name__ in ("bool", "bool_")  # numpy's bool too, without importing numpy


def _is_int(value: Any) -> bool:
    return hasattr(value, "__index__") and not _is_bool(value)


class _Checker:
    """Field checks of one settings class; each raises SettingsError naming the field."""

    def __init__(self, owner: Any):
        self.owner = owner
        self.name = type(owner).__name__

    def fail(self, name: str, rule: str) -> NoReturn:
        raise SettingsError(self.name, name, rule, getattr(self.owner, name))

    def boolean(self, name: str, *, optional: bool = False) -> None:
        value = getattr(self.owner, name)
        if not (_is_bool(value) or (optional and value is None)):
            self.fail(
                name, "must be True or False" + (" (or None: the model's own setting)" if optional else "")
            )

    def choice(self, name: str, allowed: tuple[str, ...], extra: str = "") -> None:
        if getattr(self.owner, name) not in allowed:
            self.fail(name, f"use one of {', '.join(allowed)}{extra}")

    def number(self, name: str, *, minimum: float, inclusive: bool, finite: bool, why: str = "") -> None:
        value = getattr(self.owner, name)
        ok = hasattr(value, "__float__") and not _is_bool(value)  # int, float, numpy scalars
        if ok:
            x = float(value)
            ok = (x >= minimum if inclusive else x > minimum) and (math.isfinite(x) or not finite)
            ok = ok and not math.isnan(x)
        if not ok:
            bound = f"of at least {minimum:g}" if inclusive else f"greater than {minimum:g}"
            self.fail(name, f"must be a {'finite ' if finite else ''}number {bound}{why}")
        object.__setattr__(self.owner, name, float(value))  # numpy scalars become plain floats (JSON attrs)

    def integer(self, name: str, *, minimum: int, optional: bool = False, why: str = "") -> None:
        value = getattr(self.owner, name)
        if optional and value is None:
            return
        if not (_is_int(value) and int(value) >= minimum):
            self.fail(
                name, f"must be an integer of at least {minimum}" + (" or None" if optional else "") + why
            )
        object.__setattr__(self.owner, name, int(value))


@dataclass(frozen=True)
class ModelSettings:
    """Loading and compute. ``revision``: hub branch, tag or commit; ``trust_remote_code``: allow the hub
    repository's own model code; ``device``: auto (cuda when available), cpu, cuda or cuda:N; ``dtype``:
    compute precision (float16/bfloat16 = autocast on the device); ``use_attention_mask``: None = what the
    model's feature extractor says."""

    revision: str | None = None
    trust_remote_code: bool = False
    device: str = "auto"
    dtype: str = "float32"
    use_attention_mask: bool | None = None

    def __post_init__(self) -> None:
        check = _Checker(self)
        if not (self.revision is None or (isinstance(self.revision, str) and self.revision.strip())):
            check.fail("revision", "must be a branch, tag or commit name, or None (the default branch)")
        check.boolean("trust_remote_code")
        device = self.device
        cuda_n = isinstance(device, str) and device.startswith("cuda:") and device[5:].isdigit()
        if device not in DEVICES and not cuda_n:
            check.fail("device", f"use one of {', '.join(DEVICES)} or cuda:N")
        check.choice("dtype", COMPUTE_DTYPES)
        check.boolean("use_attention_mask", optional=True)


@dataclass(frozen=True)
class BatchSettings:
    """Batching and audio. ``batch_seconds``: audio seconds per batch (rows are sorted by length first);
    ``num_workers``: DataLoader decoding processes (None = 2 on CPU, up to 8 on a GPU; 0 = decode in this
    process); ``max_seconds``: longer files are encoded in windows of this length (at least
    :data:`MIN_MAX_SECONDS`); ``trim_silence``: cut leading and trailing silence before encoding."""

    batch_seconds: float = 120.0
    num_workers: int | None = None
    max_seconds: float = 60.0
    trim_silence: bool = False

    def __post_init__(self) -> None:
        check = _Checker(self)
        check.number("batch_seconds", minimum=0.0, inclusive=False, finite=True)
        check.integer("num_workers", minimum=0, optional=True)
        check.number(
            "max_seconds",
            minimum=MIN_MAX_SECONDS,
            inclusive=True,
            finite=True,
            why=" (shorter windows pool only a few frames each; the default is 60)",
        )
        check.boolean("trim_silence")


@dataclass(frozen=True)
class OutputSettings:
    """What the cache holds and how it is written. ``pool``: statistics to store (mean, std or both, in this
    order in the cache); ``frames_layers``: also store frame-level features of these layers; ``cache_dtype``:
    storage precision; ``chunk_rows``: rows per chunk (new caches only; shards own whole chunks);
    ``window_chunks``: chunks sorted and written together; ``flush_seconds``: write journaled rows into the
    chunks at least this often; ``force``: rebuild a cache of another model/manifest/setting, or re-extract
    this shard's rows of a matching one (deletes only a provable cltm cache)."""

    pool: tuple[str, ...] = POOLINGS
    frames_layers: tuple[int, ...] = ()
    cache_dtype: str = "float16"
    chunk_rows: int = 512
    window_chunks: int = 4
    flush_seconds: float = 60.0
    force: bool = False

    def __post_init__(self) -> None:
        check = _Checker(self)
        pool = self.pool
        if isinstance(pool, str) or not all(isinstance(p, str) for p in _iterable(pool)):
            check.fail("pool", "must be a sequence of statistic names: mean, std or both")
        pool = tuple(pool)
        if not pool or any(p not in POOLINGS for p in pool) or len(set(pool)) != len(pool):
            check.fail("pool", "use mean, std or both (each once)")
        object.__setattr__(self, "pool", pool)  # a list given is kept as a tuple (hashable, immutable)
        layers = self.frames_layers
        if isinstance(layers, str) or not all(_is_int(x) and int(x) >= 0 for x in _iterable(layers)):
            check.fail("frames_layers", "must be a sequence of hidden-state indices >= 0, e.g. (6, 9)")
        object.__setattr__(self, "frames_layers", tuple(int(x) for x in layers))
        check.choice("cache_dtype", CACHE_DTYPES)
        check.integer("chunk_rows", minimum=1)
        check.integer("window_chunks", minimum=1)
        check.number("flush_seconds", minimum=0.0, inclusive=True, finite=False)
        check.boolean("force")


def _iterable(value: Any) -> Any:
    try:
        return list(value)
    except TypeError:
        return [object()]  # not a sequence: fails every element check


@dataclass(frozen=True)
class ExtractSettings:
    """Everything an extraction run is told. ``shard``: ``"k/n"`` or ``(k, n)`` (k counts from 0) to extract
    only the chunks shard k of n owns, None = RANK/WORLD_SIZE from the environment when the run starts
    (torchrun); a string is kept as the (k, n) tuple."""

    model: ModelSettings = field(default_factory=ModelSettings)
    batching: BatchSettings = field(default_factory=BatchSettings)
    output: OutputSettings = field(default_factory=OutputSettings)
    shard: tuple[int, int] | str | None = None

    def __post_init__(self) -> None:
        check = _Checker(self)
        for name, cls in (("model", ModelSettings), ("batching", BatchSettings), ("output", OutputSettings)):
            if not isinstance(getattr(self, name), cls):
                check.fail(name, f"must be a {cls.__name__}")
        if self.shard is not None:
            try:
                kn = parse_shard(self.shard)
            except ValueError:
                check.fail(
                    "shard", "must be 'k/n' or a (k, n) pair with 0 <= k < n (k counts from 0), or None"
                )
            object.__setattr__(self, "shard", kn)


def parse_shard(spec: str | tuple[int, int] | None) -> tuple[int, int]:
    """``"k/n"`` or ``(k, n)`` (k counts from 0) -> (k, n); None -> RANK/WORLD_SIZE from the environment
    (torchrun)."""
    if spec is None or spec == "":
        world = int(os.environ.get("WORLD_SIZE", "1"))
        rank = int(os.environ.get("RANK", "0"))
        if world < 1 or not 0 <= rank < world:
            raise ValueError(f"RANK={rank} / WORLD_SIZE={world} from the environment are not a valid shard")
        return rank, world
    if isinstance(spec, str):
        try:
            k_text, n_text = spec.split("/")
            k, n = int(k_text), int(n_text)
        except ValueError:
            raise ValueError(f"shard must look like k/n (e.g. 0/4), got {spec!r}") from None
    elif isinstance(spec, tuple) and len(spec) == 2 and all(_is_int(x) for x in spec):
        k, n = int(spec[0]), int(spec[1])
    else:
        raise ValueError(f"shard must be 'k/n' or a (k, n) pair of integers, got {spec!r}")
    if n < 1 or not 0 <= k < n:
        raise ValueError(f"shard {spec!r}: need 0 <= k < n (k counts from 0)")
    return k, n

"""The data rules a CLTM needs (DESIGN §4.1): splits, nested training subsets, verification trial lists.

Determinism: every choice here is driven by a seeded *hash rank* of a stable key (``utt_id`` for utterances,
``speaker`` for speakers), never by the pool's row order. So the same seed picks the same rows whatever order
the pool comes in, and adding unrelated rows to a pool does not reshuffle the ranks of the existing ones. The
returned DataFrames keep every input column; their row order is the selection order (documented per function).

Nesting: ``balanced_subset`` and ``speaker_subset`` return a prefix of one seeded sequence, so for a fixed
seed the subset for N is contained in the subset for 2N. That is what makes ``Perf(i)`` and ``Perf(i+i)`` in a
CLTM cell differ only by the extra N utterances.
"""

from __future__ import annotations

import itertools
import math
from collections import Counter
from collections.abc import Iterable, Sequence

import numpy as np
import polars as pl

__all__ = [
    "SamplingError",
    "balanced_subset",
    "make_trials",
    "required_speakers",
    "seeded_rank",
    "speaker_disjoint_split",
    "speaker_subset",
]

TRIAL_COLUMNS: tuple[str, ...] = ("enroll", "test", "label")


class SamplingError(ValueError):
    """A subset or trial list that the pool cannot provide; the message says what is available."""


_FNV_OFFSET = np.uint64(0xCBF29CE484222325)
_FNV_PRIME = np.uint64(0x100000001B3)


def _splitmix64(x: np.ndarray) -> np.ndarray:
    """The splitmix64 finaliser (uint64 in, uint64 out, wrapping arithmetic): a full-avalanche bit mixer."""
    x = x + np.uint64(0x9E3779B97F4A7C15)
    x = (x ^ (x >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
    x = (x ^ (x >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
    return x ^ (x >> np.uint64(31))


def seeded_rank(keys: Iterable[object], seed: int) -> np.ndarray:
    """A seeded pseudo-random 64-bit rank per key, a pure function of (seed, str(key)).

    Sorting by it gives a seeded permutation that does not depend on where a key sits in its table. The
    definition is fixed (FNV-1a over the key's UTF-8 bytes, then splitmix64 of that xor a mixed seed), so the
    ranks are the same in every process, platform and library version, unlike Python's ``hash`` or polars'
    ``hash``. Vectorised over the keys' bytes: about 0.3 us per key.
    """
    # "surrogatepass": a lone surrogate (not valid UTF-8, but a legal Python str) still hashes, to its
    # UTF-8-style bytes; every other key gives exactly its UTF-8 bytes
    encoded = np.array([str(k).encode("utf-8", "surrogatepass") for k in keys], dtype=bytes)
    if encoded.size == 0:
        return np.zeros(0, dtype=np.uint64)
    width = max(encoded.dtype.itemsize, 1)
    columns = np.frombuffer(encoded.tobytes(), dtype=np.uint8).reshape(len(encoded), width)
    lengths = np.char.str_len(encoded)
    h = np.full(len(encoded), _FNV_OFFSET, dtype=np.uint64)
    for j in range(width):
        # keys shorter than the array's width are NUL-padded: only their own bytes enter the hash
        h = np.where(j < lengths, (h ^ columns[:, j].astype(np.uint64)) * _FNV_PRIME, h)
    seed_mix = _splitmix64(np.array([int(seed) & 0xFFFFFFFFFFFFFFFF], dtype=np.uint64))
    return _splitmix64(h ^ seed_mix)


def required_speakers(n: int, min_speaker_fraction: float = 0.0125) -> int:
    """The published minimum number of speakers in a speaker-verification subset of ``n`` utterances."""
    # round first so that float noise (0.0125 * 80 = 1.0000000000000002) does not add a speaker
    return int(math.ceil(round(n * min_speaker_fraction, 9)))


def _require_columns(df: pl.DataFrame, columns: Sequence[str], what: str) -> None:
    missing = [c for c in columns if c not in df.columns]
    if missing:
        raise SamplingError(f"{what} needs column(s) {missing}; the table has {df.columns}")


def _require_no_nulls(df: pl.DataFrame, column: str, what: str) -> None:
    nulls = df.with_row_index("_row").filter(pl.col(column).is_null())
    if nulls.height:
        rows = nulls["_row"].to_list()
        shown = ", ".join(map(str, rows[:10])) + (" ..." if len(rows) > 10 else "")
        raise SamplingError(
            f"{what}: {len(rows)} row(s) have no {column!r} (rows {shown}); "
            "fill them in or filter them out first"
        )


def _ordered(df: pl.DataFrame, seed: int, *, group: str | None = None) -> pl.DataFrame:
    """``df`` sorted by the seeded rank of its utt_id (within ``group`` first when given).

    Ties (duplicate utt_ids) fall back to the input order, the only case where the input order matters.
    """
    keys = df["utt_id"] if "utt_id" in df.columns else pl.Series(range(df.height))
    ranked = df.with_columns(
        pl.Series("_rank", seeded_rank(keys.to_list(), seed)), pl.int_range(pl.len()).alias("_pos")
    )
    by = ([group] if group else []) + ["_rank", "_pos"]
    return ranked.sort(by)


def speaker_disjoint_split(df: pl.DataFrame, *, test_fraction: float = 0.25, seed: int = 0) -> pl.DataFrame:
    """Add (or complete) a ``split`` column: per language, every speaker's rows go to ``train`` or ``test``.

    Rows that already have a split keep it; an unsplit row of a speaker who already has split rows follows
    that speaker (their most common split). The remaining speakers are assigned per language *and gender*
    (when a ``gender`` column exists) so both genders have test speakers, which same-gender trials need: in
    each group of K speakers, ``round(test_fraction * K)`` go to test (at least 1 and at most K-1 when K >= 2;
    a lone speaker goes to train). Which speakers is decided by a seeded rank of the speaker id. Row order is
    kept.
    """
    if not 0.0 <= test_fraction < 1.0:
        raise SamplingError(f"test_fraction must be in [0, 1), got {test_fraction}")
    _require_columns(df, ("language", "speaker"), "speaker_disjoint_split")
    _require_no_nulls(df, "speaker", "speaker_disjoint_split")
    out = df if "split" in df.columns else df.with_columns(pl.lit(None, dtype=pl.String).alias("split"))
    out = out.with_columns(pl.col("split").cast(pl.String))

    # Speakers that already have split rows: their unsplit rows follow them (ties -> train, the safer side).
    existing = (
        out.filter(pl.col("split").is_not_null())
        .group_by("language", "speaker", "split")
        .len()
        .sort(["language", "speaker", "len", "split"], descending=[False, False, True, False])
        .unique(["language", "speaker"], keep="first", maintain_order=True)
        .select("language", "speaker", pl.col("split").alias("_speaker_split"))
    )
    fresh = out.filter(pl.col("split").is_null()).join(existing, on=["language", "speaker"], how="anti")
    gender = (
        pl.col("gender").drop_nulls().mode().sort().first()
        if "gender" in out.columns
        else pl.lit(None, dtype=pl.String)
    )
    speakers = fresh.group_by("language", "speaker").agg(gender.cast(pl.String).alias("_gender"))
    speakers = speakers.with_columns(pl.Series("_rank", seeded_rank(speakers["speaker"].to_list(), seed)))
    speakers = speakers.sort("language", "_gender", "_rank", "speaker", nulls_last=True)
    speakers = speakers.with_columns(
        pl.int_range(pl.len()).over("language", "_gender").alias("_i"),
        pl.len().over("language", "_gender").alias("_k"),
    )
    k = pl.col("_k")
    n_test = (
        pl.when(k < 2)
        .then(0)
        .otherwise((k * test_fraction).round(0).clip(1 if test_fraction > 0 else 0, k - 1))
    )
    assigned = speakers.select(
        "language",
        "speaker",
        pl.when(pl.col("_i") < n_test)
        .then(pl.lit("test"))
        .otherwise(pl.lit("train"))
        .alias("_speaker_split"),
    )
    lookup = pl.concat([existing, assigned])
    # an explicit row index keeps the input order on every polars version (join order is not guaranteed)
    out = out.with_row_index("_row").join(lookup, on=["language", "speaker"], how="left").sort("_row")
    out = out.with_columns(pl.coalesce("split", "_speaker_split").alias("split"))
    return out.drop("_speaker_split", "_row")


def balanced_subset(
    pool: pl.DataFrame,
    label: str,
    n_per_class: int,
    *,
    seed: int,
    classes: Sequence[str] | None = None,
) -> pl.DataFrame:
    """``n_per_class`` rows of each class of ``label`` (every non-null value, or just ``classes``).

    Nested: each class's rows are a prefix of one seeded per-class order, so for a fixed seed the subset for n
    is contained in the subset for 2n. Rows come back class-interleaved in rank order (first of each class,
    then the second of each, ...), so ``result.head(k * n_classes)`` is itself the balanced subset for k.
    """
    if n_per_class < 1:
        raise SamplingError(f"n_per_class must be >= 1, got {n_per_class}")
    _require_columns(pool, (label,), "balanced_subset")
    values = pool[label].to_list()
    present = sorted({v for v in values if v is not None}, key=str)
    wanted = list(classes) if classes is not None else present
    class_pos = {c: i for i, c in enumerate(wanted)}
    code = np.array([class_pos.get(v, -1) if v is not None else -1 for v in values], dtype=np.int64)
    counts = np.bincount(code[code >= 0], minlength=len(wanted))
    short = {c: int(counts[i]) for i, c in enumerate(wanted) if counts[i] < n_per_class}
    if not wanted:
        raise SamplingError(f"balanced_subset: the pool has no rows with a {label!r} value")
    if short:
        have = ", ".join(f"{c!r}: {int(counts[i])}" for i, c in enumerate(wanted))
        raise SamplingError(
            f"balanced_subset: asked for {n_per_class} rows per {label!r} class, but the pool has {have} "
            f"(too few: {sorted(map(str, short))}); lower n or use a larger pool"
        )
    # per class, the seeded order of utt_id (input position breaks ties), first n_per_class of each; then
    # interleaved: the first of every class in ``wanted`` order, then the second, ...
    rows = np.flatnonzero(code >= 0)
    if "utt_id" in pool.columns:
        utt_ids = pool["utt_id"].to_list()
        rank = seeded_rank([utt_ids[r] for r in rows], seed)
    else:  # no ids: the position among the candidate rows is the key
        rank = seeded_rank(range(len(rows)), seed)
    order = rows[np.lexsort((rows, rank, code[rows]))]
    first_of_class = np.searchsorted(code[order], np.arange(len(wanted)))
    within = np.arange(len(order)) - first_of_class[code[order]]
    kept, kept_within = order[within < n_per_class], within[within < n_per_class]
    return pool[kept[np.lexsort((code[kept], kept_within))]]


def speaker_subset(
    pool: pl.DataFrame,
    n: int,
    *,
    seed: int,
    min_speaker_fraction: float = 0.0125,
    utts_per_visit: int = 4,
) -> pl.DataFrame:
    """``n`` utterances for a speaker-verification back-end, from at least ``ceil(min_speaker_fraction * n)``
    speakers (the published rule), nested across n for a fixed seed.

    A back-end such as LDA/PLDA learns from *within*-speaker variation, so one utterance per speaker is
    useless and the published minimum alone (1 speaker for N < 80) leaves no between-speaker variation. So:
    speakers are visited in a seeded order, round after round; each visit takes the speaker's next
    ``utts_per_visit`` utterances (seeded order). N=20 with the default gives 5 speakers x 4 utterances;
    larger N adds speakers first, then more utterances per speaker. The result is a prefix of this one
    sequence (returned in that order), so every smaller subset is nested in a larger one, and as long as
    ``utts_per_visit <= 1 / min_speaker_fraction`` every prefix respects the minimum-speaker rule.
    """
    if n < 1:
        raise SamplingError(f"n must be >= 1, got {n}")
    if utts_per_visit < 1:
        raise SamplingError(f"utts_per_visit must be >= 1, got {utts_per_visit}")
    _require_columns(pool, ("speaker",), "speaker_subset")
    _require_no_nulls(pool, "speaker", "speaker_subset")
    if min_speaker_fraction > 0:
        # a visit larger than 1/fraction could leave an early prefix with too few speakers
        utts_per_visit = min(utts_per_visit, max(1, int(math.floor(round(1.0 / min_speaker_fraction, 9)))))
    n_speakers = pool["speaker"].n_unique()
    need = required_speakers(n, min_speaker_fraction)
    if n > pool.height or n_speakers < need:
        raise SamplingError(
            f"speaker_subset: asked for {n} utterances from >= {need} speakers, but the pool has "
            f"{pool.height} utterances from {n_speakers} speakers; lower n or use a larger pool"
        )
    ranked = _ordered(pool, seed, group="speaker")
    speaker_rank = pl.DataFrame(
        {"speaker": (spk := pool["speaker"].unique().to_list()), "_srank": seeded_rank(spk, seed + 0x5EED)},
        schema_overrides={"speaker": pool.schema["speaker"]},
    )
    ranked = ranked.join(speaker_rank, on="speaker", how="left").with_columns(
        (pl.int_range(pl.len()).over("speaker") // utts_per_visit).alias("_visit")
    )
    ranked = ranked.sort("_visit", "_srank", "speaker", "_rank", "_pos")
    return ranked.head(n).drop("_rank", "_pos", "_srank", "_visit")


def make_trials(
    test_pool: pl.DataFrame,
    *,
    seed: int,
    max_targets_per_speaker: int = 20,
    same_gender: bool = True,
) -> pl.DataFrame:
    """A verification trial list ``[enroll, test, label]`` (utt_ids; label 1 = same speaker) from a test pool.

    Target trials: unordered pairs of two different utterances of one speaker, at most
    ``max_targets_per_speaker`` per speaker (a seeded choice among all pairs). Non-target trials: exactly one
    per target trial, with the same enrolment utterance (when that utterance still has an unused partner;
    otherwise any unused pair of the group) and a test utterance of another speaker, of the same
    gender when ``same_gender`` (rows with no gender are then left out, and so are speakers who are the only
    one of their gender) and of the same language when the pool has a ``language`` column. No self-pairs, no
    pair twice (in either orientation). Targets come first, then non-targets, each in seeded order.
    """
    if max_targets_per_speaker < 1:
        raise SamplingError(f"max_targets_per_speaker must be >= 1, got {max_targets_per_speaker}")
    _require_columns(test_pool, ("utt_id", "speaker") + (("gender",) if same_gender else ()), "make_trials")
    _require_no_nulls(test_pool, "speaker", "make_trials")
    pool = test_pool.unique("utt_id", keep="first", maintain_order=True)
    # non-targets come from the same group: same gender when asked, and the same language in a mixed pool
    group_parts = [pl.col("language").cast(pl.String)] if "language" in pool.columns else [pl.lit("")]
    if same_gender:
        pool = pool.filter(pl.col("gender").is_not_null())
        group_parts.append(pl.col("gender").cast(pl.String))
    pool = pool.select(
        pl.col("utt_id").cast(pl.String),
        pl.col("speaker").cast(pl.String),
        pl.concat_str(group_parts, separator="/").alias("_group"),
    )
    # speakers who are alone in their gender group can have no same-gender non-target
    pool = pool.filter(pl.col("speaker").n_unique().over("_group") >= 2)
    pool = _ordered(pool, seed).drop("_pos")
    rng = np.random.default_rng([int(seed) & 0xFFFFFFFF, 0x7121A15])

    targets: list[tuple[str, str, str]] = []  # (enroll, test, group)
    for _, utts in pool.group_by("speaker", maintain_order=True):
        ids = utts["utt_id"].to_list()
        if len(ids) < 2:
            continue
        n_pairs = len(ids) * (len(ids) - 1) // 2
        take = min(max_targets_per_speaker, n_pairs)
        picks = rng.choice(n_pairs, size=take, replace=False) if take < n_pairs else np.arange(n_pairs)
        i, j = _pair_from_index(np.sort(picks), len(ids))
        grp = utts["_group"][0]
        targets.extend((ids[a], ids[b], grp) for a, b in zip(i.tolist(), j.tolist(), strict=True))
    if not targets:
        raise SamplingError(
            f"make_trials: no target trial possible: the pool has {test_pool.height} rows from "
            f"{test_pool['speaker'].n_unique()} speakers, and a target trial needs a speaker with "
            ">= 2 utterances"
            + (" and another speaker of the same gender" if same_gender else "")
            + (" and language" if "language" in test_pool.columns else "")
        )

    by_group = {
        g: (frame["utt_id"].to_numpy(), frame["speaker"].to_numpy())
        for (g,), frame in pool.group_by("_group", maintain_order=True)
    }
    speaker_of = dict(zip(pool["utt_id"].to_list(), pool["speaker"].to_list(), strict=True))
    used = {frozenset((e, t)) for e, t, _ in targets}
    nontargets: list[tuple[str, str]] = []
    short_by_group: Counter[str] = Counter()
    for enroll, _, g in targets:
        ids, spk = by_group[g]
        # random draws first (almost always one suffices), then an exhaustive seeded scan
        candidates = np.concatenate([rng.integers(0, len(ids), size=32), rng.permutation(len(ids))])
        for k in candidates:
            if spk[k] != speaker_of[enroll] and frozenset((enroll, ids[k])) not in used:
                used.add(frozenset((enroll, ids[k])))
                nontargets.append((enroll, str(ids[k])))
                break
        else:  # this enrolment has no unused partner left (tiny groups): take any unused pair of the group
            short_by_group[g] += 1
    for g, missing in short_by_group.items():
        ids, spk = by_group[g]
        free = [
            (str(ids[a]), str(ids[b]))
            for a, b in itertools.combinations(range(len(ids)), 2)
            if spk[a] != spk[b] and frozenset((ids[a], ids[b])) not in used
        ]
        if len(free) < missing:
            n_targets = sum(1 for _, _, tg in targets if tg == g)
            raise SamplingError(
                f"make_trials: group {g!r} (language/gender) has {len(ids)} utterances and only "
                f"{n_targets - missing + len(free)} distinct non-target pairs for {n_targets} target trials; "
                "lower max_targets_per_speaker or add speakers"
            )
        nontargets.extend(free[i] for i in sorted(rng.choice(len(free), size=missing, replace=False)))
    return pl.DataFrame(
        {
            "enroll": [e for e, _, _ in targets] + [e for e, _ in nontargets],
            "test": [t for _, t, _ in targets] + [t for _, t in nontargets],
            "label": [1] * len(targets) + [0] * len(nontargets),
        },
        schema={"enroll": pl.String, "test": pl.String, "label": pl.Int8},
    )


def _pair_from_index(k: np.ndarray, m: int) -> tuple[np.ndarray, np.ndarray]:
    """Map linear indices of the pairs (i < j) of ``m`` items, in row-major order, to (i, j)."""
    # row i starts at i*m - i*(i+1)/2; invert with a searchsorted over row starts (m is small per speaker)
    starts = np.array([r * m - r * (r + 1) // 2 for r in range(m)], dtype=np.int64)
    i = np.searchsorted(starts, k, side="right") - 1
    j = k - starts[i] + i + 1
    return i, j

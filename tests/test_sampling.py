"""cltm.corpus.sampling: the CLTM data rules, checked as properties against plain-Python references."""

from __future__ import annotations

import itertools
import math
from collections import Counter, defaultdict

import numpy as np
import polars as pl
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from cltm.corpus.sampling import (
    SamplingError,
    _pair_from_index,
    balanced_subset,
    make_trials,
    required_speakers,
    seeded_rank,
    speaker_disjoint_split,
    speaker_subset,
)

SETTINGS = settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@st.composite
def pools(draw, max_languages: int = 2, max_speakers: int = 8, max_utts: int = 9) -> pl.DataFrame:
    """A random corpus: languages x speakers (each with a gender) x utterances, rows in a random order."""
    rows = []
    for li in range(draw(st.integers(1, max_languages))):
        for si in range(draw(st.integers(1, max_speakers))):
            gender = draw(st.sampled_from(["female", "male"]))
            for ui in range(draw(st.integers(1, max_utts))):
                rows.append(
                    {
                        "utt_id": f"L{li}-S{si}-U{ui}",
                        "path": f"L{li}/S{si}/{ui}.wav",
                        "language": f"L{li}",
                        "speaker": f"L{li}-S{si}",
                        "gender": gender,
                    }
                )
    order = draw(st.permutations(range(len(rows))))
    return pl.DataFrame([rows[i] for i in order])


def _shuffled(df: pl.DataFrame, seed: int) -> pl.DataFrame:
    return df[np.random.default_rng(seed).permutation(df.height).tolist()]


# --------------------------------------------------------------------------------------------------------
# balanced_subset
# --------------------------------------------------------------------------------------------------------


@SETTINGS
@given(pool=pools(), n=st.integers(1, 12), seed=st.integers(0, 10_000))
def test_balanced_subset_balance_nesting_determinism(pool, n, seed):
    counts = Counter(pool["gender"].to_list())
    if min(counts.get("female", 0), counts.get("male", 0)) < n:
        with pytest.raises(SamplingError) as info:
            balanced_subset(pool, "gender", n, seed=seed, classes=["female", "male"])
        for cls in ("female", "male"):
            assert f"'{cls}': {counts.get(cls, 0)}" in str(info.value)
        return
    sub = balanced_subset(pool, "gender", n, seed=seed, classes=["female", "male"])
    assert Counter(sub["gender"].to_list()) == {"female": n, "male": n}
    assert sub["utt_id"].n_unique() == 2 * n
    assert set(sub.columns) == set(pool.columns)
    # the rows are real pool rows, unchanged
    assert sub.join(pool, on=pool.columns, how="anti").height == 0
    # nested: every smaller n is contained, and is the class-interleaved prefix
    for k in range(1, n):
        smaller = balanced_subset(pool, "gender", k, seed=seed, classes=["female", "male"])
        assert set(smaller["utt_id"]) <= set(sub["utt_id"])
        assert smaller["utt_id"].to_list() == sub["utt_id"].head(2 * k).to_list()
    # the pool's row order does not matter
    again = balanced_subset(_shuffled(pool, seed), "gender", n, seed=seed, classes=["female", "male"])
    assert again["utt_id"].to_list() == sub["utt_id"].to_list()


def test_balanced_subset_uses_all_classes_and_seeds_differ():
    pool = pl.DataFrame(
        {"utt_id": [f"u{i}" for i in range(90)], "emotion": ["ang", "hap", "sad"] * 30, "x": range(90)}
    )
    sub = balanced_subset(pool, "emotion", 10, seed=3)
    assert Counter(sub["emotion"].to_list()) == {"ang": 10, "hap": 10, "sad": 10}
    picks = {tuple(sorted(balanced_subset(pool, "emotion", 10, seed=s)["utt_id"])) for s in range(5)}
    assert len(picks) == 5
    with pytest.raises(SamplingError, match="'neu': 0"):
        balanced_subset(pool, "emotion", 1, seed=0, classes=["ang", "neu"])


def test_adding_rows_does_not_reshuffle_existing_ranks():
    base = pl.DataFrame({"utt_id": [f"a{i}" for i in range(40)], "c": ["x", "y"] * 20})
    grown = pl.concat([base, pl.DataFrame({"utt_id": [f"b{i}" for i in range(40)], "c": ["x", "y"] * 20})])
    sub_base = balanced_subset(base, "c", 20, seed=7)
    sub_grown = balanced_subset(grown, "c", 40, seed=7)
    # per class, the base rows keep their relative order inside the grown pool's sequence
    for cls in ("x", "y"):
        in_base = sub_base.filter(pl.col("c") == cls)["utt_id"].to_list()
        in_grown = sub_grown.filter(pl.col("c") == cls)["utt_id"].to_list()
        assert [u for u in in_grown if u.startswith("a")] == in_base


# --------------------------------------------------------------------------------------------------------
# speaker_subset
# --------------------------------------------------------------------------------------------------------


@SETTINGS
@given(
    pool=pools(max_languages=1, max_speakers=10, max_utts=12),
    n=st.integers(1, 60),
    fraction=st.sampled_from([0.0125, 0.1, 0.25]),
    per_visit=st.integers(1, 6),
    seed=st.integers(0, 10_000),
)
def test_speaker_subset_rules(pool, n, fraction, per_visit, seed):
    n_speakers = pool["speaker"].n_unique()
    need = math.ceil(round(n * fraction, 9))
    if n > pool.height or n_speakers < need:
        with pytest.raises(SamplingError) as info:
            speaker_subset(pool, n, seed=seed, min_speaker_fraction=fraction, utts_per_visit=per_visit)
        assert f"{pool.height} utterances from {n_speakers} speakers" in str(info.value)
        return
    sub = speaker_subset(pool, n, seed=seed, min_speaker_fraction=fraction, utts_per_visit=per_visit)
    ids = sub["utt_id"].to_list()
    assert len(ids) == n == len(set(ids))
    assert set(ids) <= set(pool["utt_id"])
    # every prefix (= the subset for every smaller n) respects the minimum-speaker rule and is nested
    speakers = sub["speaker"].to_list()
    for k in range(1, n + 1):
        assert len(set(speakers[:k])) >= math.ceil(round(k * fraction, 9)), (k, speakers[:k])
    kwargs = {"seed": seed, "min_speaker_fraction": fraction, "utts_per_visit": per_visit}
    half = max(1, n // 2)
    assert speaker_subset(pool, half, **kwargs)["utt_id"].to_list() == ids[:half]
    # speakers come in visits of up to `visit` utterances, round-robin: no speaker runs more than one visit
    # ahead of another unless that other one has no utterances left (a speaker not drawn yet counts 0)
    visit = max(1, min(per_visit, int(math.floor(round(1 / fraction, 9)))))
    count = Counter(speakers)
    available = Counter(pool["speaker"].to_list())
    for s, t in itertools.product(available, repeat=2):
        assert count[s] - count[t] <= visit or count[t] == available[t], (s, t, count, visit)
    again = speaker_subset(_shuffled(pool, seed + 1), n, **kwargs)
    assert again["utt_id"].to_list() == ids


def test_speaker_subset_gives_several_utterances_per_speaker():
    pool = pl.DataFrame(
        {
            "utt_id": [f"s{s}-u{u}" for s in range(20) for u in range(10)],
            "speaker": [f"s{s}" for s in range(20) for _ in range(10)],
        }
    )
    sub = speaker_subset(pool, 20, seed=0)
    assert sorted(Counter(sub["speaker"].to_list()).values()) == [4] * 5  # 5 speakers x 4, not 20 x 1
    big = speaker_subset(pool, 200, seed=0)
    assert Counter(big["speaker"].to_list()) == dict.fromkeys([f"s{s}" for s in range(20)], 10)
    assert required_speakers(80) == 1 and required_speakers(81) == 2 and required_speakers(1) == 1


def test_speaker_subset_errors_name_the_pool():
    pool = pl.DataFrame({"utt_id": [f"u{i}" for i in range(200)], "speaker": ["a", "b"] * 100})
    with pytest.raises(SamplingError, match="200 utterances from 2 speakers"):
        speaker_subset(pool, 200, seed=0)  # 200 needs ceil(2.5) = 3 speakers
    one_missing = pool.with_columns(
        pl.when(pl.col("utt_id") == "u1").then(None).otherwise(pl.col("speaker")).alias("speaker")
    )
    with pytest.raises(SamplingError, match="rows 1"):
        speaker_subset(one_missing, 5, seed=0)


# --------------------------------------------------------------------------------------------------------
# speaker_disjoint_split
# --------------------------------------------------------------------------------------------------------


@SETTINGS
@given(pool=pools(max_speakers=10), fraction=st.sampled_from([0.2, 0.25, 0.5]), seed=st.integers(0, 10_000))
def test_speaker_disjoint_split_properties(pool, fraction, seed):
    out = speaker_disjoint_split(pool, test_fraction=fraction, seed=seed)
    assert out.drop("split").equals(pool)  # rows and order kept
    assert set(out["split"].unique()) <= {"train", "test"}
    split_of = defaultdict(set)
    for spk, split in zip(out["speaker"], out["split"], strict=True):
        split_of[spk].add(split)
    assert all(len(v) == 1 for v in split_of.values())  # speaker-disjoint
    # per language x gender: a lone speaker trains, otherwise both sides are non-empty and sized by fraction
    groups = defaultdict(dict)
    for row in out.unique("speaker").iter_rows(named=True):
        groups[(row["language"], row["gender"])][row["speaker"]] = row["split"]
    for members in groups.values():
        k = len(members)
        n_test = sum(v == "test" for v in members.values())
        expected = 0 if k < 2 else min(max(1, round(k * fraction)), k - 1)
        assert n_test == expected
    again = speaker_disjoint_split(_shuffled(pool, seed), test_fraction=fraction, seed=seed)
    assert dict(zip(again["utt_id"], again["split"], strict=True)) == dict(
        zip(out["utt_id"], out["split"], strict=True)
    )


def test_existing_split_is_kept_and_followed():
    pool = pl.DataFrame(
        {
            "utt_id": [f"u{i}" for i in range(8)],
            "language": ["en"] * 8,
            "speaker": ["a", "a", "b", "b", "c", "c", "d", "d"],
            "split": ["test", None, "dev", "dev", None, None, None, None],
        }
    )
    out = speaker_disjoint_split(pool, test_fraction=0.5, seed=0)
    split = dict(zip(out["utt_id"], out["split"], strict=True))
    assert split["u0"] == split["u1"] == "test"  # a's unsplit row follows a
    assert split["u2"] == split["u3"] == "dev"
    assert {split["u4"], split["u6"]} == {"train", "test"}  # c, d: one each
    assert split["u4"] == split["u5"] and split["u6"] == split["u7"]


# --------------------------------------------------------------------------------------------------------
# make_trials
# --------------------------------------------------------------------------------------------------------


def _reference_counts(pool: pl.DataFrame, cap: int) -> tuple[int, bool]:
    """(targets a correct sampler must produce, whether every group has enough distinct non-target pairs).

    A speaker is eligible when another speaker of the same language and gender exists; it contributes
    min(cap, C(n, 2)) targets. A group can give as many non-targets as it has cross-speaker pairs."""
    per_group: dict[tuple, list[int]] = defaultdict(list)
    for (lang, gender, _), frame in pool.group_by("language", "gender", "speaker"):
        per_group[(lang, gender)].append(frame.height)
    total, enough = 0, True
    for sizes in per_group.values():
        if len(sizes) < 2:
            continue
        targets = sum(min(cap, n * (n - 1) // 2) for n in sizes)
        cross = math.comb(sum(sizes), 2) - sum(math.comb(n, 2) for n in sizes)
        total += targets
        enough &= cross >= targets
    return total, enough


@SETTINGS
@given(pool=pools(max_speakers=6, max_utts=7), cap=st.integers(1, 8), seed=st.integers(0, 10_000))
def test_make_trials_rules(pool, cap, seed):
    expected_targets, enough_nontargets = _reference_counts(pool, cap)
    if expected_targets == 0:
        with pytest.raises(SamplingError, match="no target trial"):
            make_trials(pool, seed=seed, max_targets_per_speaker=cap)
        return
    if not enough_nontargets:
        with pytest.raises(SamplingError, match="distinct non-target pairs"):
            make_trials(pool, seed=seed, max_targets_per_speaker=cap)
        return
    trials = make_trials(pool, seed=seed, max_targets_per_speaker=cap)
    info = {r["utt_id"]: r for r in pool.iter_rows(named=True)}
    assert trials.columns == ["enroll", "test", "label"]
    labels = trials["label"].to_list()
    assert labels.count(1) == expected_targets == labels.count(0)  # 1:1
    pairs = set()
    targets_per_speaker = Counter()
    for enroll, test, label in trials.iter_rows():
        a, b = info[enroll], info[test]
        assert enroll != test  # no self-pairs
        assert label == int(a["speaker"] == b["speaker"])
        assert a["gender"] == b["gender"] and a["language"] == b["language"]
        key = frozenset((enroll, test))
        assert key not in pairs  # no duplicates, either orientation
        pairs.add(key)
        if label:
            targets_per_speaker[a["speaker"]] += 1
    assert max(targets_per_speaker.values()) <= cap
    again = make_trials(_shuffled(pool, seed), seed=seed, max_targets_per_speaker=cap)
    assert again.equals(trials)


def test_make_trials_mixed_gender_when_not_asked():
    pool = pl.DataFrame(
        {
            "utt_id": [f"{s}{u}" for s in "ab" for u in range(4)],
            "speaker": [s for s in "ab" for _ in range(4)],
            "gender": ["female"] * 4 + ["male"] * 4,
        }
    )
    with pytest.raises(SamplingError, match="same gender"):
        make_trials(pool, seed=0)
    trials = make_trials(pool, seed=0, same_gender=False, max_targets_per_speaker=3)
    assert trials["label"].to_list().count(0) == 6


def test_pair_index_matches_itertools():
    for m in range(2, 9):
        ref = list(itertools.combinations(range(m), 2))
        i, j = _pair_from_index(np.arange(len(ref)), m)
        assert list(zip(i.tolist(), j.tolist(), strict=True)) == ref


def test_make_trials_tiny_group_falls_back_to_any_unused_pair():
    # speaker a: 7 utterances (21 pairs, 8 kept); speaker b: 2. Some enrolment of a appears in 2+ targets
    # but b offers only 2 partners, so the sampler must use other pairs of the group to stay 1:1.
    ids = [f"a{u}" for u in range(7)] + ["b0", "b1"]
    pool = pl.DataFrame({"utt_id": ids, "speaker": [i[0] for i in ids], "gender": ["male"] * 9})
    for seed in range(10):
        trials = make_trials(pool, seed=seed, max_targets_per_speaker=8)
        labels = trials["label"].to_list()
        assert labels.count(1) == 9 == labels.count(0)
        nontargets = trials.filter(pl.col("label") == 0)
        assert all(e[0] != t[0] for e, t in zip(nontargets["enroll"], nontargets["test"], strict=True))
        assert len({frozenset(p) for p in zip(trials["enroll"], trials["test"], strict=True)}) == 18
    with pytest.raises(SamplingError, match="distinct non-target pairs"):
        make_trials(pool.filter(pl.col("utt_id") != "b1"), seed=0, max_targets_per_speaker=8)


def _rank_reference(key: object, seed: int) -> int:
    """FNV-1a 64 over UTF-8 bytes, xor splitmix64(seed), splitmix64: with Python ints, one key at a time."""
    mask = (1 << 64) - 1

    def splitmix(x: int) -> int:
        x = (x + 0x9E3779B97F4A7C15) & mask
        x = ((x ^ (x >> 30)) * 0xBF58476D1CE4E5B9) & mask
        x = ((x ^ (x >> 27)) * 0x94D049BB133111EB) & mask
        return x ^ (x >> 31)

    h = 0xCBF29CE484222325
    for byte in str(key).encode("utf-8", "surrogatepass"):
        h = ((h ^ byte) * 0x100000001B3) & mask
    return splitmix(h ^ splitmix(seed & mask))


_MANIFEST_CHARS = st.characters(blacklist_characters="\x00", blacklist_categories=("Cs",))


@SETTINGS
@given(
    # keys are manifest strings: valid UTF-8, so no lone surrogates (category Cs)
    keys=st.lists(st.text(alphabet=_MANIFEST_CHARS, max_size=30)),
    seed=st.integers(-(2**40), 2**40),
)
def test_seeded_rank_matches_reference(keys, seed):
    assert seeded_rank(keys, seed).tolist() == [_rank_reference(k, seed) for k in keys]
    assert seeded_rank([*reversed(keys)], seed).tolist() == [_rank_reference(k, seed) for k in reversed(keys)]


def test_seeded_rank_hashes_a_lone_surrogate():
    # a legal Python str that is not valid UTF-8 (hypothesis found it): hashed, not a UnicodeEncodeError
    assert seeded_rank(["\ud800", "a"], 3).tolist() == [_rank_reference("\ud800", 3), _rank_reference("a", 3)]


def _balanced_reference(pool, label, n, seed, classes=None):
    """The definition, spelled out: per class the rows in seeded utt_id order (position breaks ties), the
    first n of each, interleaved class by class in ``classes`` order (default: sorted present values)."""
    from cltm.corpus.sampling import seeded_rank

    rows = [i for i, v in enumerate(pool[label].to_list()) if v is not None]
    values = pool[label].to_list()
    wanted = list(classes) if classes is not None else sorted({values[i] for i in rows}, key=str)
    rows = [i for i in rows if values[i] in wanted]
    keys = [pool["utt_id"][i] for i in rows] if "utt_id" in pool.columns else list(range(len(rows)))
    rank = dict(zip(rows, seeded_rank(keys, seed).tolist(), strict=True))
    per_class = [sorted((i for i in rows if values[i] == c), key=lambda i: (rank[i], i))[:n] for c in wanted]
    return [lst[k] for k in range(n) for lst in per_class]


def test_balanced_subset_equals_its_definition():
    rng = np.random.default_rng(0)
    for t in range(20):
        size = int(rng.integers(12, 60))
        genders = rng.choice(["f", "m", "x", None], size=size, p=[0.4, 0.4, 0.1, 0.1]).tolist()
        ids = [f"u{rng.integers(0, 30)}" for _ in range(size)]  # duplicate ids: ties broken by position
        df = pl.DataFrame({"utt_id": ids, "gender": genders, "row": range(size)})
        for frame in (df, df.drop("utt_id")):
            for classes in (None, ["m", "f"]):
                present = [c for c in (classes or ["f", "m", "x"]) if c in genders]
                n = min(genders.count(c) for c in present) if present else 0
                if n < 1 or (classes is None and set(present) != {g for g in genders if g}):
                    continue
                got = balanced_subset(frame, "gender", n, seed=t, classes=classes)["row"].to_list()
                assert got == _balanced_reference(frame, "gender", n, t, classes)

"""plan_conditions: nested subsets, fixed test sets, speaker-disjointness, skipped languages, trials."""

import numpy as np
import polars as pl
import pytest

from cltm.transfer.conditions import plan_conditions, plan_languages


def _manifest(spec: dict[str, int], utts: int = 8, with_split: bool = False) -> pl.DataFrame:
    rows = []
    for lang, n_speakers in spec.items():
        for s in range(n_speakers):
            for u in range(utts):
                row = {
                    "utt_id": f"{lang}_{s}_{u}",
                    "path": "x.wav",
                    "language": lang,
                    "speaker": f"{lang}_s{s}",
                    "gender": "female" if s % 2 else "male",
                }
                if with_split:
                    row["split"] = "test" if s < 4 else "train"
                rows.append(row)
    return pl.DataFrame(rows)


def _rows(plans, condition, target, donor, seed):
    hits = [p for p in plans if (p.condition, p.target, p.donor, p.seed) == (condition, target, donor, seed)]
    assert len(hits) == 1
    return hits[0]


def test_gender_plan_is_nested_balanced_and_speaker_disjoint():
    man = _manifest({"ca": 16, "es": 16, "de": 16})
    plans = plan_conditions(man, "gender", n=6, seeds=3)
    assert plans.skipped.height == 0
    langs = ["ca", "de", "es"]
    expected = 3 * 3 * (2 + 2 * 2)  # seeds * targets * (single, self, 2 pairs, 2 zero-shots)
    assert len(plans) == expected
    spk = man["speaker"].to_numpy()
    gender = man["gender"].to_numpy()
    language = man["language"].to_numpy()
    for seed in range(3):
        for t in langs:
            single = _rows(plans, "single", t, t, seed)
            own = _rows(plans, "self", t, t, seed)
            assert len(single.train_rows) == 12 and len(own.train_rows) == 24
            assert set(single.train_rows) <= set(own.train_rows)  # nested
            assert sorted(gender[own.train_rows].tolist()) == ["female"] * 12 + ["male"] * 12
            assert set(language[own.train_rows]) == {t}
            # test set fixed across seeds and conditions, and speaker-disjoint from every training set
            assert np.array_equal(single.test_rows, _rows(plans, "single", t, t, 0).test_rows)
            assert not set(spk[own.train_rows]) & set(spk[own.test_rows])
            assert set(language[own.test_rows]) == {t}
            for d in langs:
                if d == t:
                    continue
                pair = _rows(plans, "pair", t, d, seed)
                zero = _rows(plans, "zero_shot", t, d, seed)
                donor_single = _rows(plans, "single", d, d, seed)
                # the N of i in pair is the N of single; the N of j is j's own single subset
                assert np.array_equal(pair.train_rows[:12], single.train_rows)
                assert np.array_equal(pair.train_rows[12:], donor_single.train_rows)
                assert np.array_equal(zero.train_rows, donor_single.train_rows)
                assert np.array_equal(pair.test_rows, single.test_rows)
    # different seeds draw different subsets
    assert not np.array_equal(
        _rows(plans, "single", "ca", "ca", 0).train_rows, _rows(plans, "single", "ca", "ca", 1).train_rows
    )


def test_manifest_split_column_is_used_as_is():
    man = _manifest({"ca": 12, "es": 12}, with_split=True)
    plans = plan_conditions(man, "gender", n=4, seeds=2)
    split = man["split"].to_numpy()
    for p in plans:
        assert set(split[p.train_rows]) == {"train"}
        assert set(split[p.test_rows]) == {"test"}
    target_test = {p.target: len(p.test_rows) for p in plans}
    assert target_test == {"ca": 4 * 8, "es": 4 * 8}


def test_language_with_too_little_data_is_reported_and_left_out():
    man = _manifest({"ca": 16, "es": 16, "tiny": 4}, utts=2)
    plans = plan_conditions(man, "gender", n=6, seeds=2, languages=["ca", "es", "tiny", "absent"])
    skipped = dict(plans.skipped.iter_rows())
    assert set(skipped) == {"tiny", "absent"}
    assert "2N=12" in skipped["tiny"] and "not in the manifest" in skipped["absent"]
    assert {p.target for p in plans} | {p.donor for p in plans} == {"ca", "es"}


def test_subsets_do_not_depend_on_other_languages_or_row_order():
    man = _manifest({"ca": 16, "es": 16, "de": 16})
    full, _ = plan_languages(man, "gender", n=5, seeds=[7])
    only, _ = plan_languages(man.filter(pl.col("language") == "ca").reverse(), "gender", n=5, seeds=[7])
    ids_full = set(man["utt_id"].to_numpy()[full["ca"].rows_2n[7]])
    rev = man.filter(pl.col("language") == "ca").reverse()
    ids_only = set(rev["utt_id"].to_numpy()[only["ca"].rows_2n[7]])
    assert ids_full == ids_only


def test_speaker_plan_trials_come_from_the_test_split_and_follow_the_rules():
    man = _manifest({"ca": 20, "es": 20}, utts=6)
    plans = plan_conditions(man, "speaker", n=24, seeds=2)
    assert plans.skipped.height == 0
    spk = man["speaker"].to_numpy()
    gender = man["gender"].to_numpy()
    for p in plans:
        trials = p.trials
        assert trials is not None and set(trials["label"].unique().to_list()) == {0, 1}
        e, t = trials["enroll_row"].to_numpy(), trials["test_row"].to_numpy()
        labels = trials["label"].to_numpy()
        assert np.array_equal(labels == 1, spk[e] == spk[t])
        assert (gender[e] == gender[t]).all()  # same-gender trials
        assert (labels == 1).sum() == (labels == 0).sum()  # non-targets 1:1
        assert not set(spk[p.train_rows]) & set(spk[np.concatenate([e, t])])
        assert len(p.train_rows) == (48 if p.condition in ("self", "pair") else 24)
        assert len(set(spk[p.train_rows[:24]])) >= 1  # min-speaker rule: ceil(0.0125 * 24) = 1


def test_user_trial_list_is_split_by_the_enrolment_language():
    man = _manifest({"ca": 12, "es": 12}, utts=4, with_split=True)
    trials = pl.DataFrame(
        {
            "enroll": ["ca_0_0", "ca_0_0", "es_1_0", "es_1_0"],
            "test": ["ca_0_1", "ca_2_1", "es_1_2", "es_3_1"],
            "label": [1, 0, 1, 0],
        }
    )
    plans = plan_conditions(man, "speaker", n=8, seeds=1, trials=trials)
    ca = next(p for p in plans if p.target == "ca")
    assert ca.trials["enroll"].to_list() == ["ca_0_0", "ca_0_0"]
    assert ca.trials["test_row"].to_list() == [1, 2 * 4 + 1]
    with pytest.raises(ValueError, match="not in the manifest"):
        plan_conditions(
            man, "speaker", n=8, seeds=1, trials=trials.with_columns(pl.lit("nope").alias("test"))
        )


def test_cells_restrict_the_plan():
    man = _manifest({"ca": 16, "es": 16, "de": 16})
    plans = plan_conditions(man, "gender", n=4, seeds=1, cells=[("ca", "es")], zero_shot=False)
    got = sorted((p.condition, p.target, p.donor) for p in plans)
    assert got == [("pair", "ca", "es"), ("self", "ca", "ca"), ("single", "ca", "ca")]


def test_missing_task_column_is_a_clear_error():
    man = _manifest({"ca": 8}).drop("gender")
    with pytest.raises(ValueError, match="gender"):
        plan_conditions(man, "gender", n=2, seeds=1)

"""cltm.tasks: the one task registry (kinds, labels, classes, metrics, refusals)."""

import polars as pl
import pytest

from cltm.tasks import TaskError, get_task, is_verification, normalize_genders


def _manifest(**cols):
    n = len(next(iter(cols.values())))
    return pl.DataFrame({"utt_id": [f"u{i}" for i in range(n)], "language": ["de"] * n, **cols})


def test_builtin_tasks_and_metrics():
    gender, speaker = get_task("gender"), get_task("speaker")
    assert gender.kind == "classification" and gender.classes == ("female", "male")
    assert gender.metrics == ("f1", "accuracy", "uar") and gender.default_metric == "f1"
    assert speaker.is_verification and speaker.default_metric == "auc" and speaker.sampling == "speaker"
    assert set(speaker.metrics) == {"auc", "eer", "min_dcf_01", "min_dcf_05"}
    assert is_verification("speaker") and not is_verification("emotion")


def test_gender_vocabularies_of_old_and_new_releases_and_missing_labels():
    raw = pl.Series("gender", ["male_masculine", " Female ", "female_feminine", "M", "", None, "other"])
    assert normalize_genders(raw).to_list() == ["male", "female", "female", "male", None, None, "other"]
    man = _manifest(gender=raw.to_list())
    assert get_task("gender", man).labels(man).to_list()[4:6] == [None, None]


def test_any_label_column_is_a_task_and_empty_strings_are_not_a_class():
    man = _manifest(emotion=["happy", "sad", "", None, " sad "])
    task = get_task("emotion", man)
    assert task.kind == "classification" and task.label == "emotion"
    assert task.class_list(man) == ["happy", "sad"]


@pytest.mark.parametrize(
    ("column", "values", "message"),
    [
        ("utt_id", None, "identifies utterances"),
        ("duration", [1.0, 2.5], "cannot be a task"),
        ("score", [1.0, float("nan")], "floating-point"),
        ("emotion", ["", None], "no labels"),
        ("age", None, "does not have"),
    ],
)
def test_columns_that_are_not_labels_are_refused(column, values, message):
    cols = {"gender": ["f", "m"]}
    if values is not None:
        cols[column] = values
    man = _manifest(**cols)
    with pytest.raises(TaskError, match=message):
        get_task(column, man)

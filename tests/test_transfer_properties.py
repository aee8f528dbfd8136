"""Matrix properties against explicit loops over a hand-made matrix."""

import math

import numpy as np
import polars as pl
import pytest

from cltm.transfer.families import family_of, load_families
from cltm.transfer.properties import matrix_properties

LANGS = ["ca", "de", "es", "fi"]
C = np.array(
    [
        [1.0, 0.5, 1.2, -0.3],
        [0.2, 1.0, -0.1, 0.4],
        [0.9, -0.2, 1.0, 0.0],
        [np.nan, 0.6, 1.5, 1.0],
    ]
)


def _matrices(c: np.ndarray = C, unstable_rows: tuple[str, ...] = ()) -> pl.DataFrame:
    rows = []
    for i, t in enumerate(LANGS):
        for j, d in enumerate(LANGS):
            if np.isnan(c[i, j]):
                continue
            rows.append(
                {
                    "task": "gender",
                    "model": "m",
                    "layer": 1,
                    "probe": "logreg",
                    "metric": "f1",
                    "target": t,
                    "donor": d,
                    "cltm": float(c[i, j]),
                    "unstable": t in unstable_rows,
                    "perf_single": 0.5 + 0.1 * i if t == d else None,
                }
            )
    return pl.DataFrame(rows)


def _offdiag(c):
    return [c[i, j] for i in range(len(c)) for j in range(len(c)) if i != j and not math.isnan(c[i, j])]


def test_properties_match_loops():
    props, scores = matrix_properties(
        _matrices(), families={"ca": "Romance", "es": "Romance", "de": "Germanic", "fi": "Uralic"}
    )
    p = props.to_dicts()[0]
    off = _offdiag(C)
    assert p["n_cells"] == len(off) == 11
    assert p["share_positive"] == pytest.approx(sum(v > 0 for v in off) / len(off))
    assert p["share_negative"] == pytest.approx(sum(v < 0 for v in off) / len(off))
    assert p["share_above_one"] == pytest.approx(sum(v > 1 for v in off) / len(off))
    assert p["mean_offdiag"] == pytest.approx(sum(off) / len(off))
    # reciprocity over unordered pairs with both directions present
    pairs = [
        (i, j) for i in range(4) for j in range(i + 1, 4) if not (math.isnan(C[i, j]) or math.isnan(C[j, i]))
    ]
    assert p["reciprocity"] == pytest.approx(sum(C[i, j] > 0 and C[j, i] > 0 for i, j in pairs) / len(pairs))
    # asymmetry over entries whose transpose is present
    num = den = 0.0
    for i in range(4):
        for j in range(4):
            if not (math.isnan(C[i, j]) or math.isnan(C[j, i])):
                num += (C[i, j] - C[j, i]) ** 2
                den += C[i, j] ** 2
    assert p["asymmetry"] == pytest.approx(math.sqrt(num) / math.sqrt(den))
    dev = sum((C[i, j] - 1) ** 2 for i in range(4) for j in range(4) if not math.isnan(C[i, j]))
    assert p["deviation_from_ones"] == pytest.approx(math.sqrt(dev) / 4)
    within = [C[0, 2], C[2, 0]]
    across = [v for (i, j), v in np.ndenumerate(C) if i != j and not math.isnan(v) and {i, j} != {0, 2}]
    assert p["mean_within_family"] == pytest.approx(np.mean(within))
    assert p["mean_across_family"] == pytest.approx(np.mean(across))
    assert p["mean_perf_single"] == pytest.approx(np.mean([0.5, 0.6, 0.7, 0.8]))
    recv = {
        t: sum(max(C[i, j], 0) for j in range(4) if j != i and not math.isnan(C[i, j]))
        for i, t in enumerate(LANGS)
    }
    donor = {
        d: sum(max(C[i, j], 0) for i in range(4) if i != j and not math.isnan(C[i, j]))
        for j, d in enumerate(LANGS)
    }
    got = {r["language"]: r for r in scores.to_dicts()}
    for lang in LANGS:
        assert got[lang]["receiver_score"] == pytest.approx(recv[lang])
        assert got[lang]["donor_score"] == pytest.approx(donor[lang])
    assert p["top_receiver"] == max(recv, key=recv.get)
    assert p["top_donor"] == max(donor, key=donor.get)
    assert got["ca"]["family"] == "Romance"


def test_all_ones_matrix_is_language_agnostic():
    ones = np.ones((4, 4))
    p = matrix_properties(_matrices(ones))[0].to_dicts()[0]
    assert p["deviation_from_ones"] == 0.0
    assert p["asymmetry"] == 0.0
    assert p["reciprocity"] == 1.0 and p["share_positive"] == 1.0 and p["share_above_one"] == 0.0
    assert p["mean_within_family"] is None  # no family map given


def test_exclude_unstable_drops_rows_but_counts_them():
    m = _matrices(unstable_rows=("de",))
    kept = matrix_properties(m, exclude_unstable=True)[0].to_dicts()[0]
    assert kept["n_unstable"] == 3
    rows_without_de = C.copy()
    rows_without_de[1, :] = np.nan
    off = _offdiag(rows_without_de)
    assert kept["share_positive"] == pytest.approx(sum(v > 0 for v in off) / len(off))


def test_shipped_families_cover_common_voice_locales_and_hyphenated_codes(tmp_path):
    fam = load_families()
    assert len(fam) >= 100
    assert family_of("zh-HK", fam) == family_of("zh-CN", fam) == "Sino-Tibetan"
    assert family_of("sv-SE", fam) == "Indo-European (Germanic)"
    assert family_of("ga-IE", fam) == "Indo-European (Celtic)"
    assert family_of("es-AR", fam) == family_of("ca", fam) == "Indo-European (Romance)"
    assert family_of("tr", fam) == "Turkic" and family_of("hu", fam) == "Uralic"
    # the published legend where it differs from a plain subfamily split
    assert family_of("et", fam) == family_of("fi", fam) == "Uralic (Finnic)"
    assert family_of("hy-AM", fam) == "Indo-European"
    assert family_of("xx-unknown", fam) is None
    tsv = tmp_path / "fam.tsv"
    tsv.write_text("language\tfamily\nca\tCatalan-only\nnew\tNew family\n")
    over = load_families(tsv)
    assert over["ca"] == "Catalan-only" and over["new"] == "New family" and over["de"] == fam["de"]
    js = tmp_path / "fam.json"
    js.write_text('{"ca": "X"}')
    assert load_families(js, extend_default=False) == {"ca": "X"}
    bad = tmp_path / "bad.tsv"
    bad.write_text("justone\n")
    with pytest.raises(ValueError, match="bad.tsv:1"):
        load_families(bad)

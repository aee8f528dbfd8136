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


# ----------------------------------------------------------------------------------------------------
# Properties at parity with the reference implementation, against values computed by hand
# ----------------------------------------------------------------------------------------------------

SYM = np.array([[1.0, 0.5, 0.0], [0.5, 1.0, 0.0], [0.0, 0.0, 1.0]])


def _props(c, langs, families=None, unstable_rows=()):
    rows = [
        {
            "task": "gender", "model": "m", "layer": 1, "probe": "logreg", "metric": "f1", "target": t,
            "donor": d, "cltm": float(c[i, j]), "unstable": t in unstable_rows,
        }
        for i, t in enumerate(langs)
        for j, d in enumerate(langs)
        if not np.isnan(c[i, j])
    ]  # fmt: skip
    props, scores = matrix_properties(pl.DataFrame(rows), families=families)
    return props.to_dicts()[0], {r["language"]: r for r in scores.to_dicts()}


def test_reference_properties_on_a_symmetric_matrix_by_hand():
    p, scores = _props(SYM, ["a", "b", "c"], families={"a": "F", "b": "F", "c": "G"})
    # eigenvalues of [[1, .5], [.5, 1]] are 1.5 and 0.5, and 1 for c: radius 1.5; symmetric PD: s = eig
    assert p["spectral_radius"] == pytest.approx(1.5)
    assert p["condition_number"] == pytest.approx(1.5 / 0.5)
    # cos(a, b) = (.5 + .5) / (sqrt(1.25) sqrt(1.25)) = 0.8; a and b are orthogonal to c
    assert p["mean_target_cosine"] == pytest.approx((0.8 + 0.8 + 0 + 0 + 0 + 0) / 6)
    # receiver scores (.5, .5, 0): entropy ln 2; Gini of (0, .5, .5) = 2 (0*1 + .5*2 + .5*3) / (3 * 1) - 4/3
    assert p["receiver_entropy"] == pytest.approx(math.log(2))
    assert p["receiver_gini"] == pytest.approx(1 / 3) and p["donor_gini"] == pytest.approx(1 / 3)
    assert p["within_family_positive_share"] == pytest.approx(1.0)  # all positive mass is a<->b
    assert _props(SYM, ["a", "b", "c"], families={"a": "F", "b": "G", "c": "F"})[0][
        "within_family_positive_share"
    ] == pytest.approx(0.0)
    assert p["n_complete_languages"] == 3
    # per language: a's row holds one positive cell (b): entropy 0, Gini over (.5, 0) = 1/2
    assert scores["a"]["receiver_entropy"] == pytest.approx(0.0)
    assert scores["a"]["receiver_gini"] == pytest.approx(0.5)
    assert scores["c"]["donor_entropy"] is None  # nothing positive to spread


def test_pca_by_hand():
    # rows (1, 2) and (3, 4): centred they are -(1, 1) and (1, 1), one direction: all the variance in PC 1
    c = np.array([[1.0, 2.0], [3.0, 4.0]])
    p, _ = _props(c, ["a", "b"])
    assert p["pca_explained_1"] == pytest.approx(1.0) and p["pca_explained_2"] == pytest.approx(0.0)
    assert p["pca_explained_3"] is None and p["pca_components_80"] == 1
    assert p["spectral_radius"] == pytest.approx((5 + math.sqrt(33)) / 2)
    # singular values of [[1, 2], [3, 4]]: sqrt(15 +- sqrt(221)) (eigenvalues of A^T A)
    assert p["condition_number"] == pytest.approx(math.sqrt((15 + math.sqrt(221)) / (15 - math.sqrt(221))))
    # SYM: explained variance against the covariance eigenvalues computed by loops
    x = SYM - SYM.mean(axis=0)
    cov = [[sum(x[r, i] * x[r, j] for r in range(3)) for j in range(3)] for i in range(3)]
    eig = sorted(np.linalg.eigvalsh(np.array(cov)), reverse=True)
    p, _ = _props(SYM, ["a", "b", "c"])
    assert p["pca_explained_1"] == pytest.approx(eig[0] / sum(eig))
    assert p["pca_explained_2"] == pytest.approx(eig[1] / sum(eig))
    assert p["pca_components_80"] == (1 if eig[0] / sum(eig) >= 0.8 else 2)


def test_stable_summary_and_missing_cells():
    p, _ = _props(C, LANGS, unstable_rows=("de",))
    stable = [C[i, j] for i in range(4) for j in range(4) if i != j and i != 1 and not math.isnan(C[i, j])]
    assert p["n_stable"] == len(stable) == 8
    assert p["mean_offdiag_stable"] == pytest.approx(np.mean(stable))
    assert p["median_offdiag_stable"] == pytest.approx(np.median(stable))
    # fi's row misses one cell: the spectral properties use the complete core without fi
    assert p["n_complete_languages"] == 3
    core = C[:3, :3]
    assert p["spectral_radius"] == pytest.approx(max(abs(np.linalg.eigvals(core))))
    s = np.linalg.svd(core, compute_uv=False)
    assert p["condition_number"] == pytest.approx(s[0] / s[-1])
    # the row cosine skips the missing cell: cos(ca, fi) over de, es, fi only
    a, b = C[0, 1:], C[3, 1:]
    sims = {(0, 3): a @ b / (np.linalg.norm(a) * np.linalg.norm(b))}
    for i in range(3):
        for k in range(3):
            if i < k:
                sims[(i, k)] = C[i] @ C[k] / (np.linalg.norm(C[i]) * np.linalg.norm(C[k]))
    for i, k in [(1, 3), (2, 3)]:
        both = [j for j in range(4) if not math.isnan(C[k, j])]
        sims[(i, k)] = C[i, both] @ C[k, both] / (np.linalg.norm(C[i, both]) * np.linalg.norm(C[k, both]))
    assert p["mean_target_cosine"] == pytest.approx(np.mean(list(sims.values())))


def test_row_cosine_similarity_equals_the_pairwise_loop():
    from cltm.transfer.properties import row_cosine_similarity

    rng = np.random.default_rng(5)
    c = rng.normal(size=(7, 7))
    c[rng.random(c.shape) < 0.3] = np.nan
    c[2] = 0.0  # a zero row: NaN against every row
    c[4, :] = np.nan
    c[4, 0] = 1.0  # one column only
    expected = np.full(c.shape, np.nan)
    for i in range(len(c)):
        for k in range(len(c)):
            both = np.isfinite(c[i]) & np.isfinite(c[k])
            a, b = c[i, both], c[k, both]
            norm = np.linalg.norm(a) * np.linalg.norm(b)
            if both.any() and norm > 0:
                expected[i, k] = np.clip(a @ b / norm, -1, 1)
    np.testing.assert_allclose(row_cosine_similarity(c), expected, rtol=1e-12, atol=1e-15)

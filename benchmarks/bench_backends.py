"""Speaker-verification back-ends on one corpus, mixed corpora and few speakers: EER of each back-end.

    PYTHONPATH=src python benchmarks/bench_backends.py [--real ../shared/data/real_speech] [--seeds 5]
    PYTHONPATH=src python benchmarks/bench_backends.py --enrolment   # n-aware vs mean-as-one-vector enrolment

Sets (each EER is the mean over ``--seeds`` seeded speaker-disjoint splits and, for mixed training sets, over
the target corpora; trials: every same-gender pair of the target's test utterances):

- real features (``--real``: ``features.npy`` [2 layers, rows, 80] + ``manifest.parquet``, English RAVDESS
  and Urdu; see ``shared/data/README.md``), per layer: ``en`` / ``ur`` (one corpus: train and test on it),
  ``en+ur`` (trained on both corpora, tested on each: the CLTM pair condition) and ``few`` (13 training
  speakers drawn from both corpora: fewer speakers than the 80 dimensions; tested on each corpus);
- synthetic sets built here: ``syn-one`` (one corpus), ``syn-two`` / ``syn-three`` (corpora with their own
  offset and channel: a corpus-level mean shift, their own within-speaker covariance and channel subspace),
  ``syn-few`` (12 speakers, 60 dimensions, two corpora).

Prints one row per set (EER %), then each back-end's worst gap to the best back-end of a set (points) and
whether it is ever worse than untrained cosine. ``plda`` is the default ``PLDA()`` (raw vectors, W shrunk by
``reg=0.02``); ``plda-r.001`` / ``plda-r.1`` shrink W by 0.001 / 0.1; ``plda-ln`` length-normalises the raw
vectors; ``-as`` is AS-norm (top 300 of a 2,000-vector training cohort) around a back-end. ``plda-v0`` is the
pre-issue-16 PLDA (length-normalised raw vectors, B and W both shrunk, 10 EM steps from the scatter matrices),
kept here for the record.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np

from cltm.probes import PLDA, ASNorm, CosineBackend, LDACosine, metrics
from cltm.probes.backends import _shrink
from cltm.probes.stats import SpeakerStats


class PLDAv0(PLDA):
    """The PLDA of cltm before issue 16 (length-normalised input, reg on B and W, 10 plain EM steps)."""

    def __init__(self):
        super().__init__(length_norm=True)

    def _fit_em(self, stats: SpeakerStats) -> PLDA:
        from cltm.probes.backends import _diagonalise, _llr_coefficients, plda_em_step

        self.mean_ = stats.mean
        self.projection_ = np.eye(stats.dim)
        st = stats.transform(self.projection_, shift=self.mean_)
        within = _shrink(st.within_scatter() / st.n, 1e-3)
        between = _shrink(st.between_scatter() / st.n, 1e-3)
        for _ in range(10):
            between, within = plda_em_step(st, between, within)
            between, within = _shrink(between, 1e-3), _shrink(within, 1e-3)
        psi, V = _diagonalise(between, within)
        self.between_, self.within_, self.psi_ = between, within, psi
        self.transform_ = V
        self.cross_, self.self_, self.const_ = _llr_coefficients(psi, 1)
        return self


BACKENDS = {
    "cosine": lambda: CosineBackend(center=False),  # untrained
    "cos-c": lambda: CosineBackend(),
    "lda-cos": lambda: LDACosine(),
    "plda-v0": PLDAv0,
    "plda-ln": lambda: PLDA(length_norm=True),
    "plda": lambda: PLDA(),
    "plda-r.001": lambda: PLDA(reg=1e-3),
    "plda-r.1": lambda: PLDA(reg=0.1),
    "plda-as": lambda: ASNorm(PLDA()),
    "cos-as": lambda: ASNorm(CosineBackend()),
}


def pair_eer(backend, X, speakers, genders) -> float:
    """EER over every same-gender pair of rows."""
    i, j = np.triu_indices(len(X), 1)
    keep = genders[i] == genders[j]
    i, j = i[keep], j[keep]
    return metrics.eer((speakers[i] == speakers[j]).astype(int), backend.score_trials(X, i, j))


def split_speakers(speakers, corpus, gender, rng, test_fraction=1 / 3):
    """Speaker-disjoint train/test: a third of each (corpus, gender)'s speakers tested."""
    test = set()
    for c in np.unique(corpus):
        for g in np.unique(gender):
            ids = np.unique(speakers[(corpus == c) & (gender == g)])
            rng.shuffle(ids)
            test.update(ids[: max(1, round(len(ids) * test_fraction))])
    return ~np.isin(speakers, list(test))


def evaluate_set(X, speakers, corpus, gender, train_corpora, targets, seeds, n_train_speakers=None):
    """{backend: mean EER} over seeds and target corpora."""
    out: dict[str, list[float]] = {name: [] for name in BACKENDS}
    for seed in range(seeds):
        rng = np.random.default_rng(seed)
        train = split_speakers(speakers, corpus, gender, rng) & np.isin(corpus, train_corpora)
        if n_train_speakers is not None:
            chosen = rng.choice(np.unique(speakers[train]), n_train_speakers, replace=False)
            train &= np.isin(speakers, chosen)
        for name, make in BACKENDS.items():
            model = make().fit(X[train], speakers[train])
            for target in targets:
                test = ~split_speakers(speakers, corpus, gender, np.random.default_rng(seed)) & (
                    corpus == target
                )
                out[name].append(pair_eer(model, X[test], speakers[test], gender[test]))
    return {name: float(np.mean(v)) for name, v in out.items()}


def synthetic(
    seed,
    n_corpora,
    n_speakers=30,
    per_speaker=12,
    dim=60,
    rank=20,
    offset=3.0,
    channel=2.0,
    speaker_scale=0.8,
):
    """Speakers in a rank-``rank`` subspace, within-speaker noise; each corpus adds its own mean offset (a
    common one too, as real features have), scales the noise differently and adds its own channel subspace.
    Returns X, speakers, corpus, gender (two halves of each corpus' speakers)."""
    rng = np.random.default_rng(seed)
    speaker_basis = rng.normal(size=(rank, dim)) / np.sqrt(dim)
    base_noise = rng.normal(size=(dim, dim)) / np.sqrt(dim)
    common = rng.normal(size=dim) * 3 * offset
    rows = []
    for c in range(n_corpora):
        shift = common + rng.normal(size=dim) * offset * (c > 0)
        chan = rng.normal(size=(4, dim)) * channel / np.sqrt(dim)
        scale = np.exp(rng.normal(size=dim) * 0.5)
        y = rng.normal(size=(n_speakers, rank)) @ speaker_basis * speaker_scale
        spk = np.repeat(np.arange(n_speakers), per_speaker)
        noise = (rng.normal(size=(len(spk), dim)) @ base_noise) * scale + rng.normal(
            size=(len(spk), 4)
        ) @ chan
        Xc = shift + y[spk] + noise
        rows.append((Xc, np.array([f"c{c}s{s:03d}" for s in spk]), np.full(len(spk), f"c{c}"), spk % 2))
    X, speakers, corpus, gender = (np.concatenate(parts) for parts in zip(*rows, strict=True))
    return X, speakers, corpus, gender.astype(str)


def enrolment_table(feats, spk, lang, gen, seeds: int) -> None:
    """Multi-utterance enrolment with the default PLDA: n enrolment utterances per test speaker (n = 1, 3, 5),
    their mean scored as one vector vs n-aware (``n_enroll``), against the speaker's other utterances and
    same-gender others; both corpora, per layer, mean EER over seeds and corpora."""
    from cltm.probes import enrollment_vectors

    print("| layer | n | mean scored as one vector | n-aware |")
    print("|---|---:|---:|---:|")
    for layer in range(feats.shape[0]):
        X = feats[layer].astype(np.float64)
        res: dict[int, list[tuple[float, float]]] = {1: [], 3: [], 5: []}
        for seed in range(seeds):
            rng = np.random.default_rng(seed)
            test = ~split_speakers(spk, lang, gen, rng)
            plda = PLDA().fit(X[~test], spk[~test])
            for n in res:
                for corpus in np.unique(lang):
                    rows = np.flatnonzero(test & (lang == corpus))
                    enrol, groups, probes = [], [], []
                    for s in np.unique(spk[rows]):
                        r = rng.permutation(rows[spk[rows] == s])
                        if len(r) > n:
                            enrol += list(r[:n])
                            groups += [s] * n
                            probes += list(r[n:])
                    ids, V, counts = enrollment_vectors(X[enrol], np.array(groups), plda, return_counts=True)
                    probes = np.array(probes)
                    e, t = (a.ravel() for a in np.meshgrid(np.arange(len(ids)), probes, indexing="ij"))
                    group_gender = {s: gen[spk == s][0] for s in ids}
                    keep = np.array([group_gender[ids[a]] == gen[b] for a, b in zip(e, t, strict=True)])
                    e, t = e[keep], t[keep]
                    y = (ids[e] == spk[t]).astype(int)
                    res[n].append(
                        (
                            metrics.eer(y, plda.score(V[e], X[t])),
                            metrics.eer(y, plda.score(V[e], X[t], n_enroll=counts[e])),
                        )
                    )
        for n, pairs in res.items():
            one, aware = np.mean(pairs, axis=0)
            print(f"| L{layer} | {n} | {100 * one:.1f} | {100 * aware:.1f} |")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument(
        "--real", type=Path, default=Path("../shared/data/real_speech"), help="real-feature folder"
    )
    ap.add_argument("--seeds", type=int, default=5, help="speaker splits per set")
    ap.add_argument("--no-synthetic", action="store_true", help="real sets only")
    ap.add_argument(
        "--enrolment", action="store_true", help="only the multi-utterance enrolment table (real features)"
    )
    args = ap.parse_args()
    if args.enrolment:
        import polars as pl

        man = pl.read_parquet(args.real / "manifest.parquet")
        spk, cor, gen = (man[c].to_numpy().astype(str) for c in ("speaker", "language", "gender"))
        enrolment_table(np.load(args.real / "features.npy"), spk, cor, gen, args.seeds)
        return
    sets: list[tuple[str, dict]] = []
    t0 = time.perf_counter()
    if (args.real / "features.npy").exists():
        import polars as pl

        feats = np.load(args.real / "features.npy")
        man = pl.read_parquet(args.real / "manifest.parquet")
        spk, cor, gen = (man[c].to_numpy().astype(str) for c in ("speaker", "language", "gender"))
        for layer in range(feats.shape[0]):
            X = feats[layer].astype(np.float64)
            for name, train, targets, few in (
                ("en", ["en"], ["en"], None),
                ("ur", ["ur"], ["ur"], None),
                ("en+ur", ["en", "ur"], ["en", "ur"], None),
                ("few", ["en", "ur"], ["en", "ur"], 13),
            ):
                sets.append(
                    (f"L{layer} {name}", evaluate_set(X, spk, cor, gen, train, targets, args.seeds, few))
                )
    else:
        print(f"(no real features at {args.real}: synthetic sets only)")
    if not args.no_synthetic:
        for name, n_corpora, kw in (
            ("syn-one", 1, {}),
            ("syn-two", 2, {}),
            ("syn-three", 3, {}),
            ("syn-few", 2, {"n_speakers": 18, "per_speaker": 40}),
        ):
            X, spk, cor, gen = synthetic(100, n_corpora, **kw)
            corpora = list(np.unique(cor))
            few = 12 if name == "syn-few" else None
            sets.append((name, evaluate_set(X, spk, cor, gen, corpora, corpora, args.seeds, few)))
    names = list(BACKENDS)
    print(
        f"EER % (mean over {args.seeds} speaker splits and target corpora); {time.perf_counter() - t0:.0f} s"
    )
    print(f"| set | {' | '.join(names)} |")
    print("|---|" + "---:|" * len(names))
    for set_name, eers in sets:
        best = min(eers.values())
        cells = [f"**{100 * eers[n]:.1f}**" if eers[n] == best else f"{100 * eers[n]:.1f}" for n in names]
        print(f"| {set_name} | {' | '.join(cells)} |")
    gaps = [max(100 * (e[n] - min(e.values())) for _, e in sets) for n in names]
    print(f"| worst gap to best (points) | {' | '.join(f'{g:.1f}' for g in gaps)} |")
    below = [sum(e[n] > e["cosine"] for _, e in sets) for n in names]
    print(f"| sets worse than untrained cosine | {' | '.join(str(b) for b in below)} |")


if __name__ == "__main__":
    main()

"""Classification probes, speaker-verification back-ends and metrics.

- :mod:`cltm.probes.metrics`: eer, min_dcf, roc_auc, det_curve, accuracy, macro_f1, uar (labels 1 = target).
- classifiers: :class:`LogisticProbe`, :class:`LDAProbe`, :class:`MLPProbe`, :class:`WeightedLayerSumProbe`.
- verification back-ends: :class:`CosineBackend`, :class:`LDACosine`, :class:`PLDA`, :class:`SNorm`,
  :class:`ASNorm` (``fit(X, speakers)``, ``score(enroll, test)``, ``score_trials``).
- fast paths for sweeps: :class:`SpeakerStats` (composable sufficient statistics, ``Backend.from_stats``) and
  :func:`fit_logistic_batched` / :func:`fit_logistic_subsets` / :func:`fit_logistic_shared` (many logistic
  regressions at once).
"""

from importlib import import_module

# Attributes load their module on first use (PEP 562): ``import cltm.probes.metrics`` or a sweep worker that
# only needs NumPy paths does not pay for torch and scikit-learn imports.
_LAZY = {
    "metrics": "cltm.probes.metrics",
    "PLDA": "cltm.probes.backends",
    "ASNorm": "cltm.probes.backends",
    "CosineBackend": "cltm.probes.backends",
    "LDACosine": "cltm.probes.backends",
    "SNorm": "cltm.probes.backends",
    "enrollment_vectors": "cltm.probes.backends",
    "score_trial_list": "cltm.probes.backends",
    "BatchedLogisticFit": "cltm.probes.batched_logistic",
    "fit_logistic_batched": "cltm.probes.batched_logistic",
    "fit_logistic_subsets": "cltm.probes.batched_logistic",
    "fit_logistic_shared": "cltm.probes.shared_logistic",
    "LDAProbe": "cltm.probes.classifiers",
    "LogisticProbe": "cltm.probes.classifiers",
    "MLPProbe": "cltm.probes.classifiers",
    "WeightedLayerSumProbe": "cltm.probes.classifiers",
    "SpeakerStats": "cltm.probes.stats",
    "length_normalise": "cltm.probes.stats",
}


def __getattr__(name: str):
    if name not in _LAZY:
        raise AttributeError(f"module 'cltm.probes' has no attribute {name!r}")
    module = import_module(_LAZY[name])
    value = module if name == "metrics" else getattr(module, name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_LAZY))


__all__ = [
    "ASNorm",
    "BatchedLogisticFit",
    "CosineBackend",
    "LDACosine",
    "LDAProbe",
    "LogisticProbe",
    "MLPProbe",
    "PLDA",
    "SNorm",
    "SpeakerStats",
    "WeightedLayerSumProbe",
    "enrollment_vectors",
    "fit_logistic_batched",
    "fit_logistic_shared",
    "fit_logistic_subsets",
    "length_normalise",
    "metrics",
    "score_trial_list",
]

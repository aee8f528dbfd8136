"""Classification probes, speaker-verification back-ends and metrics.

- :mod:`cltm.probes.metrics`: eer, min_dcf, roc_auc, det_curve, accuracy, macro_f1, uar (labels 1 = target).
- classifiers: :class:`LogisticProbe`, :class:`LDAProbe`, :class:`MLPProbe`, :class:`WeightedLayerSumProbe`.
- verification back-ends: :class:`CosineBackend`, :class:`LDACosine`, :class:`PLDA`, :class:`SNorm`,
  :class:`ASNorm` (``fit(X, speakers)``, ``score(enroll, test)``, ``score_trials``).
- fast paths for sweeps: :class:`SpeakerStats` (composable sufficient statistics, ``Backend.from_stats``) and
  :func:`fit_logistic_batched` / :func:`fit_logistic_subsets` (many logistic regressions at once).
"""

from cltm.probes import metrics
from cltm.probes.backends import (
    PLDA,
    ASNorm,
    CosineBackend,
    LDACosine,
    SNorm,
    enrollment_vectors,
    score_trial_list,
)
from cltm.probes.batched_logistic import BatchedLogisticFit, fit_logistic_batched, fit_logistic_subsets
from cltm.probes.classifiers import LDAProbe, LogisticProbe, MLPProbe, WeightedLayerSumProbe
from cltm.probes.stats import SpeakerStats, length_normalise

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
    "fit_logistic_subsets",
    "length_normalise",
    "metrics",
    "score_trial_list",
]

"""The CLTM engine: conditions, sweep runner, statistics and matrix properties.

* ``plan_conditions`` / ``plan_languages``: the single source of training subsets and test sets;
* ``run_matrix(features, manifest, task, *, plan=PlanSettings, probe=name|ProbeSettings|estimator,
  execution=ExecutionSettings)``: the one engine (matrix, per-layer probe, cross-lingual, K-fold) from any
  ``FeatureSource`` -> ``MatrixResult`` (runs, matrices, properties, language_scores, skipped, confusion,
  predictions);
* the one probe registry: ``PROBES``, ``get_probe``, ``probe_names``, ``canonical_probe_name``;
* ``matrix_from_runs`` (statistics) and ``matrix_properties``; ``read_runs`` / ``write_results`` and the
  column contracts (``RUNS_COLUMNS``, ``MATRICES_COLUMNS``, ``PROPERTIES_COLUMNS``); ``load_families`` for the
  language -> family map.
"""

from cltm.transfer.conditions import (
    ConditionPlan,
    ConditionPlans,
    LanguagePlan,
    plan_conditions,
    plan_languages,
    seed_list,
)
from cltm.transfer.embeddings import ArrayFeatures, FeatureSource, align_manifest, as_feature_source
from cltm.transfer.evaluators import PROBES, canonical_probe_name, get_probe, probe_names
from cltm.transfer.families import default_families, family_of, load_families
from cltm.transfer.properties import matrix_properties
from cltm.transfer.runner import (
    ExecutionSettings,
    PlanSettings,
    ProbeSettings,
    per_class_recall,
    result_from_runs,
    run_matrix,
)
from cltm.transfer.stats import (
    MetricError,
    delta_method_se,
    incomplete_targets,
    matrix_array,
    matrix_from_runs,
)
from cltm.transfer.tables import (
    AGGREGATE_COLUMNS,
    LANGUAGE_SCORES_COLUMNS,
    MATRICES_COLUMNS,
    METRIC_COLUMNS,
    PROPERTIES_COLUMNS,
    RESULT_TABLES,
    RUNS_COLUMNS,
    SKIPPED_COLUMNS,
    MatrixResult,
    ResultsError,
    RunsTableError,
    read_results,
    read_runs,
    validate_runs,
    write_reference_csv,
    write_results,
)

__all__ = [
    "PROBES",
    "ArrayFeatures",
    "ExecutionSettings",
    "FeatureSource",
    "PlanSettings",
    "ProbeSettings",
    "align_manifest",
    "as_feature_source",
    "canonical_probe_name",
    "get_probe",
    "per_class_recall",
    "probe_names",
    "AGGREGATE_COLUMNS",
    "LANGUAGE_SCORES_COLUMNS",
    "MATRICES_COLUMNS",
    "METRIC_COLUMNS",
    "PROPERTIES_COLUMNS",
    "RUNS_COLUMNS",
    "SKIPPED_COLUMNS",
    "ConditionPlan",
    "ConditionPlans",
    "LanguagePlan",
    "MatrixResult",
    "MetricError",
    "RESULT_TABLES",
    "ResultsError",
    "RunsTableError",
    "incomplete_targets",
    "validate_runs",
    "default_families",
    "delta_method_se",
    "family_of",
    "load_families",
    "matrix_array",
    "matrix_from_runs",
    "matrix_properties",
    "plan_conditions",
    "plan_languages",
    "read_results",
    "read_runs",
    "result_from_runs",
    "run_matrix",
    "seed_list",
    "write_reference_csv",
    "write_results",
]

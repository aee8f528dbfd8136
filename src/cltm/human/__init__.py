"""Listener judgements next to models: import and validation, panel statistics, comparison, report section.

See ``docs/human.md``. ``listeners`` holds the table contract and its validation, ``labels`` the label
normalisation, ``stats`` the two-way bootstrap, Cohen's kappa and Spearman's rank correlation, ``compare`` the
comparison, ``tables`` its column contracts and result object, ``report`` the humans-vs-models section.
"""

from cltm.human.compare import CompareSettings, best_layers, compare, summary_lines
from cltm.human.listeners import (
    LISTENER_COLUMNS,
    ListenerColumnMap,
    ListenerImport,
    ListenerTableError,
    import_listeners,
    read_listeners,
    validate_listeners,
    write_listeners,
)
from cltm.human.stats import BootstrapSettings, cohen_kappa, spearman, two_way_bootstrap
from cltm.human.tables import COMPARISON_FILES, HumanComparison, read_comparison, read_predictions

__all__ = [
    "COMPARISON_FILES",
    "LISTENER_COLUMNS",
    "BootstrapSettings",
    "CompareSettings",
    "HumanComparison",
    "ListenerColumnMap",
    "ListenerImport",
    "ListenerTableError",
    "best_layers",
    "cohen_kappa",
    "compare",
    "import_listeners",
    "read_comparison",
    "read_listeners",
    "read_predictions",
    "spearman",
    "summary_lines",
    "two_way_bootstrap",
    "validate_listeners",
    "write_listeners",
]

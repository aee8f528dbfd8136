"""Listener judgements next to models: import and validation, panel statistics, comparison, report section.

See ``docs/human.md``. ``listeners`` holds the table contract and its validation, ``stats`` the two-way
bootstrap, Cohen's kappa and Spearman's rank correlation, ``compare`` the comparison tables, ``report`` the
humans-vs-models report section.
"""

from cltm.human.compare import (
    COMPARISON_FILES,
    CompareSettings,
    HumanComparison,
    best_layers,
    compare,
    read_comparison,
    read_predictions,
    summary_lines,
)
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

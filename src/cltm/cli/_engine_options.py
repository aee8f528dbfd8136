"""Options that `cltm probe` and `cltm matrix` share: one definition each (same name, default and help).

Typer reads an option's declaration from the parameter's default, so one ``OptionInfo`` can serve several
commands.
"""

from __future__ import annotations

import typer

from cltm.layers import GRAMMAR

LAYERS = typer.Option(None, "--layers", help=f"Layers: {GRAMMAR}. Default: all.")
HIDDEN = typer.Option(
    None, "--hidden", help="mlp/wsum hidden sizes, e.g. 128,16 (default for mlp: dim/6, dim/48)."
)
PATIENCE = typer.Option(
    None, "--patience", min=1, help="mlp/wsum: epochs without a better dev loss before stopping."
)
MAX_EPOCHS = typer.Option(None, "--max-epochs", min=1, help="mlp/wsum: most epochs.")
NO_EARLY_STOPPING = typer.Option(
    False, "--no-early-stopping", help="mlp/wsum: train --max-epochs epochs without early stopping."
)
TEST_FRACTION = typer.Option(
    0.25,
    "--test-fraction",
    min=0.01,
    max=0.99,
    help="Share of each language's speakers held out for testing when the manifest has no split.",
)
FOLDS = typer.Option(
    None,
    "--folds",
    min=2,
    help="Speaker-independent K-fold instead of one train/test split: every speaker is tested once; Perf "
    "is the mean over folds x seeds, its SE over those runs. For small corpora.",
)
CLASSES = typer.Option(
    None,
    "--classes",
    help="Keep only these classes of a label task, e.g. angry,happy,neutral,sad (the emotions every "
    "language has); rows with other labels are left out.",
)
PREDICTIONS = typer.Option(
    False,
    "--predictions",
    help="Also write OUT/predictions.parquet (one row per test utterance and run).",
)

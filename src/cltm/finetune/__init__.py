"""Full fine-tuning (and PEFT) of selected CLTM cells, on the probe sweep's subsets and test sets.

Entry points (imported on first use, so ``import cltm.finetune`` stays light):

* :func:`run_finetune` — single/self/pair of every chosen cell and seed, resumable, multi-process aware;
* :func:`parse_cells`, :func:`cells_from_matrix` — which cells to run;
* :class:`TrainSettings` — the optimisation recipe (published defaults);
* :func:`apply_peft`, :data:`PEFT_MODES` — full, LoRA, bottleneck adapter, weighted gating;
* :class:`PooledEncoderClassifier` — encoder + valid-frame mean pooling + linear head;
* :func:`read_finetune_runs` — the runs table of an output directory (including rank part files).
"""

from __future__ import annotations

from typing import Any

_LAZY = {
    "run_finetune": "cltm.finetune.runner",
    "plan_finetune_runs": "cltm.finetune.runner",
    "parse_cells": "cltm.finetune.runner",
    "cells_from_matrix": "cltm.finetune.runner",
    "FinetuneResult": "cltm.finetune.runner",
    "FinetuneError": "cltm.finetune.runs",
    "read_finetune_runs": "cltm.finetune.runs",
    "TrainSettings": "cltm.finetune.train",
    "train_classifier": "cltm.finetune.train",
    "apply_peft": "cltm.finetune.peft_modes",
    "PEFT_MODES": "cltm.finetune.peft_modes",
    "PooledEncoderClassifier": "cltm.finetune.model",
}

__all__ = sorted(_LAZY)


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'cltm.finetune' has no attribute {name!r}")

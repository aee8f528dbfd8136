"""Full fine-tuning (and PEFT) of selected CLTM cells, on the probe sweep's subsets and test sets.

Entry points (imported on first use, so ``import cltm.finetune`` stays light):

* :func:`run_finetune` — single/self/pair of every chosen cell and seed, resumable, multi-process aware;
* :func:`parse_cells`, :func:`cells_from_matrix` — which cells to run;
* :class:`TrainSettings` — the optimisation recipe (published defaults);
* :func:`apply_peft`, :data:`PEFT_MODES` — full, LoRA, bottleneck adapter, gating, weighted gating;
* :func:`truncate_encoder` — cut the encoder after block K (``--layer K``);
* :func:`plan_finetune_runs`, :data:`FINETUNE_CONDITIONS` — single/self/pair, zero_shot, sequential;
* :class:`PooledEncoderClassifier` — encoder + valid-frame mean pooling + linear head;
* :func:`read_finetune_runs` — the runs table of an output directory (including rank part files).
"""

from __future__ import annotations

from typing import Any

#: HF names of the attention and feed-forward projections of wav2vec2/HuBERT/WavLM/data2vec-audio blocks:
#: LoRA's default targets (here, not in ``peft_modes``, so the CLI can show them without importing torch).
LORA_TARGET_MODULES: tuple[str, ...] = (
    "q_proj",
    "k_proj",
    "v_proj",
    "out_proj",
    "intermediate_dense",
    "output_dense",
)

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
    "truncate_encoder": "cltm.finetune.model",
    "FINETUNE_CONDITIONS": "cltm.finetune.runner",
    "best_layer": "cltm.finetune.runner",
    "read_finetune_predictions": "cltm.finetune.runs",
}

__all__ = sorted([*_LAZY, "LORA_TARGET_MODULES"])


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'cltm.finetune' has no attribute {name!r}")

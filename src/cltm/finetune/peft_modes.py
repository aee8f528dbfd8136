"""Which parameters train: full fine-tuning and four parameter-efficient modes for frozen-backbone studies.

A small registry maps a mode name to a function that edits a :class:`PooledEncoderClassifier` in place. After
:func:`apply_peft` exactly the mode's own parameters and the head have ``requires_grad=True``; everything else
in the encoder is frozen. LoRA, adapter and gating start as the unchanged network (LoRA's B matrices, the
adapters' up-projections and the gates' logits are initialised so the first forward pass equals the
pre-trained encoder's); ``weighted`` starts from the uniform average of the kept hidden states (SUPERB's
weighted sum). Each mode's options (LoRA rank, alpha and target modules, adapter bottleneck size) are keyword
arguments of its function; :class:`cltm.finetune.train.TrainSettings` carries them from the command line.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn

from cltm.finetune import LORA_TARGET_MODULES
from cltm.finetune.model import PooledEncoderClassifier, transformer_layers
from cltm.finetune.runs import FinetuneError

__all__ = [
    "LORA_TARGET_MODULES",
    "PEFT_MODES",
    "BottleneckAdapter",
    "FeedForwardWithAdapter",
    "LayerInputGates",
    "apply_peft",
    "trainable_parameter_names",
    "transformer_layers",
]


class BottleneckAdapter(nn.Module):
    """hidden -> size -> hidden with GELU (``size`` defaults to hidden/16); the up-projection starts at zero,
    so it adds nothing."""

    def __init__(self, hidden_size: int, size: int | None = None) -> None:
        super().__init__()
        size = max(1, hidden_size // 16) if size is None else size
        if size < 1:
            raise FinetuneError(f"the adapter bottleneck size must be >= 1, got {size}")
        self.down = nn.Linear(hidden_size, size)
        self.up = nn.Linear(size, hidden_size)
        nn.init.zeros_(self.up.weight)
        nn.init.zeros_(self.up.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.up(nn.functional.gelu(self.down(x)))


class FeedForwardWithAdapter(nn.Module):
    """A block's feed-forward module followed by a residual bottleneck adapter on its output."""

    def __init__(self, feed_forward: nn.Module, hidden_size: int, size: int | None = None) -> None:
        super().__init__()
        self.feed_forward = feed_forward
        self.adapter = BottleneckAdapter(hidden_size, size)

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        out = self.feed_forward(hidden_states)
        return out + self.adapter(out)


class LayerInputGates(nn.Module):
    """Per-layer, per-dimension gates on each transformer block's input: ``x * 2·sigmoid(g)``.

    ``g`` starts at 0, where ``2·sigmoid(0) = 1``: the gates pass the input through unchanged at init while
    still having a non-zero gradient (a plain ``sigmoid`` gate would need ``g → ∞`` to be a pass-through).
    """

    def __init__(self, n_layers: int, hidden_size: int) -> None:
        super().__init__()
        self.logits = nn.Parameter(torch.zeros(n_layers, hidden_size))

    def scale(self, layer_index: int) -> torch.Tensor:
        return 2.0 * torch.sigmoid(self.logits[layer_index])

    def attach(self, layers: nn.ModuleList) -> None:
        """Register forward pre-hooks that scale each block's ``hidden_states`` input."""
        for index, layer in enumerate(layers):
            layer.register_forward_pre_hook(self._hook(index), with_kwargs=True)

    def _hook(self, index: int) -> Callable:
        def scale_input(module: nn.Module, args: tuple, kwargs: dict):
            if args:
                return (args[0] * self.scale(index).to(args[0].dtype), *args[1:]), kwargs
            kwargs = dict(kwargs)
            kwargs["hidden_states"] = kwargs["hidden_states"] * self.scale(index).to(
                kwargs["hidden_states"].dtype
            )
            return args, kwargs

        return scale_input


def _freeze_encoder(model: PooledEncoderClassifier) -> None:
    for parameter in model.encoder.parameters():
        parameter.requires_grad_(False)


def _full(model: PooledEncoderClassifier) -> None:
    for parameter in model.encoder.parameters():
        parameter.requires_grad_(True)


def _blocks(model: PooledEncoderClassifier, mode: str) -> nn.ModuleList:
    layers = transformer_layers(model.encoder)
    if len(layers) == 0:
        raise FinetuneError(
            f"--peft {mode} needs at least one transformer block; the encoder was cut at layer 0"
        )
    return layers


def _lora(
    model: PooledEncoderClassifier,
    *,
    rank: int = 8,
    alpha: float = 16,
    dropout: float = 0.0,
    targets: tuple[str, ...] | list[str] = LORA_TARGET_MODULES,
) -> None:
    try:
        from peft import LoraConfig, inject_adapter_in_model
    except ImportError as err:
        raise ImportError("--peft lora needs the `peft` package: pip install 'cltm[finetune]'") from err

    if rank < 1:
        raise FinetuneError(f"the LoRA rank must be >= 1, got {rank}")
    blocks = _blocks(model, "lora")
    names = {
        name.rsplit(".", 1)[-1] for name, module in blocks.named_modules() if isinstance(module, nn.Linear)
    }
    unknown = [t for t in targets if t not in names]
    if unknown or not targets:
        raise FinetuneError(
            f"LoRA target module(s) {unknown or '(none)'} are not linear layers of this encoder's blocks; "
            f"choose from {', '.join(sorted(names))}"
        )
    _freeze_encoder(model)
    config = LoraConfig(r=rank, lora_alpha=alpha, lora_dropout=dropout, target_modules=list(targets))
    inject_adapter_in_model(config, model.encoder)
    for name, parameter in model.encoder.named_parameters():
        parameter.requires_grad_("lora_" in name)


def _adapter(model: PooledEncoderClassifier, *, size: int | None = None) -> None:
    layers = _blocks(model, "adapter")
    _freeze_encoder(model)
    for layer in layers:
        layer.feed_forward = FeedForwardWithAdapter(layer.feed_forward, model.hidden_size, size)


def _gating(model: PooledEncoderClassifier) -> None:
    layers = _blocks(model, "gating")
    _freeze_encoder(model)
    model.gates = LayerInputGates(len(layers), model.hidden_size)
    model.gates.attach(layers)


def _weighted(model: PooledEncoderClassifier) -> None:
    """Weighted gating: softmax weights over the kept hidden states 0..K, pooled into the head."""
    _blocks(model, "weighted")
    _freeze_encoder(model)
    model.layer_weights = nn.Parameter(torch.zeros(model.n_layers + 1))


PEFT_MODES: dict[str, Callable[..., None]] = {
    "none": _full,
    "lora": _lora,
    "adapter": _adapter,
    "gating": _gating,
    "weighted": _weighted,
}


def apply_peft(model: PooledEncoderClassifier, mode: str = "none", **options) -> PooledEncoderClassifier:
    """Prepare ``model`` for training in ``mode`` (one of :data:`PEFT_MODES`); returns the same object.

    ``none`` trains every encoder weight (the published full fine-tune); ``lora``, ``adapter``, ``gating`` and
    ``weighted`` freeze the encoder and add their own parameters. The head always trains. ``options`` are the
    mode's keyword arguments (``lora``: rank, alpha, dropout, targets; ``adapter``: size).
    """
    if mode not in PEFT_MODES:
        raise FinetuneError(f"unknown PEFT mode {mode!r}; choose one of {', '.join(PEFT_MODES)}")
    PEFT_MODES[mode](model, **options)
    for parameter in model.head.parameters():
        parameter.requires_grad_(True)
    return model


def trainable_parameter_names(model: nn.Module) -> list[str]:
    """Names of the parameters that will receive gradients."""
    return [name for name, parameter in model.named_parameters() if parameter.requires_grad]

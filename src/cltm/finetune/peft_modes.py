"""Which parameters train: full fine-tuning and three parameter-efficient modes for frozen-backbone studies.

A small registry maps a mode name to a function that edits a :class:`PooledEncoderClassifier` in place. After
:func:`apply_peft` exactly the mode's own parameters and the head have ``requires_grad=True``; everything else
in the encoder is frozen. Each mode starts as the unchanged network (LoRA's B matrices, the adapters'
up-projections and the gates' logits are initialised so the first forward pass equals the pre-trained
encoder's).
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn

from cltm.finetune.model import PooledEncoderClassifier

# HF names of the attention and feed-forward projections of wav2vec2/HuBERT/WavLM/data2vec-audio blocks.
LORA_TARGET_MODULES = ("q_proj", "k_proj", "v_proj", "out_proj", "intermediate_dense", "output_dense")


def transformer_layers(encoder: nn.Module) -> nn.ModuleList:
    """The encoder's stack of transformer blocks (``encoder.encoder.layers`` for HF audio encoders)."""
    layers = getattr(getattr(encoder, "encoder", None), "layers", None)
    if not isinstance(layers, nn.ModuleList) or len(layers) == 0:
        raise ValueError(
            f"{type(encoder).__name__} has no `encoder.layers` block list; adapter/gating PEFT supports "
            "wav2vec2-style encoders (HuBERT, wav2vec2, WavLM, data2vec-audio)"
        )
    return layers


class BottleneckAdapter(nn.Module):
    """hidden -> hidden/reduction -> hidden with GELU; the up-projection starts at zero, so it adds
    nothing."""

    def __init__(self, hidden_size: int, reduction: int = 16) -> None:
        super().__init__()
        self.down = nn.Linear(hidden_size, max(1, hidden_size // reduction))
        self.up = nn.Linear(max(1, hidden_size // reduction), hidden_size)
        nn.init.zeros_(self.up.weight)
        nn.init.zeros_(self.up.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.up(nn.functional.gelu(self.down(x)))


class FeedForwardWithAdapter(nn.Module):
    """A block's feed-forward module followed by a residual bottleneck adapter on its output."""

    def __init__(self, feed_forward: nn.Module, hidden_size: int, reduction: int = 16) -> None:
        super().__init__()
        self.feed_forward = feed_forward
        self.adapter = BottleneckAdapter(hidden_size, reduction)

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


def _lora(model: PooledEncoderClassifier, *, rank: int = 8, alpha: int = 16, dropout: float = 0.0) -> None:
    try:
        from peft import LoraConfig, inject_adapter_in_model
    except ImportError as err:
        raise ImportError("--peft lora needs the `peft` package: pip install 'cltm[finetune]'") from err

    _freeze_encoder(model)
    config = LoraConfig(
        r=rank, lora_alpha=alpha, lora_dropout=dropout, target_modules=list(LORA_TARGET_MODULES)
    )
    inject_adapter_in_model(config, model.encoder)
    for name, parameter in model.encoder.named_parameters():
        parameter.requires_grad_("lora_" in name)


def _adapter(model: PooledEncoderClassifier, *, reduction: int = 16) -> None:
    _freeze_encoder(model)
    for layer in transformer_layers(model.encoder):
        layer.feed_forward = FeedForwardWithAdapter(layer.feed_forward, model.hidden_size, reduction)


def _gating(model: PooledEncoderClassifier) -> None:
    _freeze_encoder(model)
    layers = transformer_layers(model.encoder)
    model.gates = LayerInputGates(len(layers), model.hidden_size)
    model.gates.attach(layers)


PEFT_MODES: dict[str, Callable[..., None]] = {
    "none": _full,
    "lora": _lora,
    "adapter": _adapter,
    "gating": _gating,
}


def apply_peft(model: PooledEncoderClassifier, mode: str = "none", **options) -> PooledEncoderClassifier:
    """Prepare ``model`` for training in ``mode`` (one of :data:`PEFT_MODES`); returns the same object.

    ``none`` trains every encoder weight (the published full fine-tune); ``lora``, ``adapter`` and ``gating``
    freeze the encoder and add their own parameters. The head always trains.
    """
    if mode not in PEFT_MODES:
        raise ValueError(f"unknown PEFT mode {mode!r}; choose one of {', '.join(PEFT_MODES)}")
    PEFT_MODES[mode](model, **options)
    for parameter in model.head.parameters():
        parameter.requires_grad_(True)
    return model


def trainable_parameter_names(model: nn.Module) -> list[str]:
    """Names of the parameters that will receive gradients."""
    return [name for name, parameter in model.named_parameters() if parameter.requires_grad]

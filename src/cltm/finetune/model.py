"""The fine-tuned network: an SSL speech encoder, mean pooling over valid frames, and a linear head.

One class serves both task families. Classification (gender, any label) trains and predicts with the head on
the pooled last layer, like HF's ``*ForSequenceClassification`` heads (or on a softmax-weighted sum of all
kept hidden states, the ``weighted`` PEFT mode). :func:`truncate_encoder` cuts the encoder after block K, so
the head reads hidden state K exactly as extraction caches it (the layer the probes found best).

Speaker verification trains the same head as a speaker-ID classifier over the training subset's speakers,
then discards it: the verification embedding is the mean of the last ``embed_last_k`` hidden states,
mean-pooled over valid frames and L2-normalised, scored by cosine.
"""

from __future__ import annotations

import torch
from torch import nn


def transformer_layers(encoder: nn.Module) -> nn.ModuleList:
    """The encoder's stack of transformer blocks (``encoder.encoder.layers`` for HF audio encoders)."""
    layers = getattr(getattr(encoder, "encoder", None), "layers", None)
    if not isinstance(layers, nn.ModuleList):
        raise ValueError(
            f"{type(encoder).__name__} has no `encoder.layers` block list; truncation and adapter/gating "
            "PEFT support wav2vec2-style encoders (HuBERT, wav2vec2, WavLM, data2vec-audio)"
        )
    return layers


def _final_norm_in_hidden_states(encoder: nn.Module) -> bool:
    """Whether ``output_hidden_states``' last entry includes a layer-norm-first encoder's final layer norm.

    transformers 4.x appended the normed output as the last hidden state; 5.x records every block's raw
    output and applies the norm to ``last_hidden_state`` only. One forward pass on a short tone
    tells which, so the truncated encoder matches the installed version's hidden state K.
    """
    was_training = encoder.training
    encoder.eval()
    try:
        with torch.no_grad():
            weight = next(encoder.parameters())
            probe = torch.sin(torch.arange(1600, dtype=torch.float32) / 7.0)[None]  # 0.1 s at 16 kHz
            probe = probe.to(device=weight.device, dtype=weight.dtype)
            out = encoder(probe, output_hidden_states=True)
    finally:
        encoder.train(was_training)
    return torch.equal(out.hidden_states[-1], out.last_hidden_state)


def truncate_encoder(encoder: nn.Module, layer: int) -> nn.Module:
    """Keep blocks 1..``layer`` of ``encoder`` (in place), so ``last_hidden_state`` equals the full model's
    ``hidden_states[layer]`` (index 0 = transformer input, index k = output of block k, as extraction caches).

    Post-norm encoders (wav2vec2/HuBERT base, ``do_stable_layer_norm=False``) normalise before block 1 and
    inside every block: dropping blocks is enough. Layer-norm-first encoders (large/XLS-R/mHuBERT,
    ``do_stable_layer_norm=True``) apply one final layer norm after the last block that the intermediate
    hidden states never see; it becomes the identity unless the full model's hidden state ``layer`` includes
    it (the last layer under transformers 4.x). ``config.num_hidden_layers`` is set to ``layer``.
    """
    layers = transformer_layers(encoder)
    total = len(layers)
    if not 0 <= layer <= total:
        raise ValueError(f"layer {layer} is out of range: this encoder has blocks 1..{total} (0 = its input)")
    stable = bool(getattr(encoder.config, "do_stable_layer_norm", False))
    keep_norm = stable and layer == total and _final_norm_in_hidden_states(encoder)
    encoder.encoder.layers = nn.ModuleList(list(layers)[:layer])
    if stable and not keep_norm:
        encoder.encoder.layer_norm = nn.Identity()
    encoder.config.num_hidden_layers = layer
    return encoder


def frame_mask(
    encoder: nn.Module,
    attention_mask: torch.Tensor | None,
    n_frames: int,
    batch_size: int,
    device: torch.device,
) -> torch.Tensor:
    """Bool [batch, n_frames]: which encoder frames come from real (unpadded) samples.

    The CNN front end maps sample counts to frame counts; the encoder knows that mapping
    (``_get_feat_extract_output_lengths`` on wav2vec2/HuBERT/WavLM/data2vec-audio), so padding never enters
    the pool.
    """
    if attention_mask is None:
        return torch.ones(batch_size, n_frames, dtype=torch.bool, device=device)
    lengths = encoder._get_feat_extract_output_lengths(attention_mask.sum(-1)).to(device)
    lengths = lengths.clamp(min=1, max=n_frames)
    return torch.arange(n_frames, device=device)[None, :] < lengths[:, None]


def masked_mean(hidden: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mean over the time axis of ``hidden`` [B, T, H] using only frames where ``mask`` [B, T] is true."""
    weights = mask.to(hidden.dtype).unsqueeze(-1)
    return (hidden * weights).sum(1) / weights.sum(1).clamp(min=1.0)


class PooledEncoderClassifier(nn.Module):
    """Encoder + mean pooling over valid frames + linear head.

    ``encoder`` is a HF audio encoder (``HubertModel``, ``Wav2Vec2Model``, ...). ``pass_attention_mask``
    follows the feature extractor's ``return_attention_mask``: models whose first conv uses group norm
    (wav2vec2/HuBERT base) were trained without one, so the padded batch goes in as is and only the pooling
    masks the padding. ``embed_last_k`` is how many of the last hidden states are averaged for verification
    embeddings.
    """

    def __init__(
        self, encoder: nn.Module, n_classes: int, *, embed_last_k: int = 1, pass_attention_mask: bool = True
    ) -> None:
        super().__init__()
        if n_classes < 2:
            raise ValueError(f"a classification head needs at least 2 classes, got {n_classes}")
        if embed_last_k < 1:
            raise ValueError(f"embed_last_k must be >= 1, got {embed_last_k}")
        self.encoder = encoder
        self.hidden_size = int(encoder.config.hidden_size)
        self.n_layers = int(encoder.config.num_hidden_layers)
        self.embed_last_k = min(embed_last_k, self.n_layers + 1)
        self.pass_attention_mask = pass_attention_mask
        self.head = nn.Linear(self.hidden_size, n_classes)
        # softmax logits over hidden states 0..n_layers; set by the `weighted` PEFT mode
        self.layer_weights: nn.Parameter | None = None

    def _hidden_states(
        self, input_values: torch.Tensor, attention_mask: torch.Tensor | None, all_layers: bool
    ) -> tuple[tuple[torch.Tensor, ...], torch.Tensor]:
        out = self.encoder(
            input_values,
            attention_mask=attention_mask if self.pass_attention_mask else None,
            output_hidden_states=all_layers,
        )
        states = tuple(out.hidden_states) if all_layers else (out.last_hidden_state,)
        mask = frame_mask(
            self.encoder, attention_mask, states[-1].shape[1], states[-1].shape[0], states[-1].device
        )
        return states, mask

    def pooled(self, input_values: torch.Tensor, attention_mask: torch.Tensor | None = None) -> torch.Tensor:
        """Mean-pooled last hidden state, [B, hidden]; with ``layer_weights``, the softmax-weighted sum of
        every hidden state (pooling is linear, so weighting before or after it is the same)."""
        weighted = self.layer_weights is not None
        states, mask = self._hidden_states(input_values, attention_mask, all_layers=weighted)
        if not weighted:
            return masked_mean(states[-1], mask)
        if len(states) != len(self.layer_weights):
            raise ValueError(f"{len(states)} hidden states but {len(self.layer_weights)} layer weights")
        weights = torch.softmax(self.layer_weights, dim=0).to(states[0].dtype)
        return masked_mean(torch.einsum("l,lbth->bth", weights, torch.stack(states, dim=0)), mask)

    def forward(self, input_values: torch.Tensor, attention_mask: torch.Tensor | None = None) -> torch.Tensor:
        """Class logits [B, n_classes]."""
        return self.head(self.pooled(input_values, attention_mask))

    def embed(self, input_values: torch.Tensor, attention_mask: torch.Tensor | None = None) -> torch.Tensor:
        """L2-normalised verification embedding [B, hidden]: mean of the last k hidden states, mean-pooled."""
        states, mask = self._hidden_states(input_values, attention_mask, all_layers=self.embed_last_k > 1)
        stacked = torch.stack(states[-self.embed_last_k :], dim=0).mean(0)
        return nn.functional.normalize(masked_mean(stacked, mask).float(), dim=-1)

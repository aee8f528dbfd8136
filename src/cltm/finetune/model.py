"""The fine-tuned network: an SSL speech encoder, mean pooling over valid frames, and a linear head.

One class serves both task families. Classification (gender, any label) trains and predicts with the head on
the pooled last layer, like HF's ``*ForSequenceClassification`` heads. Speaker verification trains the same
head as a speaker-ID classifier over the training subset's speakers, then discards it: the verification
embedding is the mean of the last ``embed_last_k`` hidden states, mean-pooled over valid frames and
L2-normalised, scored by cosine.
"""

from __future__ import annotations

import torch
from torch import nn


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
        """Mean-pooled last hidden state, [B, hidden]."""
        states, mask = self._hidden_states(input_values, attention_mask, all_layers=False)
        return masked_mean(states[-1], mask)

    def forward(self, input_values: torch.Tensor, attention_mask: torch.Tensor | None = None) -> torch.Tensor:
        """Class logits [B, n_classes]."""
        return self.head(self.pooled(input_values, attention_mask))

    def embed(self, input_values: torch.Tensor, attention_mask: torch.Tensor | None = None) -> torch.Tensor:
        """L2-normalised verification embedding [B, hidden]: mean of the last k hidden states, mean-pooled."""
        states, mask = self._hidden_states(input_values, attention_mask, all_layers=self.embed_last_k > 1)
        stacked = torch.stack(states[-self.embed_last_k :], dim=0).mean(0)
        return nn.functional.normalize(masked_mean(stacked, mask).float(), dim=-1)

"""The training and inference loops over in-memory (or lazily loaded) waveforms.

Nothing here knows about languages, cells or files: a run hands in a sequence of float32 mono waveforms,
integer labels and :class:`TrainSettings`, and gets a trained model back. Batches are zero-padded with an
attention mask; the pooling only averages real frames (see :mod:`cltm.finetune.model`).
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field, fields

import numpy as np
import torch
from torch import nn

from cltm.finetune import LORA_TARGET_MODULES
from cltm.finetune.model import PooledEncoderClassifier
from cltm.finetune.peft_modes import PEFT_MODES

PRECISIONS = {"fp32": None, "bf16": torch.bfloat16}


@dataclass(frozen=True)
class TrainSettings:
    """What one fine-tuning run trains and how; the defaults are the published recipe.

    lr 1e-5, 1 epoch, batch size 1, gradient-norm clipping at 1.0, fp32. AdamW with a linear decay to zero
    over the run and no warm-up (the HF ``Trainer`` defaults the published recipe ran with). ``embed_last_k``:
    how many of the last hidden states make the speaker embedding. ``normalize_audio``:
    zero-mean/unit-variance per utterance, as the model's feature extractor does (``do_normalize``).

    ``layer``: cut the encoder after block K and put the head there (None: the whole encoder, head on its
    output). ``peft`` and its options: ``lora_rank``, ``lora_alpha``, ``lora_targets`` (module names
    inside each block), ``adapter_size`` (bottleneck width; None = hidden/16). ``patience``: early stopping
    on the dev split, evaluated after every epoch (dev UAR, then dev loss); stop after ``patience`` epochs
    without improvement and keep the best epoch's weights (0 = off, train every epoch).
    """

    epochs: int = 1
    lr: float = 1e-5
    batch_size: int = 1
    precision: str = "fp32"
    grad_clip: float = 1.0
    weight_decay: float = 0.0
    peft: str = "none"
    embed_last_k: int = 4
    eval_batch_size: int = 1
    normalize_audio: bool = True
    layer: int | None = None
    lora_rank: int = 8
    lora_alpha: float = 16.0
    lora_targets: tuple[str, ...] = LORA_TARGET_MODULES
    adapter_size: int | None = None
    patience: int = 0

    def __post_init__(self) -> None:
        if self.precision not in PRECISIONS:
            raise ValueError(f"precision must be one of {', '.join(PRECISIONS)}, got {self.precision!r}")
        if self.epochs < 1 or self.batch_size < 1 or self.eval_batch_size < 1:
            raise ValueError("epochs, batch_size and eval_batch_size must be >= 1")
        if not self.lr > 0:
            raise ValueError(f"lr must be positive, got {self.lr}")
        if self.peft not in PEFT_MODES:
            raise ValueError(f"unknown PEFT mode {self.peft!r}; choose one of {', '.join(PEFT_MODES)}")
        if self.layer is not None and self.layer < 0:
            raise ValueError(f"layer must be >= 0 (0 = the transformer input), got {self.layer}")
        if self.lora_rank < 1 or not self.lora_alpha > 0:
            raise ValueError(f"LoRA rank must be >= 1 and alpha > 0, got {self.lora_rank}, {self.lora_alpha}")
        if not self.lora_targets:
            raise ValueError("lora_targets is empty: name at least one module (e.g. q_proj)")
        if self.adapter_size is not None and self.adapter_size < 1:
            raise ValueError(f"adapter_size must be >= 1, got {self.adapter_size}")
        if self.patience < 0:
            raise ValueError(f"patience must be >= 0 (0 = no early stopping), got {self.patience}")
        object.__setattr__(self, "lora_targets", tuple(self.lora_targets))

    def as_dict(self) -> dict:
        return asdict(self)

    def peft_options(self) -> dict:
        """Keyword arguments of :func:`cltm.finetune.peft_modes.apply_peft` for this ``peft`` mode."""
        if self.peft == "lora":
            return {"rank": self.lora_rank, "alpha": self.lora_alpha, "targets": self.lora_targets}
        if self.peft == "adapter":
            return {"size": self.adapter_size}
        return {}

    def config_dict(self) -> dict:
        """The settings that enter a run's configuration hash.

        Settings added after the first release are left out while at their defaults, so directories
        written before keep their hash (and resume); options of other PEFT modes never count.
        """
        out = self.as_dict()
        for name in _LATER_FIELDS:
            if out[name] == _DEFAULTS[name]:
                del out[name]
        for name, mode in _MODE_OPTIONS.items():
            if self.peft != mode:
                out.pop(name, None)
        return out


_LATER_FIELDS = ("layer", "lora_rank", "lora_alpha", "lora_targets", "adapter_size", "patience")
_MODE_OPTIONS = {"lora_rank": "lora", "lora_alpha": "lora", "lora_targets": "lora", "adapter_size": "adapter"}
_DEFAULTS = {f.name: f.default for f in fields(TrainSettings)}


def normalize_waveform(wave: np.ndarray) -> np.ndarray:
    """Zero mean, unit variance (the HF Wav2Vec2FeatureExtractor's ``do_normalize``, same epsilon)."""
    wave = np.asarray(wave, dtype=np.float32)
    return (wave - wave.mean()) / np.sqrt(wave.var() + 1e-7)


def pad_batch(waves: Sequence[np.ndarray], *, normalize: bool = True) -> tuple[torch.Tensor, torch.Tensor]:
    """Zero-pad waveforms to one [B, T] float tensor plus a [B, T] long attention mask (1 = real sample)."""
    if normalize:
        waves = [normalize_waveform(w) for w in waves]
    longest = max(len(w) for w in waves)
    values = torch.zeros(len(waves), longest, dtype=torch.float32)
    mask = torch.zeros(len(waves), longest, dtype=torch.long)
    for i, wave in enumerate(waves):
        values[i, : len(wave)] = torch.from_numpy(np.asarray(wave, dtype=np.float32))
        mask[i, : len(wave)] = 1
    return values, mask


def autocast(device: torch.device, precision: str):
    """bf16 autocast where asked, a no-op context for fp32."""
    dtype = PRECISIONS[precision]
    if dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=dtype)


class _WaveDataset(torch.utils.data.Dataset):
    def __init__(self, waves: Sequence[np.ndarray], labels: Sequence[int] | None) -> None:
        self.waves, self.labels = waves, labels

    def __len__(self) -> int:
        return len(self.waves)

    def __getitem__(self, index: int):
        return self.waves[index], (-1 if self.labels is None else int(self.labels[index]))


def _loader(
    waves, labels, *, batch_size: int, shuffle: bool, seed: int, normalize: bool, num_workers: int
) -> torch.utils.data.DataLoader:
    def collate(items):
        values, mask = pad_batch([w for w, _ in items], normalize=normalize)
        return values, mask, torch.tensor([label for _, label in items], dtype=torch.long)

    generator = torch.Generator().manual_seed(seed)
    return torch.utils.data.DataLoader(
        _WaveDataset(waves, labels),
        batch_size=batch_size,
        shuffle=shuffle,
        generator=generator,
        collate_fn=collate,
        num_workers=num_workers,
    )


@dataclass
class TrainLog:
    """What happened during training: the loss of every optimiser step and, with a dev set, the dev scores
    (UAR, loss) after every epoch and the epoch whose weights were kept (1-based; None without a dev set)."""

    losses: list[float]
    dev_scores: list[tuple[float, float]] = field(default_factory=list)
    best_epoch: int | None = None

    @property
    def steps(self) -> int:
        return len(self.losses)

    @property
    def epochs_run(self) -> int:
        return len(self.dev_scores)


def _dev_score(model, dev, settings: TrainSettings, device, num_workers: int) -> tuple[float, float]:
    """(UAR, mean cross-entropy) of ``model`` on the dev waveforms and labels."""
    from cltm.probes.metrics import uar

    waves, labels = dev
    logits = predict_logits(model, waves, settings, device=device, num_workers=num_workers)
    truth = np.asarray(labels, dtype=np.int64)
    loss = float(nn.functional.cross_entropy(torch.from_numpy(logits), torch.from_numpy(truth)))
    return uar(truth, logits.argmax(axis=1)), loss


def train_classifier(
    model: PooledEncoderClassifier,
    waves: Sequence[np.ndarray],
    labels: Sequence[int],
    settings: TrainSettings,
    *,
    seed: int,
    device: torch.device | str = "cpu",
    num_workers: int = 0,
    on_step: Callable[[int, float], None] | None = None,
    dev: tuple[Sequence[np.ndarray], Sequence[int]] | None = None,
) -> TrainLog:
    """Train ``model`` (whose trainable parameters are already chosen, see ``apply_peft``) with cross-entropy.

    ``seed`` fixes the batch order; the caller seeds the head's initialisation. Only parameters with
    ``requires_grad`` go to the optimiser, so frozen weights stay bit-identical. ``dev`` (waveforms, labels)
    turns on early stopping with ``settings.patience`` (see :class:`TrainSettings`); the test set never
    enters here. Each call starts a fresh optimiser and learning-rate schedule from the model's current
    weights (sequential transfer calls it once per stage).
    """
    if len(waves) != len(labels):
        raise ValueError(f"{len(waves)} waveforms but {len(labels)} labels")
    if len(waves) == 0:
        raise ValueError("no training utterances")
    if dev is not None and (len(dev[0]) == 0 or len(dev[0]) != len(dev[1])):
        raise ValueError(f"the dev set needs waveforms and as many labels, got {len(dev[0])} / {len(dev[1])}")
    stopping = dev is not None and settings.patience > 0
    device = torch.device(device)
    model.to(device).train()
    trainable = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(trainable, lr=settings.lr, weight_decay=settings.weight_decay)
    steps_per_epoch = math.ceil(len(waves) / settings.batch_size)
    total_steps = steps_per_epoch * settings.epochs
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: max(0.0, 1.0 - step / total_steps))
    loss_fn = nn.CrossEntropyLoss()
    log = TrainLog([])
    best: tuple[float, float] | None = None
    best_state: dict[str, torch.Tensor] = {}
    losses = log.losses
    for epoch in range(settings.epochs):
        loader = _loader(
            waves,
            labels,
            batch_size=settings.batch_size,
            shuffle=True,
            seed=seed * 1000 + epoch,
            normalize=settings.normalize_audio,
            num_workers=num_workers,
        )
        for values, mask, target in loader:
            values, mask, target = values.to(device), mask.to(device), target.to(device)
            with autocast(device, settings.precision):
                logits = model(values, mask)
            loss = loss_fn(logits.float(), target)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            if settings.grad_clip and settings.grad_clip > 0:
                torch.nn.utils.clip_grad_norm_(trainable, settings.grad_clip)
            optimizer.step()
            scheduler.step()
            losses.append(float(loss.detach()))
            if on_step is not None:
                on_step(len(losses), losses[-1])
        if stopping:
            uar_, dev_loss = _dev_score(model, dev, settings, device, num_workers)
            log.dev_scores.append((uar_, dev_loss))
            if best is None or (uar_, -dev_loss) > best:
                best, log.best_epoch = (uar_, -dev_loss), epoch + 1
                best_state = {n: p.detach().clone() for n, p in model.named_parameters() if p.requires_grad}
            elif epoch + 1 - log.best_epoch >= settings.patience:
                break
            model.train()
    if best_state and log.best_epoch != log.epochs_run:  # roll back to the best dev epoch
        with torch.no_grad():
            for name, parameter in model.named_parameters():
                if name in best_state:
                    parameter.copy_(best_state[name])
    model.eval()
    return log


@torch.no_grad()
def _infer(model, waves, settings: TrainSettings, device, num_workers: int, fn) -> np.ndarray:
    device = torch.device(device)
    model.to(device).eval()
    loader = _loader(
        waves,
        None,
        batch_size=settings.eval_batch_size,
        shuffle=False,
        seed=0,
        normalize=settings.normalize_audio,
        num_workers=num_workers,
    )
    outputs = []
    for values, mask, _ in loader:
        with autocast(device, settings.precision):
            outputs.append(fn(values.to(device), mask.to(device)).float().cpu().numpy())
    return np.concatenate(outputs, axis=0)


def predict_logits(
    model: PooledEncoderClassifier,
    waves: Sequence[np.ndarray],
    settings: TrainSettings,
    *,
    device: torch.device | str = "cpu",
    num_workers: int = 0,
) -> np.ndarray:
    """Class logits, float32 [n, n_classes], in the order of ``waves``."""
    return _infer(model, waves, settings, device, num_workers, model.forward)


def embed_utterances(
    model: PooledEncoderClassifier,
    waves: Sequence[np.ndarray],
    settings: TrainSettings,
    *,
    device: torch.device | str = "cpu",
    num_workers: int = 0,
) -> np.ndarray:
    """L2-normalised verification embeddings, float32 [n, hidden], in the order of ``waves``."""
    return _infer(model, waves, settings, device, num_workers, model.embed)

"""Speech encoders as "hidden-state providers": HF models loaded by id or path, tiny test models, and fbank.

Every model is wrapped in a :class:`LoadedModel` that knows its sample rate, how many hidden states it returns
(``n_layers``, index 0 = transformer input, index k = output of block k, exactly as HF
``output_hidden_states``), its hidden size, the feature-extractor settings it was trained with, and how
many valid frames a waveform of ``n`` samples produces
(from the model's own conv arithmetic, ``_get_feat_extract_output_lengths``).
"""

from __future__ import annotations

import hashlib
import math
import pickle
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from cltm.fileio import stable_hash

FBANK_ID = "fbank"

# config keys that do not change what the encoder computes (or that we override ourselves)
_VOLATILE_CONFIG_KEYS = {
    "_name_or_path",
    "transformers_version",
    "_commit_hash",
    "output_hidden_states",
    "output_attentions",
    "return_dict",
    "layerdrop",
    "torch_dtype",
    "dtype",
    "_attn_implementation",
    "_attn_implementation_autoset",
    "architectures",
}


def config_hash(config_dict: dict[str, Any]) -> str:
    """A stable short hash of a model config, ignoring keys that do not change the computation."""
    clean = {k: v for k, v in sorted(config_dict.items()) if k not in _VOLATILE_CONFIG_KEYS}
    return stable_hash(clean)


def weights_fingerprint(model_dir: str | Path) -> str | None:
    """A cheap fingerprint of a local model directory's weight files (name, size, first and last MiB).

    Hub models are identified by their resolved revision; a local directory has none, so without this a
    re-trained checkpoint saved over the old one (same config) would silently resume the old cache.
    """
    root = Path(model_dir)
    if not root.is_dir():
        return None
    files = sorted(p for p in root.iterdir() if p.suffix in (".safetensors", ".bin", ".pt", ".pth"))
    if not files:
        return None
    digest = hashlib.sha256()
    for path in files:
        size = path.stat().st_size
        digest.update(f"{path.name}:{size}".encode())
        with path.open("rb") as f:
            digest.update(f.read(1 << 20))
            if size > 2 << 20:
                f.seek(-(1 << 20), 2)
                digest.update(f.read())
    return digest.hexdigest()[:16]


def conv_output_length(n_samples: int, kernels: tuple[int, ...], strides: tuple[int, ...]) -> int:
    """Frames produced by a stack of unpadded 1-D convolutions (the wav2vec2-family feature encoder)."""
    n = n_samples
    for k, s in zip(kernels, strides, strict=True):
        if n < k:
            return 0
        n = (n - k) // s + 1
    return n


def conv_receptive_field(kernels: tuple[int, ...], strides: tuple[int, ...]) -> int:
    """The fewest samples that give one output frame (smaller inputs make the conv stack fail)."""
    n = 1
    for k, s in zip(reversed(kernels), reversed(strides), strict=True):
        n = (n - 1) * s + k
    return n


class _Precomputed(torch.nn.Module):
    """Stands in for a model's conv feature encoder and returns features computed beforehand."""

    def __init__(self, features: torch.Tensor):
        super().__init__()
        self.features = features

    def forward(self, _input_values: torch.Tensor) -> torch.Tensor:
        return self.features


@dataclass
class LoadedModel:
    """An encoder ready for extraction, with everything the runner needs to batch and pool correctly."""

    model_id: str
    revision: str | None
    sampling_rate: int
    n_layers: int  # number of hidden states returned, including index 0
    hidden_size: int
    do_normalize: bool
    return_attention_mask: bool
    config_hash: str
    min_samples: int
    kind: str = "hf"  # "hf" | "fbank"
    weights_hash: str | None = None  # local directories only (hub models: the revision says it)
    model: torch.nn.Module | None = None
    hidden_state_definition: str = (
        "index 0 = transformer input (CNN feature projection), index k = output of block k, "
        "as transformers output_hidden_states returns them"
    )
    extra: dict[str, Any] = field(default_factory=dict)

    def frame_lengths(self, sample_lengths: torch.Tensor | np.ndarray | int) -> torch.Tensor:
        """Valid output frames for inputs of the given sample lengths (the model's own conv arithmetic)."""
        lengths = torch.as_tensor(sample_lengths, dtype=torch.long)
        if self.kind == FBANK_ID:
            return _fbank_frame_lengths(lengths)
        return self.model._get_feat_extract_output_lengths(lengths).to(torch.long)

    def normalize(self, wave: np.ndarray) -> np.ndarray:
        """Per-utterance zero-mean unit-variance, as Wav2Vec2FeatureExtractor does (if the model wants it)."""
        if not self.do_normalize:
            return wave.astype(np.float32, copy=False)
        wave = wave.astype(np.float32, copy=False)
        return ((wave - wave.mean()) / np.sqrt(wave.var() + 1e-7)).astype(np.float32)

    @property
    def per_utterance_cnn(self) -> bool:
        """Group-norm feature encoders (wav2vec2/HuBERT base) normalise over time, so zero padding
        changes every frame; running their CNN on each unpadded utterance makes batched output equal
        single-file output."""
        return self.kind == "hf" and self.extra.get("feat_extract_norm") == "group"

    @torch.inference_mode()
    def hidden_states_unpadded_cnn(
        self, input_values: torch.Tensor, lengths: torch.Tensor
    ) -> tuple[torch.Tensor, ...]:
        """Like :meth:`hidden_states`, but the conv feature encoder sees each utterance without padding.

        The transformer then runs batched with the attention mask (the model zeroes and masks padded frames,
        which is what a lone utterance sees). Done by handing the model's own forward the per-utterance CNN
        features in place of its feature encoder, so everything after the CNN is the model's own code.
        """
        m = self.model
        encoder = m.feature_extractor
        feats = [
            encoder(input_values[i : i + 1, :n])[0].transpose(0, 1) for i, n in enumerate(lengths.tolist())
        ]
        padded = torch.nn.utils.rnn.pad_sequence(feats, batch_first=True).transpose(1, 2)  # [B, C, F]
        positions = torch.arange(input_values.shape[1], device=input_values.device)
        mask = (positions[None, :] < lengths.to(input_values.device)[:, None]).long()
        m.feature_extractor = _Precomputed(padded)
        try:
            out = m(input_values, attention_mask=mask, output_hidden_states=True, return_dict=True)
        finally:
            m.feature_extractor = encoder
        return tuple(out.hidden_states)

    def to(self, device: torch.device | str) -> LoadedModel:
        if self.model is not None:
            self.model.to(device)
        return self

    @torch.inference_mode()
    def hidden_states(
        self, input_values: torch.Tensor, attention_mask: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, ...]:
        """All hidden states for a padded batch [B, T] -> tuple of n_layers tensors [B, F, D]."""
        if self.kind == FBANK_ID:
            return (_log_mel(input_values),)
        out = self.model(
            input_values, attention_mask=attention_mask, output_hidden_states=True, return_dict=True
        )
        return tuple(out.hidden_states)


def check_local_model_path(name: str) -> None:
    """Refuse a model name that can only be a local path (absolute, ``./``, ``../``, ``~``, or more than one
    ``/``: a hub id is ``namespace/name``) when that path is not a model directory, with a message that
    says so; otherwise the hub client answers with a repo-id syntax error about a path it never should see."""
    looks_local = name.startswith(("/", "./", "../", "~")) or name.count("/") > 1 or name.endswith("/")
    if not looks_local:
        return
    path = Path(name).expanduser()
    hint = "give a model directory (with config.json) or a hub id such as utter-project/mHuBERT-147"
    if not path.exists():
        raise FileNotFoundError(f"model {name}: no such directory; {hint}")
    if not (path / "config.json").is_file():
        raise FileNotFoundError(f"model {name}: not a model directory (no config.json in it); {hint}")


def load_model(
    model_id_or_path: str | Path, *, revision: str | None = None, trust_remote_code: bool = False
) -> LoadedModel:
    """Load any HF speech encoder that returns hidden states (HuBERT, wav2vec2, WavLM, XLS-R…).

    Goes through ``AutoModel.from_pretrained``, the same path a hub id takes, so a local directory written
    by :func:`build_tiny_model` and ``utter-project/mHuBERT-147`` load the same way. Safetensors weights
    are used when the repository has them; the model is put in eval mode with layerdrop off. The
    feature-extractor settings (normalisation, attention mask, sample rate) come from the model's own
    ``preprocessor_config.json``; when a repository lacks one, the wav2vec2 convention is used (normalise;
    attention mask only for layer-norm feature encoders). ``"fbank"`` gives the built-in log-mel baseline
    (one "layer", 80 dims).
    """
    if str(model_id_or_path) == FBANK_ID:
        return fbank_model()
    from transformers import AutoConfig, AutoFeatureExtractor, AutoModel

    name = str(model_id_or_path)
    check_local_model_path(name)
    config = AutoConfig.from_pretrained(name, revision=revision, trust_remote_code=trust_remote_code)
    if hasattr(config, "layerdrop"):
        config.layerdrop = 0.0  # layerdrop skips random blocks; extraction must see all of them
    try:
        model = AutoModel.from_pretrained(
            name, config=config, revision=revision, trust_remote_code=trust_remote_code, use_safetensors=None
        )
    except pickle.UnpicklingError as err:  # torch's weights_only load refused objects that run code
        detail = str(err).split("WeightsUnpickler error:")[-1].strip().split(". ")[0]
        raise ValueError(
            f"{name}: the pickled weights (pytorch_model.bin) hold objects other than tensors ({detail}); "
            "cltm never runs pickled code. Convert the weights to safetensors where you trust the file "
            "(model.save_pretrained(DIR, safe_serialization=True)) and load DIR."
        ) from None
    model.eval()
    if not hasattr(model, "_get_feat_extract_output_lengths"):
        raise ValueError(
            f"{name}: {type(model).__name__} has no _get_feat_extract_output_lengths; cltm extracts from "
            "wav2vec2-family speech encoders (HuBERT, wav2vec2, WavLM, data2vec-audio, XLS-R, mHuBERT)."
        )
    norm = getattr(config, "feat_extract_norm", "layer")
    settings = {"do_normalize": True, "return_attention_mask": norm == "layer", "sampling_rate": 16000}
    try:
        fe = AutoFeatureExtractor.from_pretrained(
            name, revision=revision, trust_remote_code=trust_remote_code
        )
        settings.update(
            do_normalize=bool(getattr(fe, "do_normalize", True)),
            return_attention_mask=bool(
                getattr(fe, "return_attention_mask", settings["return_attention_mask"])
            ),
            sampling_rate=int(getattr(fe, "sampling_rate", 16000)),
        )
    except (OSError, ValueError):
        pass  # no preprocessor_config.json: keep the wav2vec2 convention above
    kernels = tuple(getattr(config, "conv_kernel", (10, 3, 3, 3, 3, 2, 2)))
    strides = tuple(getattr(config, "conv_stride", (5, 2, 2, 2, 2, 2, 2)))
    resolved_revision = revision or getattr(config, "_commit_hash", None)
    return LoadedModel(
        model_id=name,
        revision=resolved_revision,
        sampling_rate=settings["sampling_rate"],
        n_layers=int(config.num_hidden_layers) + 1,
        hidden_size=int(config.hidden_size),
        do_normalize=settings["do_normalize"],
        return_attention_mask=settings["return_attention_mask"],
        config_hash=config_hash(config.to_dict()),
        min_samples=conv_receptive_field(kernels, strides),
        model=model,
        weights_hash=weights_fingerprint(name),
        extra={"feat_extract_norm": norm, "model_type": getattr(config, "model_type", "")},
    )


# ---------------------------------------------------------------------------------------------------- fbank
FBANK_SR = 16000
FBANK_WIN = 400  # 25 ms
FBANK_HOP = 160  # 10 ms
FBANK_NFFT = 400  # = window, so frames = 1 + (n - 400) // 160 exactly
FBANK_MELS = 80


def fbank_model() -> LoadedModel:
    """Log-mel filterbank (25 ms / 10 ms, 80 bands) as a one-layer "model": the classical baseline."""
    return LoadedModel(
        model_id=FBANK_ID,
        revision=None,
        sampling_rate=FBANK_SR,
        n_layers=1,
        hidden_size=FBANK_MELS,
        do_normalize=False,
        return_attention_mask=True,
        config_hash=config_hash(
            {"kind": FBANK_ID, "win": FBANK_WIN, "hop": FBANK_HOP, "nfft": FBANK_NFFT, "mels": FBANK_MELS}
        ),
        min_samples=FBANK_WIN,
        kind=FBANK_ID,
        hidden_state_definition="index 0 = log-mel filterbank (80 bands, 25 ms window, 10 ms hop)",
    )


def _fbank_frame_lengths(lengths: torch.Tensor) -> torch.Tensor:
    return torch.clamp((lengths - FBANK_WIN) // FBANK_HOP + 1, min=0)


_MEL_CACHE: dict[str, torch.Tensor] = {}


def _mel_matrix() -> torch.Tensor:
    if "mel" not in _MEL_CACHE:
        from transformers.audio_utils import mel_filter_bank

        mel = mel_filter_bank(
            num_frequency_bins=FBANK_NFFT // 2 + 1,
            num_mel_filters=FBANK_MELS,
            min_frequency=20.0,
            max_frequency=FBANK_SR / 2,
            sampling_rate=FBANK_SR,
            norm="slaney",
            mel_scale="slaney",
        )
        _MEL_CACHE["mel"] = torch.from_numpy(mel.astype(np.float32))  # [freq, mels]
    return _MEL_CACHE["mel"]


def _log_mel(wave: torch.Tensor) -> torch.Tensor:
    """[B, T] -> [B, frames, 80] natural-log mel energies (frames past a row's length are padding)."""
    wave = wave.float()
    if wave.shape[-1] < FBANK_WIN:
        wave = torch.nn.functional.pad(wave, (0, FBANK_WIN - wave.shape[-1]))
    spec = torch.stft(
        wave,
        n_fft=FBANK_NFFT,
        hop_length=FBANK_HOP,
        win_length=FBANK_WIN,
        window=torch.hann_window(FBANK_WIN, device=wave.device),
        center=False,
        return_complex=True,
    )  # [B, freq, frames]
    power = spec.abs().pow(2).transpose(1, 2)  # [B, frames, freq]
    return torch.log(power @ _mel_matrix().to(wave.device) + 1e-6)


# ---------------------------------------------------------------------------------------------- tiny models
_TINY_ARCHS = {"hubert": "HubertConfig", "wav2vec2": "Wav2Vec2Config", "wavlm": "WavLMConfig"}


def build_tiny_model(
    out_dir: str | Path,
    *,
    arch: str = "hubert",
    seed: int = 0,
    norm: str = "layer",
    hidden_size: int = 32,
    num_hidden_layers: int = 3,
    num_attention_heads: int = 2,
    intermediate_size: int = 64,
    conv_channels: int = 32,
    **config_overrides: Any,
) -> Path:
    """Save a tiny, randomly initialised (but seed-fixed) speech encoder that loads like a hub id.

    The conv stack keeps the standard kernels (10,3,3,3,3,2,2) and strides (5,2,2,2,2,2,2), i.e. the real 320x
    downsampling and 400-sample receptive field, with only ``conv_channels`` channels. ``norm="layer"``
    builds a large/XLS-R-style model (stable layer norm, attention mask used); ``norm="group"`` a base-style
    one (group norm in the first conv over time, no attention mask).
    A ``Wav2Vec2FeatureExtractor`` is saved beside it.
    Anything in ``config_overrides`` is passed to the config (e.g. ``hidden_size=768, num_hidden_layers=12``).
    """
    import transformers
    from transformers import AutoModel, Wav2Vec2FeatureExtractor

    if arch not in _TINY_ARCHS:
        raise ValueError(f"arch must be one of {sorted(_TINY_ARCHS)}, got {arch!r}")
    if norm not in ("layer", "group"):
        raise ValueError(f"norm must be 'layer' or 'group', got {norm!r}")
    config_cls = getattr(transformers, _TINY_ARCHS[arch])
    settings: dict[str, Any] = dict(
        hidden_size=hidden_size,
        num_hidden_layers=num_hidden_layers,
        num_attention_heads=num_attention_heads,
        intermediate_size=intermediate_size,
        conv_dim=(conv_channels,) * 7,
        conv_kernel=(10, 3, 3, 3, 3, 2, 2),
        conv_stride=(5, 2, 2, 2, 2, 2, 2),
        num_conv_pos_embeddings=16,
        num_conv_pos_embedding_groups=2,
        feat_extract_norm=norm,
        do_stable_layer_norm=norm == "layer",
        layerdrop=0.0,
        hidden_dropout=0.0,
        attention_dropout=0.0,
        activation_dropout=0.0,
        feat_proj_dropout=0.0,
        vocab_size=32,
    )
    if arch == "wavlm":
        settings.update(num_buckets=32, max_bucket_distance=100)
    settings.update(config_overrides)
    config = config_cls(**settings)
    torch.manual_seed(seed)
    model = AutoModel.from_config(config)
    model.eval()
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out, safe_serialization=True)
    Wav2Vec2FeatureExtractor(
        feature_size=1,
        sampling_rate=16000,
        padding_value=0.0,
        do_normalize=True,
        return_attention_mask=norm == "layer",
    ).save_pretrained(out)
    return out


def windows(n_samples: int, window: int, min_samples: int) -> list[tuple[int, int]]:
    """Split [0, n) into windows of ``window`` samples; a too-short tail is merged into the previous one.

    Used for files longer than the runner's limit: each window is encoded alone and the frames of all windows
    are pooled together.
    """
    if n_samples <= window:
        return [(0, n_samples)]
    count = math.ceil(n_samples / window)
    bounds = [(i * window, min((i + 1) * window, n_samples)) for i in range(count)]
    if len(bounds) > 1 and bounds[-1][1] - bounds[-1][0] < min_samples:
        last = bounds.pop()
        bounds[-1] = (bounds[-1][0], last[1])
    return bounds

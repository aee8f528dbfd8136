"""Model loading: tiny models saved and reloaded by path, frame arithmetic, fbank vs a numpy reference."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from cltm.extract.models import (
    build_tiny_model,
    conv_output_length,
    conv_receptive_field,
    load_model,
    windows,
)

KERNELS = (10, 3, 3, 3, 3, 2, 2)
STRIDES = (5, 2, 2, 2, 2, 2, 2)


def _frames_by_running_convs(n: int) -> int:
    """Reference: actually run unpadded 1-D convolutions with the standard kernels/strides."""
    x = torch.zeros(1, 1, n)
    for k, s in zip(KERNELS, STRIDES, strict=True):
        if x.shape[-1] < k:
            return 0
        x = torch.nn.functional.conv1d(x, torch.ones(1, 1, k), stride=s)
    return x.shape[-1]


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    return build_tiny_model(tmp_path_factory.mktemp("m") / "hubert", arch="hubert", norm="layer", seed=3)


def test_conv_arithmetic_matches_running_the_convolutions():
    for n in [0, 1, 399, 400, 401, 719, 720, 1000, 16000, 16319, 16320, 33333]:
        assert conv_output_length(n, KERNELS, STRIDES) == _frames_by_running_convs(n), n
    field = conv_receptive_field(KERNELS, STRIDES)
    smallest = next(n for n in range(1, 2000) if _frames_by_running_convs(n) >= 1)
    assert field == smallest == 400


def test_tiny_model_saves_and_loads_like_a_hub_id(tiny):
    files = {p.name for p in tiny.iterdir()}
    assert {"config.json", "model.safetensors", "preprocessor_config.json"} <= files
    m = load_model(tiny)
    assert not m.model.training
    assert m.model.config.layerdrop == 0.0
    cfg = json.loads((tiny / "config.json").read_text())
    assert m.n_layers == cfg["num_hidden_layers"] + 1
    assert m.hidden_size == cfg["hidden_size"]
    pre = json.loads((tiny / "preprocessor_config.json").read_text())
    assert m.return_attention_mask == pre["return_attention_mask"] is True
    assert m.do_normalize == pre["do_normalize"]
    assert m.min_samples == 400
    # the model's own arithmetic, as used by the runner, agrees with running the convolutions
    for n in [400, 5000, 16000]:
        assert int(m.frame_lengths(n)) == _frames_by_running_convs(n)
    # hidden states: n_layers tensors with the frame count from the arithmetic
    x = torch.randn(1, 16000)
    hs = m.hidden_states(x, torch.ones(1, 16000, dtype=torch.long))
    assert len(hs) == m.n_layers and hs[0].shape == (1, _frames_by_running_convs(16000), m.hidden_size)


def test_same_seed_same_weights_other_seed_other_weights(tmp_path):
    a = load_model(build_tiny_model(tmp_path / "a", seed=1))
    b = load_model(build_tiny_model(tmp_path / "b", seed=1))
    c = load_model(build_tiny_model(tmp_path / "c", seed=2))
    x = torch.randn(1, 8000)
    ha, hb, hc = (m.hidden_states(x, None)[-1] for m in (a, b, c))
    assert torch.equal(ha, hb)
    assert not torch.allclose(ha, hc)
    assert a.config_hash == b.config_hash  # same config, different paths: same identity


@pytest.mark.parametrize("arch", ["wav2vec2", "wavlm"])
def test_other_architectures_and_group_norm(tmp_path, arch):
    m = load_model(build_tiny_model(tmp_path / arch, arch=arch, norm="group", hidden_size=32))
    assert m.return_attention_mask is False and m.per_utterance_cnn
    hs = m.hidden_states(torch.randn(1, 4000), None)
    assert len(hs) == m.n_layers and hs[0].shape[1] == _frames_by_running_convs(4000)


def test_config_overrides_reach_the_config(tmp_path):
    path = build_tiny_model(tmp_path / "big", hidden_size=48, num_hidden_layers=2, num_attention_heads=4)
    m = load_model(path)
    assert (m.n_layers, m.hidden_size) == (3, 48)
    with pytest.raises(ValueError, match="arch"):
        build_tiny_model(tmp_path / "x", arch="conformer")


def test_normalize_matches_the_hf_feature_extractor(tiny):
    from transformers import Wav2Vec2FeatureExtractor

    fe = Wav2Vec2FeatureExtractor.from_pretrained(tiny)
    wave = (np.random.default_rng(0).standard_normal(5000) * 0.3 + 0.1).astype(np.float32)
    ref = fe(wave, sampling_rate=16000, return_tensors="np").input_values[0]
    np.testing.assert_allclose(load_model(tiny).normalize(wave), ref, rtol=1e-5, atol=1e-5)


def test_fbank_matches_a_numpy_reference():
    from transformers.audio_utils import mel_filter_bank

    m = load_model("fbank")
    assert (m.n_layers, m.hidden_size, m.sampling_rate) == (1, 80, 16000)
    wave = np.random.default_rng(1).standard_normal(4000).astype(np.float32)
    got = m.hidden_states(torch.from_numpy(wave)[None])[0][0].numpy()
    n_frames = 1 + (4000 - 400) // 160
    assert got.shape == (n_frames, 80) and int(m.frame_lengths(4000)) == n_frames
    # reference: frame by frame, periodic Hann window, |rfft|^2, slaney mel matrix, natural log
    window = 0.5 - 0.5 * np.cos(2 * np.pi * np.arange(400) / 400)
    mel = mel_filter_bank(
        num_frequency_bins=201,
        num_mel_filters=80,
        min_frequency=20.0,
        max_frequency=8000,
        sampling_rate=16000,
        norm="slaney",
        mel_scale="slaney",
    )
    ref = np.stack(
        [
            np.log(np.abs(np.fft.rfft(wave[i * 160 : i * 160 + 400] * window)) ** 2 @ mel + 1e-6)
            for i in range(n_frames)
        ]
    )
    np.testing.assert_allclose(got, ref, rtol=1e-3, atol=1e-3)


def test_windows_cover_the_file_and_merge_a_short_tail():
    cases = [(100, 1000, 400), (1000, 1000, 400), (2500, 1000, 400), (2200, 1000, 400), (3000, 1000, 10)]
    for n, w, min_s in cases:
        bounds = windows(n, w, min_s)
        covered = np.concatenate([np.arange(a, b) for a, b in bounds])
        np.testing.assert_array_equal(covered, np.arange(n))
        assert all(b - a >= min(min_s, n) for a, b in bounds)
    assert windows(2200, 1000, 400) == [(0, 1000), (1000, 2200)]


def test_a_local_path_that_is_no_model_directory_is_named(tmp_path, tiny):
    from cltm.extract.models import check_local_model_path, load_model

    with pytest.raises(FileNotFoundError, match="no such directory.*hub id"):
        load_model(str(tmp_path / "nope"))
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match="no config.json"):
        load_model(str(tmp_path / "empty") + "/")
    for hub_like in ("utter-project/mHuBERT-147", "facebook/hubert-base-ls960", "tiny"):
        check_local_model_path(hub_like)  # left to the hub client (or a local directory of that name)
    assert load_model(str(tiny)).n_layers > 0  # a real model directory still loads

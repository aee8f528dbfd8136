"""Truncation at layer K, weighted gating over the kept layers, and the PEFT options (tiny models, CPU)."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch

from cltm.extract.models import build_tiny_model, load_model
from cltm.finetune.model import PooledEncoderClassifier, masked_mean, truncate_encoder
from cltm.finetune.peft_modes import apply_peft, trainable_parameter_names
from cltm.finetune.train import TrainSettings, pad_batch

N_BLOCKS = 3


@pytest.fixture(scope="module", params=["layer", "group"])
def encoder(request, tmp_path_factory):
    """A tiny layer-norm-first (``do_stable_layer_norm=True``) or post-norm / group-norm encoder."""
    path = build_tiny_model(
        tmp_path_factory.mktemp(request.param) / "m",
        seed=5,
        norm=request.param,
        num_hidden_layers=N_BLOCKS,
        mask_time_prob=0.0,
    )
    loaded = load_model(path)
    assert bool(loaded.model.config.do_stable_layer_norm) == (request.param == "layer")
    return loaded


def _batch(seed: int = 0):
    rng = np.random.default_rng(seed)
    waves = [rng.standard_normal(n).astype(np.float32) for n in (4800, 3100)]
    return pad_batch(waves)


def _full_states(loaded, values, mask):
    model = loaded.model.eval()
    with torch.no_grad():
        out = model(
            values, attention_mask=mask if loaded.return_attention_mask else None, output_hidden_states=True
        )
    return out.hidden_states


@pytest.mark.parametrize("layer", range(N_BLOCKS + 1))
def test_truncated_encoder_output_is_the_full_models_hidden_state_k(encoder, layer):
    values, mask = _batch()
    full = _full_states(encoder, values, mask)
    assert len(full) == N_BLOCKS + 1
    cut = truncate_encoder(copy.deepcopy(encoder.model), layer).eval()
    assert len(cut.encoder.layers) == layer and cut.config.num_hidden_layers == layer
    with torch.no_grad():
        got = cut(values, attention_mask=mask if encoder.return_attention_mask else None).last_hidden_state
    torch.testing.assert_close(got, full[layer], rtol=0, atol=1e-6)
    # the head's input: the same hidden state, mean-pooled over valid frames
    head = PooledEncoderClassifier(cut, 2, pass_attention_mask=encoder.return_attention_mask).eval()
    with torch.no_grad():
        pooled = head.pooled(values, mask)
    for i, n in enumerate(mask.sum(1).tolist()):
        frames = int(encoder.frame_lengths(n))
        torch.testing.assert_close(pooled[i], full[layer][i, :frames].mean(0), rtol=1e-5, atol=1e-6)


def test_the_last_layer_of_a_stable_norm_model_differs_from_its_normed_output(encoder):
    """Why truncation must handle the final layer norm: last_hidden_state is normed, hidden state K is not
    (layer-norm-first models, transformers >= 5); post-norm models have no final norm at all."""
    values, mask = _batch(1)
    full = _full_states(encoder, values, mask)
    with torch.no_grad():
        last = encoder.model(
            values, attention_mask=mask if encoder.return_attention_mask else None
        ).last_hidden_state
    stable = bool(encoder.model.config.do_stable_layer_norm)
    if stable and not torch.equal(full[-1], last):
        normed = encoder.model.encoder.layer_norm(full[-1])
        torch.testing.assert_close(last, normed, rtol=0, atol=1e-6)
    elif not stable:
        assert torch.equal(full[-1], last)


def test_truncation_out_of_range_is_refused(encoder):
    with pytest.raises(ValueError, match="out of range"):
        truncate_encoder(copy.deepcopy(encoder.model), N_BLOCKS + 1)


def test_weighted_gating_pools_the_softmax_weighted_hidden_states(encoder):
    model = PooledEncoderClassifier(
        truncate_encoder(copy.deepcopy(encoder.model), 2),
        3,
        pass_attention_mask=encoder.return_attention_mask,
    )
    apply_peft(model, "weighted")
    assert set(trainable_parameter_names(model)) == {"layer_weights", "head.weight", "head.bias"}
    assert model.layer_weights.shape == (3,)  # hidden states 0, 1, 2 of the kept blocks
    with torch.no_grad():
        model.layer_weights.copy_(torch.tensor([0.3, -1.0, 2.0]))
    values, mask = _batch(2)
    full = _full_states(encoder, values, mask)
    model.eval()
    with torch.no_grad():
        pooled = model.pooled(values, mask)
    w = np.exp([0.3, -1.0, 2.0])
    w = w / w.sum()
    for i, n in enumerate(mask.sum(1).tolist()):
        frames = int(encoder.frame_lengths(n))
        expected = sum(float(w[k]) * full[k][i, :frames].mean(0) for k in range(3))
        torch.testing.assert_close(pooled[i], expected, rtol=1e-5, atol=1e-6)


def test_lora_rank_alpha_and_targets_are_honoured(encoder):
    model = PooledEncoderClassifier(copy.deepcopy(encoder.model), 2)
    apply_peft(model, "lora", rank=2, alpha=6.0, targets=("q_proj", "v_proj"))
    lora = [n for n in trainable_parameter_names(model) if "lora_" in n]
    assert lora and all((".q_proj." in n or ".v_proj." in n) for n in lora)
    assert len(lora) == N_BLOCKS * 2 * 2  # blocks x (q, v) x (A, B)
    q = model.encoder.encoder.layers[0].attention.q_proj
    assert q.lora_A["default"].weight.shape[0] == 2 and q.scaling["default"] == pytest.approx(3.0)


def test_lora_default_targets_are_attention_and_feed_forward(encoder):
    model = PooledEncoderClassifier(copy.deepcopy(encoder.model), 2)
    apply_peft(model, "lora")
    wrapped = {
        n.split(".lora_")[0].rsplit(".", 1)[-1] for n in trainable_parameter_names(model) if "lora_" in n
    }
    assert wrapped == {"q_proj", "k_proj", "v_proj", "out_proj", "intermediate_dense", "output_dense"}


def test_unknown_lora_target_and_bad_adapter_size_are_refused(encoder):
    with pytest.raises(ValueError, match="qkv"):
        apply_peft(PooledEncoderClassifier(copy.deepcopy(encoder.model), 2), "lora", targets=("qkv",))
    with pytest.raises(ValueError, match="adapter_size"):
        TrainSettings(peft="adapter", adapter_size=0)


def test_adapter_size_sets_the_bottleneck(encoder):
    model = PooledEncoderClassifier(copy.deepcopy(encoder.model), 2)
    apply_peft(model, "adapter", size=5)
    for block in model.encoder.encoder.layers:
        assert block.feed_forward.adapter.down.out_features == 5


def test_peft_after_cutting_at_layer_zero_is_refused(encoder):
    model = PooledEncoderClassifier(truncate_encoder(copy.deepcopy(encoder.model), 0), 2)
    for mode in ("lora", "adapter", "gating", "weighted"):
        with pytest.raises(ValueError, match="layer 0"):
            apply_peft(copy.deepcopy(model), mode)


def test_settings_hash_keeps_old_directories_and_counts_new_options():
    """Defaults of options added later leave the hash as it was; a set option or another layer changes it."""
    old_keys = {
        "epochs",
        "lr",
        "batch_size",
        "precision",
        "grad_clip",
        "weight_decay",
        "peft",
        "embed_last_k",
        "eval_batch_size",
        "normalize_audio",
    }
    assert set(TrainSettings().config_dict()) == old_keys
    assert set(TrainSettings(peft="lora").config_dict()) == old_keys
    assert TrainSettings(layer=4).config_dict()["layer"] == 4
    assert TrainSettings(peft="lora", lora_rank=4).config_dict()["lora_rank"] == 4
    assert "lora_rank" not in TrainSettings(peft="adapter", lora_rank=4).config_dict()
    assert TrainSettings(peft="lora").peft_options()["targets"] == (
        "q_proj",
        "k_proj",
        "v_proj",
        "out_proj",
        "intermediate_dense",
        "output_dense",
    )


def test_masked_mean_reference():
    hidden = torch.arange(24, dtype=torch.float32).reshape(2, 4, 3)
    mask = torch.tensor([[True, True, False, False], [True, True, True, True]])
    out = masked_mean(hidden, mask)
    torch.testing.assert_close(out[0], hidden[0, :2].mean(0))
    torch.testing.assert_close(out[1], hidden[1].mean(0))

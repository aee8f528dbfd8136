"""PEFT modes train only their own parameters; each starts as the unchanged encoder; valid-frame pooling."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from cltm.extract.models import build_tiny_model, load_model
from cltm.finetune.model import PooledEncoderClassifier, frame_mask, masked_mean
from cltm.finetune.peft_modes import PEFT_MODES, apply_peft, trainable_parameter_names
from cltm.finetune.train import TrainSettings, pad_batch, train_classifier

# Which parameter names belong to each mode (the obvious rule, written independently of the package).
OWN_PARAMETER = {
    "lora": lambda name: "lora_" in name,
    "adapter": lambda name: ".adapter." in name,
    "gating": lambda name: name.startswith("gates."),
    "weighted": lambda name: name == "layer_weights",
}


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory):
    return build_tiny_model(tmp_path_factory.mktemp("tiny") / "m", seed=3, mask_time_prob=0.0)


def _fresh(tiny_dir, mode: str, n_classes: int = 2) -> PooledEncoderClassifier:
    torch.manual_seed(0)
    loaded = load_model(tiny_dir)
    model = PooledEncoderClassifier(loaded.model, n_classes, embed_last_k=2)
    return apply_peft(model, mode)


def _waves(count: int, seed: int = 0) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    return [rng.standard_normal(int(rng.integers(3000, 6000))).astype(np.float32) for _ in range(count)]


@pytest.mark.parametrize("mode", sorted(PEFT_MODES))
def test_each_mode_trains_only_its_parameters(tiny_dir, mode):
    model = _fresh(tiny_dir, mode)
    names = [n for n, _ in model.named_parameters()]
    trainable = set(trainable_parameter_names(model))
    if mode == "none":
        expected = set(names)
    else:
        expected = {n for n in names if n.startswith("head.") or OWN_PARAMETER[mode](n)}
        assert any(OWN_PARAMETER[mode](n) for n in names), f"{mode} added no parameters"
    assert trainable == expected

    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    # three steps: LoRA's A and the adapters' down-projections get a gradient only once B/up left zero
    settings = TrainSettings(lr=1e-2, peft=mode)
    log = train_classifier(model, _waves(3), [0, 1, 0], settings, seed=1)
    assert log.steps == 3 and all(np.isfinite(log.losses))
    changed = {n for n, p in model.named_parameters() if not torch.equal(p.detach(), before[n])}
    assert changed <= trainable, f"frozen weights moved: {sorted(changed - trainable)[:5]}"
    if mode == "none":
        layers = {n.split(".")[3] for n in changed if n.startswith("encoder.encoder.layers.")}
        assert layers == {str(i) for i in range(model.n_layers)} and "head.weight" in changed
    else:
        assert changed == trainable, f"trainable but unchanged: {sorted(trainable - changed)[:5]}"


@pytest.mark.parametrize("mode", ["lora", "adapter", "gating"])
def test_peft_modes_start_as_the_pretrained_encoder(tiny_dir, mode):
    base = _fresh(tiny_dir, "none").eval()
    peft_model = _fresh(tiny_dir, mode).eval()
    values, mask = pad_batch(_waves(2, seed=5))
    with torch.no_grad():
        expected = base.encoder(values, attention_mask=mask, output_hidden_states=True).hidden_states
        got = peft_model.encoder(values, attention_mask=mask, output_hidden_states=True).hidden_states
    assert len(got) == len(expected) == base.n_layers + 1
    for e, g in zip(expected, got, strict=True):
        if mode == "gating":  # 2*sigmoid(0) == 1 exactly: bit-identical
            assert torch.equal(e, g)
        else:
            torch.testing.assert_close(g, e, rtol=0, atol=1e-6)


def test_gates_are_identity_and_scale_the_layer_input(tiny_dir):
    model = _fresh(tiny_dir, "gating").eval()
    assert torch.equal(model.gates.scale(0), torch.ones(model.hidden_size))
    seen = {}
    layer0 = model.encoder.encoder.layers[0]

    def record(module, args, kwargs):
        seen["x"] = (args[0] if args else kwargs["hidden_states"]).clone()

    handle = layer0.register_forward_pre_hook(record, with_kwargs=True)
    values, mask = pad_batch(_waves(1, seed=2))
    with torch.no_grad():
        model.encoder(values, attention_mask=mask)
        ungated = seen.pop("x")
        model.gates.logits[0].fill_(-2.0)  # a gate the hook must apply (it was registered first)
        model.encoder(values, attention_mask=mask)
    handle.remove()
    # the later hook sees the scaled input: x * 2 * sigmoid(-2)
    torch.testing.assert_close(seen["x"], ungated * (2.0 / (1.0 + np.exp(2.0))), rtol=1e-5, atol=1e-6)


def test_valid_frame_pooling_matches_one_utterance_at_a_time(tiny_dir):
    """Batched pooling over valid frames == each utterance pooled alone (layer-norm model: attention mask)."""
    model = _fresh(tiny_dir, "none").eval()
    waves = _waves(3, seed=7)
    values, mask = pad_batch(waves)
    with torch.no_grad():
        batched = model.pooled(values, mask)
        for i, wave in enumerate(waves):
            single_values, single_mask = pad_batch([wave])
            alone = model.encoder(single_values).last_hidden_state[0]  # every frame is real
            torch.testing.assert_close(batched[i], alone.mean(0), rtol=1e-4, atol=1e-4)


def test_masked_mean_and_frame_mask_against_loops(tiny_dir):
    encoder = load_model(tiny_dir).model
    rng = np.random.default_rng(0)
    lengths = [4000, 2500, 1200]
    attention = torch.zeros(3, 4000, dtype=torch.long)
    for i, n in enumerate(lengths):
        attention[i, :n] = 1
    n_frames = 12
    mask = frame_mask(encoder, attention, n_frames, 3, torch.device("cpu"))
    hidden = torch.from_numpy(rng.standard_normal((3, n_frames, 5)).astype(np.float32))
    pooled = masked_mean(hidden, mask)
    for i, n in enumerate(lengths):
        frames = n  # the conv stack's arithmetic, written out: kernels 10,3,3,3,3,2,2 / strides 5,2,2,2,2,2,2
        for k, s in zip((10, 3, 3, 3, 3, 2, 2), (5, 2, 2, 2, 2, 2, 2), strict=True):
            frames = (frames - k) // s + 1
        frames = min(frames, n_frames)
        assert mask[i].sum().item() == frames and bool(mask[i, :frames].all())
        torch.testing.assert_close(pooled[i], hidden[i, :frames].mean(0))


def test_embeddings_are_unit_length_means_of_last_k_layers(tiny_dir):
    model = _fresh(tiny_dir, "none").eval()
    values, mask = pad_batch(_waves(1, seed=9))
    with torch.no_grad():
        emb = model.embed(values, mask)
        states = model.encoder(values, attention_mask=mask, output_hidden_states=True).hidden_states
    expected = (states[-1][0] + states[-2][0]).mean(0) / 2
    expected = expected / expected.norm()
    torch.testing.assert_close(emb[0], expected, rtol=1e-5, atol=1e-6)


def test_unknown_mode_is_refused(tiny_dir):
    with pytest.raises(ValueError, match="unknown PEFT mode"):
        _fresh(tiny_dir, "prefix")


def test_bf16_autocast_trains_with_fp32_weights(tiny_dir):
    """bf16 autocast (CPU here, GPU in practice): weights stay fp32, the first loss is close to fp32's."""
    losses = {}
    for precision in ("fp32", "bf16"):
        model = _fresh(tiny_dir, "none")
        log = train_classifier(model, _waves(2), [0, 1], TrainSettings(lr=1e-3, precision=precision), seed=0)
        losses[precision] = log.losses
        assert all(p.dtype == torch.float32 for p in model.parameters())
    assert np.isfinite(losses["bf16"]).all()
    assert losses["bf16"][0] == pytest.approx(losses["fp32"][0], abs=0.05)


def test_settings_are_validated():
    with pytest.raises(ValueError, match="precision"):
        TrainSettings(precision="fp16")
    with pytest.raises(ValueError):
        TrainSettings(lr=0.0)
    assert TrainSettings() == TrainSettings(epochs=1, lr=1e-5, batch_size=1, precision="fp32", grad_clip=1.0)

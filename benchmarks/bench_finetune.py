"""Fine-tuning throughput: step time, peak memory and samples/s of the cltm training loop.

Builds a random-weight encoder (``--size base``: the HuBERT-base shape, 12 x 768, group-norm conv front end;
``--size small``: a CPU-sized 4 x 256 one) with ``cltm.extract.build_tiny_model``, loads it the way
``cltm finetune`` does, and trains the encoder + mean pooling + linear head on synthetic audio with
``cltm.finetune.train.train_classifier`` for ``--steps`` steps in the asked precision. The naive way measured
in the same run is the published recipe's fp32; the printed ratio is fp32 step time / asked-precision step
time. On CPU the memory figure is the process's peak RSS so far (the fp32 line includes the earlier run).
``--layer K`` also trains the encoder cut after block K (``cltm finetune --layer K``) in the asked precision
and prints full-depth step time / truncated step time.

GPU (the measurement the issue asks for):
    python benchmarks/bench_finetune.py --size base --steps 300 --precision bf16 --device cuda
CPU smoke setting (what dev-2c can do):
    python benchmarks/bench_finetune.py --size small --steps 20 --seconds 2 --precision bf16 --device cpu
Truncation at the middle block, LoRA:
    python benchmarks/bench_finetune.py --size base --steps 100 --peft lora --layer 6 --device cuda
"""

from __future__ import annotations

import argparse
import resource
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from cltm.extract.models import build_tiny_model, load_model
from cltm.finetune.model import PooledEncoderClassifier, truncate_encoder
from cltm.finetune.peft_modes import PEFT_MODES, apply_peft
from cltm.finetune.train import TrainSettings, train_classifier

SIZES = {
    # HuBERT/mHuBERT-147 base: 12 blocks x 768, FF 3072, 12 heads, 512-channel conv stack, group norm
    "base": dict(
        hidden_size=768,
        num_hidden_layers=12,
        num_attention_heads=12,
        intermediate_size=3072,
        conv_channels=512,
        norm="group",
    ),
    "small": dict(
        hidden_size=256,
        num_hidden_layers=4,
        num_attention_heads=4,
        intermediate_size=1024,
        conv_channels=128,
        norm="group",
    ),
}


def synthetic_audio(count: int, seconds: float, seed: int = 0, sr: int = 16000) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    t = np.arange(int(seconds * sr)) / sr
    return [
        (0.3 * np.sin(2 * np.pi * rng.uniform(90, 260) * t) + 0.05 * rng.standard_normal(len(t))).astype(
            np.float32
        )
        for _ in range(count)
    ]


def measure(
    model_dir: Path,
    *,
    precision: str,
    steps: int,
    batch_size: int,
    seconds: float,
    peft: str,
    device: torch.device,
    warmup: int,
    layer: int | None = None,
) -> dict:
    loaded = load_model(model_dir)
    if layer is not None:
        truncate_encoder(loaded.model, layer)
    torch.manual_seed(0)
    model = apply_peft(PooledEncoderClassifier(loaded.model, 2), peft)
    waves = synthetic_audio((steps + warmup) * batch_size, seconds)
    labels = [i % 2 for i in range(len(waves))]
    stamps: list[float] = []
    if device.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)
    start = time.perf_counter()
    # float(loss) in the loop synchronises the device every step, so the stamps are true step ends
    train_classifier(
        model,
        waves,
        labels,
        TrainSettings(lr=1e-5, batch_size=batch_size, precision=precision, peft=peft),
        seed=0,
        device=device,
        on_step=lambda step, loss: stamps.append(time.perf_counter()),
    )
    step_times = np.diff([start, *stamps])[warmup:]
    mean_step = float(np.mean(step_times))
    if device.type == "cuda":
        memory = torch.cuda.max_memory_allocated(device) / 2**30
        memory_kind = "GPU peak allocated"
    else:
        memory = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20
        memory_kind = "process peak RSS"
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    del model
    return dict(
        precision=precision if layer is None else f"{precision}@{layer}",
        mean_step_s=mean_step,
        median_step_s=float(statistics.median(step_times)),
        samples_per_s=batch_size / mean_step,
        audio_s_per_s=batch_size * seconds / mean_step,
        memory_gib=memory,
        memory_kind=memory_kind,
        trainable=trainable,
        steps=len(step_times),
    )


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--size", choices=sorted(SIZES), default="small")
    parser.add_argument("--steps", type=int, default=20, help="timed optimiser steps per precision")
    parser.add_argument("--warmup", type=int, default=3, help="untimed first steps (allocator, kernels)")
    parser.add_argument("--seconds", type=float, default=2.0, help="length of every synthetic utterance")
    parser.add_argument("--batch-size", type=int, default=1)
    parser.add_argument("--precision", choices=["fp32", "bf16"], default="bf16")
    parser.add_argument("--peft", default="none", choices=sorted(PEFT_MODES))
    parser.add_argument("--layer", type=int, default=None, help="also train the encoder cut after block K")
    parser.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(
        "cuda"
        if args.device == "auto" and torch.cuda.is_available()
        else ("cpu" if args.device == "auto" else args.device)
    )
    with tempfile.TemporaryDirectory() as tmp:
        model_dir = build_tiny_model(Path(tmp) / args.size, seed=0, mask_time_prob=0.0, **SIZES[args.size])
        common = dict(
            steps=args.steps,
            batch_size=args.batch_size,
            seconds=args.seconds,
            peft=args.peft,
            device=device,
            warmup=args.warmup,
        )
        results = [measure(model_dir, precision=args.precision, **common)]
        if args.precision != "fp32":
            results.append(measure(model_dir, precision="fp32", **common))
        truncated = (
            measure(model_dir, precision=args.precision, layer=args.layer, **common)
            if args.layer is not None
            else None
        )
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else f"CPU x{torch.get_num_threads()}"
    print(
        f"size={args.size} peft={args.peft} device={name} batch={args.batch_size} x {args.seconds:g} s audio,"
        " "
        f"{results[0]['steps']} timed steps, trainable params {results[0]['trainable']:,}"
    )
    for r in results:
        print(
            f"  {r['precision']:>5}: step {r['mean_step_s'] * 1000:8.1f} ms"
            f" (median {r['median_step_s'] * 1000:.1f}),"
            f" {r['samples_per_s']:7.2f} samples/s, {r['audio_s_per_s']:7.1f} audio-s/s,"
            f" {r['memory_kind']} {r['memory_gib']:.2f} GiB"
        )
    if len(results) == 2:
        print(
            f"  speed-up of {args.precision} over the published fp32 recipe: "
            f"{results[1]['mean_step_s'] / results[0]['mean_step_s']:.2f}x"
        )
    if truncated is not None:
        r = truncated
        print(
            f"  {r['precision']:>5}: step {r['mean_step_s'] * 1000:8.1f} ms"
            f" (median {r['median_step_s'] * 1000:.1f}),"
            f" trainable params {r['trainable']:,}; speed-up of --layer {args.layer} over full depth: "
            f"{results[0]['mean_step_s'] / r['mean_step_s']:.2f}x"
        )


if __name__ == "__main__":
    main()

"""Extraction pipeline vs a bare loop over the same files, same model.

    python benchmarks/bench_extract.py [--seconds 60] [--arch base|large|tiny] [--device cpu|cuda]
                                       [--dtype float32|bfloat16|float16] [--num-workers 1]

The bare loop is the naive way: for each file, decode, normalise, forward with all hidden states, mean-pool
each layer, ``np.save``. The pipeline is ``cltm.extract.extract`` (length-sorted batches by total seconds,
DataLoader decoding, valid-frame mean+std pooling, asynchronous Zarr writes, resumable bookkeeping).
Both use the same randomly initialised model of the chosen size (random weights have the real FLOPs).
Prints audio seconds per second for both and the ratio of wall times (CPU target: pipeline <= 1.15x bare).

On a GPU (``--device cuda --dtype bfloat16``) it also prints the real-time factor and the fraction of the
measured bf16 matmul ceiling that the model's FLOPs reach (FLOPs counted with torch's FlopCounterMode).
"""

from __future__ import annotations

import argparse
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np
import polars as pl
import soundfile as sf
import torch

from cltm.audio import load_audio
from cltm.extract import build_tiny_model, extract, load_model
from cltm.extract.settings import BatchSettings, ExtractSettings, ModelSettings

ARCHS = {
    "tiny": dict(
        hidden_size=32, num_hidden_layers=3, num_attention_heads=2, intermediate_size=64, conv_channels=32
    ),
    "base": dict(
        hidden_size=768,
        num_hidden_layers=12,
        num_attention_heads=12,
        intermediate_size=3072,
        conv_channels=512,
        norm="group",
    ),
    "large": dict(
        hidden_size=1024,
        num_hidden_layers=24,
        num_attention_heads=16,
        intermediate_size=4096,
        conv_channels=512,
        norm="layer",
    ),
}


def make_corpus(root: Path, seconds: float, seed: int = 0) -> Path:
    """Files of 2-8 s (Common Voice-like lengths) adding up to about ``seconds``."""
    rng = np.random.default_rng(seed)
    rows, total, i = [], 0.0, 0
    while total < seconds:
        dur = float(rng.uniform(2.0, 8.0))
        wave = 0.1 * rng.standard_normal(int(dur * 16000)).astype(np.float32)
        sf.write(root / f"u{i}.wav", wave, 16000)
        rows.append({"utt_id": f"u{i}", "path": str(root / f"u{i}.wav"), "language": "xx"})
        total += dur
        i += 1
    pl.DataFrame(rows).write_parquet(root / "manifest.parquet")
    return root / "manifest.parquet"


def bare_loop(
    manifest: Path, model_dir: Path, out: Path, device: torch.device, dtype: torch.dtype | None
) -> float:
    m = load_model(model_dir).to(device)
    out.mkdir(parents=True, exist_ok=True)
    paths = pl.read_parquet(manifest)["path"].to_list()
    t = time.perf_counter()
    for i, path in enumerate(paths):
        wave = m.normalize(load_audio(path))
        x = torch.from_numpy(wave)[None].to(device)
        with torch.inference_mode(), torch.autocast(device.type, dtype=dtype, enabled=dtype is not None):
            hidden = m.model(x, output_hidden_states=True).hidden_states
        pooled = torch.stack([h[0].float().mean(0) for h in hidden]).cpu().numpy().astype(np.float16)
        np.save(out / f"{i}.npy", pooled)
    if device.type == "cuda":
        torch.cuda.synchronize()
    return time.perf_counter() - t


def matmul_ceiling_tflops(device: torch.device, dtype: torch.dtype) -> float:
    a = torch.randn(8192, 8192, device=device, dtype=dtype)
    b = torch.randn(8192, 8192, device=device, dtype=dtype)
    for _ in range(3):
        a @ b
    torch.cuda.synchronize()
    t = time.perf_counter()
    n = 20
    for _ in range(n):
        a @ b
    torch.cuda.synchronize()
    return 2 * 8192**3 * n / (time.perf_counter() - t) / 1e12


def flops_per_audio_second(model_dir: Path) -> float:
    from torch.utils.flop_counter import FlopCounterMode

    m = load_model(model_dir)
    x = torch.randn(1, 16000 * 5)
    with FlopCounterMode(display=False) as counter, torch.inference_mode():
        m.model(x, output_hidden_states=True)
    return counter.get_total_flops() / 5.0


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--seconds", type=float, default=60.0, help="audio to process, in seconds")
    parser.add_argument("--arch", choices=sorted(ARCHS), default="base")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--dtype", choices=["float32", "bfloat16", "float16"], default="float32")
    parser.add_argument("--num-workers", type=int, default=1)
    parser.add_argument("--batch-seconds", type=float, default=None, help="default: 60 on CPU, 600 on GPU")
    parser.add_argument("--dir", default=None, help="scratch directory (default: a temp dir)")
    args = parser.parse_args()
    device = torch.device(args.device)
    dtype = {"float32": None, "bfloat16": torch.bfloat16, "float16": torch.float16}[args.dtype]
    batch_seconds = args.batch_seconds or (600.0 if device.type == "cuda" else 60.0)
    root = Path(tempfile.mkdtemp(prefix="bench_extract_", dir=args.dir))
    try:
        manifest = make_corpus(root, args.seconds)
        audio = float(sum(sf.info(p).duration for p in pl.read_parquet(manifest)["path"]))
        model_dir = build_tiny_model(root / "model", arch="hubert", seed=0, **ARCHS[args.arch])
        print(
            f"{args.arch} model, {audio:.1f} s of audio in {pl.read_parquet(manifest).height} files, "
            f"device {device}, dtype {args.dtype}, torch threads {torch.get_num_threads()}"
        )
        t_bare = bare_loop(manifest, model_dir, root / "bare", device, dtype)
        t0 = time.perf_counter()
        summary = extract(
            manifest,
            model_dir,
            root / "cache.zarr",
            settings=ExtractSettings(
                model=ModelSettings(device=str(device), dtype=args.dtype),
                batching=BatchSettings(num_workers=args.num_workers, batch_seconds=batch_seconds),
            ),
        )
        t_pipe = time.perf_counter() - t0  # includes model loading and cache creation
        assert summary.n_done_now == pl.read_parquet(manifest).height
        print(
            f"  bare loop (decode, forward, mean-pool, np.save): {t_bare:7.2f} s  "
            f"{audio / t_bare:8.1f} audio-s/s"
        )
        print(
            f"  cltm extract (mean+std, Zarr, resumable)       : {t_pipe:7.2f} s  "
            f"{audio / t_pipe:8.1f} audio-s/s"
        )
        print(f"  ratio pipeline/bare wall time: {t_pipe / t_bare:.2f}x  (CPU target <= 1.15x)")
        if device.type == "cuda":
            ceiling = matmul_ceiling_tflops(device, dtype or torch.float32)
            flops = flops_per_audio_second(model_dir)
            achieved = flops * audio / t_pipe / 1e12
            print(
                f"  real-time factor: {audio / t_pipe:,.0f}x; model {flops / 1e9:.1f} GFLOP per audio second;"
            )
            print(
                f"  achieved {achieved:.1f} TFLOP/s = {achieved / ceiling:.1%} of the measured "
                f"{args.dtype} matmul ceiling ({ceiling:.0f} TFLOP/s)"
            )
    finally:
        shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()

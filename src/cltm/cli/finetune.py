"""`cltm finetune`: re-measure chosen CLTM cells by fine-tuning the encoder (or a PEFT part of it)."""

from __future__ import annotations

from pathlib import Path

import typer

from cltm.cli._errors import EXIT_FAILED, EXIT_USAGE, fail
from cltm.finetune import LORA_TARGET_MODULES

ORDER = 60

HELP = (
    "Fine-tune the speech encoder for chosen CLTM cells, the published way, on the probe sweep's subsets.\n\n"
    "For every cell TARGET:DONOR and seed it trains, from the pre-trained weights, the --conditions asked "
    "for (default the CLTM's three): `single` (N of the target: the monolingual model), `self` (2N of the "
    "target), `pair` (N of the target + N of the donor), `zero_shot` (N of the donor only) and `sequential` "
    "(N of the donor, then that model adapted on N of the target), and scores them on the target's held-out "
    "test set (speaker: cosine scoring of the target's trials). Subsets, test sets and trials come from the "
    "same planner as `cltm matrix`, so fine-tuned and probed cells compare one to one.\n\n"
    "--layer K cuts the encoder after block K and puts the head there (the hidden state K that probes at "
    "layer K read); `--from-matrix DIR --layer best` takes the probe sweep's best layer.\n\n"
    "Results: DIR/runs.parquet (one row per run, source=finetune), written after every run; re-running the "
    "same command skips finished runs. Turn them into a CLTM with "
    "`cltm matrix --from-runs DIR/runs.parquet`. --predictions adds DIR/predictions.parquet (one row per "
    "test utterance and run).\n\n"
    "Several GPUs: `torchrun --nproc-per-node 4 -m cltm.finetune ARGS` or `accelerate launch -m "
    "cltm.finetune ARGS` (same ARGS as here) spreads the runs over the processes, one whole run per process."
)


def _layer(text: str | None, from_matrix: Path | None) -> int | str | None:
    """``--layer``: None, ``best`` (needs --from-matrix) or a hidden-state index K >= 0."""
    if text is None:
        return None
    if text.strip() == "best":
        if from_matrix is None:
            raise typer.BadParameter(
                "`best` picks the best probed layer of a sweep: add --from-matrix DIR", param_hint="--layer"
            )
        return "best"
    try:
        value = int(text)
        if value < 0:
            raise ValueError
    except ValueError:
        raise typer.BadParameter(
            f"{text!r}: give a hidden-state index K >= 0 (0 = transformer input) or `best`",
            param_hint="--layer",
        ) from None
    return value


def _seeds(text: str) -> list[int]:
    try:
        if "," in text:
            seeds = [int(s) for s in text.split(",") if s.strip()]
        else:
            count = int(text)
            if count < 1:
                raise ValueError
            seeds = list(range(count))
    except ValueError:
        raise typer.BadParameter(
            f"{text!r}: give a count S (seeds 0..S-1) or a comma-separated list such as 0,1,7",
            param_hint="--seeds",
        ) from None
    if len(set(seeds)) != len(seeds) or not seeds:
        raise typer.BadParameter(f"{text!r}: seeds must be distinct and non-empty", param_hint="--seeds")
    return seeds


def finetune_command(
    manifest: Path = typer.Option(
        ..., "--manifest", exists=True, dir_okay=False, help="Corpus manifest (Parquet/CSV/TSV) to train on."
    ),
    model: str = typer.Option(
        ..., "--model", help="Hub id (e.g. utter-project/mHuBERT-147) or local directory of the encoder."
    ),
    task: str = typer.Option(
        ..., "--task", help="gender, speaker (verification), or the name of any label column of the manifest."
    ),
    out: Path = typer.Option(..., "--out", help="Output directory (runs.parquet, finetune_config.json)."),
    n: int = typer.Option(
        ...,
        "--n",
        "-N",
        min=1,
        help="N: per class for classification tasks, utterances for speaker (as in matrix). Under torchrun "
        "write -N (torchrun's own parser mistakes --n for one of its options).",
    ),
    cells: str | None = typer.Option(
        None,
        "--cells",
        help="Cells to fine-tune, TARGET:DONOR comma-separated, e.g. en:es,en:de; `all` = every ordered pair "
        "of the manifest's languages.",
    ),
    conditions: str = typer.Option(
        "single,self,pair",
        "--conditions",
        help="Which runs per cell, comma-separated: single (monolingual: N of the target), self (2N of the "
        "target), pair (N of target + N of donor), zero_shot (N of the donor only, tested on the target), "
        "sequential (N of the donor, then adapt on N of the target). The CLTM needs single,self,pair; the "
        "emotion study uses single,zero_shot,sequential.",
    ),
    seeds: str = typer.Option("3", "--seeds", help="Seed count S (seeds 0..S-1) or a list like 0,1,7."),
    epochs: int = typer.Option(1, "--epochs", min=1, help="Passes over each training subset (published: 1)."),
    lr: float = typer.Option(
        1e-5, "--lr", min=0.0, help="AdamW learning rate, linear decay (published: 1e-5)."
    ),
    batch_size: int = typer.Option(1, "--batch-size", min=1, help="Utterances per step (published: 1)."),
    precision: str = typer.Option(
        "fp32", "--precision", help="fp32 (published) or bf16 (autocast; GPUs with bf16 support)."
    ),
    grad_clip: float = typer.Option(
        1.0, "--grad-clip", min=0.0, help="Gradient-norm clipping (published: 1.0; 0 turns it off)."
    ),
    peft: str = typer.Option(
        "none",
        "--peft",
        help="none (full fine-tune), lora (low-rank updates of --lora-targets), adapter (a bottleneck of "
        "--adapter-size on each feed-forward output), gating (sigmoid gates on each block's input) or "
        "weighted (weighted gating: softmax weights over the kept hidden states 0..K into the head).",
    ),
    lora_rank: int = typer.Option(8, "--lora-rank", min=1, help="--peft lora: rank r of the updates."),
    lora_alpha: float = typer.Option(
        16.0, "--lora-alpha", min=0.0, help="--peft lora: scaling alpha (updates are scaled by alpha/r)."
    ),
    lora_targets: str = typer.Option(
        ",".join(LORA_TARGET_MODULES),
        "--lora-targets",
        help="--peft lora: module names inside each block, comma-separated (default: attention q/k/v/out "
        "projections and the feed-forward's two layers).",
    ),
    adapter_size: int | None = typer.Option(
        None, "--adapter-size", min=1, help="--peft adapter: bottleneck width (default hidden size / 16)."
    ),
    patience: int = typer.Option(
        0,
        "--patience",
        min=0,
        help="Early stopping on the dev split: stop after this many epochs without a better dev UAR (then "
        "lower dev loss) and keep the best epoch's weights. Needs split=dev rows in every training language "
        "(never the test split) and --epochs > 1. 0 = off.",
    ),
    predictions: bool = typer.Option(
        False,
        "--predictions",
        help="Also write DIR/predictions.parquet: per test utterance and run the true and predicted label "
        "and the per-class scores (softmax), source=finetune (classification tasks).",
    ),
    eval_batch_size: int = typer.Option(
        1,
        "--eval-batch-size",
        min=1,
        help="Utterances per scoring batch. 1 is exact; larger is faster on a GPU, but group-norm models "
        "(HuBERT/wav2vec2 base) then see padding in their first conv.",
    ),
    embed_last_k: int = typer.Option(
        4, "--embed-last-k", min=1, help="Speaker task: embeddings = mean of the last K hidden states."
    ),
    from_matrix: Path | None = typer.Option(
        None,
        "--from-matrix",
        exists=True,
        file_okay=False,
        help="A `cltm matrix --out` directory: fine-tune its top cells instead of (or besides) --cells.",
    ),
    top: int = typer.Option(5, "--top", min=1, help="With --from-matrix: how many cells to take."),
    layer: str | None = typer.Option(
        None,
        "--layer",
        help="Cut the encoder after block K and put the head on hidden state K (0 = transformer input, as "
        "in extraction and the probes); default: the whole encoder. `best` (with --from-matrix): the layer "
        "with the best mean monolingual probe score. With --from-matrix, cells are ranked at this layer "
        "(default: the deepest).",
    ),
    by: str = typer.Option(
        "abs", "--by", help="With --from-matrix: abs (largest |CLTM|) or unstable (unstable, largest SE)."
    ),
    matrix_model: str | None = typer.Option(
        None, "--matrix-model", help="With --from-matrix: which model's matrix, when it holds several."
    ),
    matrix_probe: str | None = typer.Option(
        None, "--matrix-probe", help="With --from-matrix: which probe's matrix, when it holds several."
    ),
    model_name: str | None = typer.Option(
        None, "--model-name", help="Value of the `model` column (default: --model as given)."
    ),
    test_fraction: float = typer.Option(
        0.25, "--test-fraction", help="Test share of speakers when the manifest has no split (as in matrix)."
    ),
    device: str = typer.Option("auto", "--device", help="auto (GPU when there is one), cpu or cuda."),
    num_workers: int = typer.Option(0, "--num-workers", min=0, help="DataLoader workers decoding audio."),
    quiet: bool = typer.Option(False, "--quiet", help="No progress bar."),
) -> None:
    import polars as pl
    from rich.console import Console
    from rich.table import Table

    from cltm.finetune.peft_modes import PEFT_MODES
    from cltm.finetune.runner import (
        all_cells,
        best_layer,
        cells_from_matrix,
        parse_cells,
        parse_conditions,
        run_finetune,
    )
    from cltm.finetune.runs import FinetuneError, read_finetune_runs
    from cltm.finetune.train import PRECISIONS, TrainSettings

    if precision not in PRECISIONS:
        raise typer.BadParameter(
            f"{precision!r}: use one of {', '.join(PRECISIONS)}", param_hint="--precision"
        )
    if peft not in PEFT_MODES:
        raise typer.BadParameter(f"{peft!r}: use one of {', '.join(PEFT_MODES)}", param_hint="--peft")
    if device not in ("auto", "cpu", "cuda"):
        raise typer.BadParameter(f"{device!r}: use auto, cpu or cuda", param_hint="--device")
    if by not in ("abs", "unstable"):
        raise typer.BadParameter(f"{by!r}: use abs or unstable", param_hint="--by")
    if device == "cuda":
        import torch

        if not torch.cuda.is_available():
            raise fail("--device cuda: no CUDA device is visible (use --device cpu or auto)", EXIT_USAGE)
    from cltm.extract.models import check_local_model_path

    try:
        check_local_model_path(model)
    except FileNotFoundError as err:
        raise fail(f"--model: {err}", EXIT_USAGE) from None
    from cltm.corpus import read_manifest

    try:  # read once, here: an unreadable file is named instead of a polars traceback
        manifest_table = read_manifest(manifest)
    except (pl.exceptions.PolarsError, OSError) as err:
        raise fail(f"cannot read manifest {manifest}: {err}", EXIT_USAGE) from None
    except ValueError as err:  # ManifestError: the problems, with their rows
        raise fail(str(err), EXIT_USAGE) from None
    seed_values = _seeds(seeds)
    layer_value = _layer(layer, from_matrix)
    try:
        chosen_conditions = parse_conditions(conditions)
        if layer_value == "best":
            layer_value = best_layer(from_matrix, task=task, model=matrix_model, probe=matrix_probe)
            if not quiet:
                Console().print(f"best probed layer of {from_matrix}: {layer_value}")
        if cells is not None and cells.strip() == "all":
            chosen = all_cells(manifest_table["language"].drop_nulls().unique().to_list())
        else:
            chosen = parse_cells(cells) if cells else []
        if from_matrix is not None:
            for cell in cells_from_matrix(
                from_matrix,
                task=task,
                top=top,
                layer=layer_value,
                by=by,
                model=matrix_model,
                probe=matrix_probe,
            ):
                if cell not in chosen:
                    chosen.append(cell)
        if not chosen:
            raise typer.BadParameter(
                "name cells with --cells TARGET:DONOR,... or pick them with --from-matrix"
            )
        settings = TrainSettings(
            epochs=epochs,
            lr=lr,
            batch_size=batch_size,
            precision=precision,
            grad_clip=grad_clip,
            peft=peft,
            embed_last_k=embed_last_k,
            eval_batch_size=eval_batch_size,
            layer=layer_value,
            lora_rank=lora_rank,
            lora_alpha=lora_alpha,
            lora_targets=tuple(t.strip() for t in lora_targets.split(",") if t.strip()),
            adapter_size=adapter_size,
            patience=patience,
        )
        if patience and epochs < 2:
            raise typer.BadParameter(
                "early stopping compares epochs: give --epochs 2 or more", param_hint="--patience"
            )
        try:  # a corrupt earlier result in --out: name it instead of a polars traceback
            read_finetune_runs(out)
        except (pl.exceptions.PolarsError, OSError) as err:
            raise fail(
                f"{out}: its earlier runs (runs.parquet, runs.parts/) cannot be read ({err}); "
                "move them away or choose another --out",
                EXIT_USAGE,
            ) from None
        result = run_finetune(
            manifest_table,
            model,
            task,
            chosen,
            n=n,
            seeds=seed_values,
            out_dir=out,
            settings=settings,
            model_name=model_name,
            test_fraction=test_fraction,
            device=device,
            num_workers=num_workers,
            progress=not quiet,
            conditions=chosen_conditions,
            predictions=predictions,
        )
    except typer.BadParameter:
        raise
    except FinetuneError as err:  # a request that cannot run as asked: fix the command (exit 2)
        raise fail(str(err), EXIT_USAGE) from None
    except (ValueError, FileNotFoundError, OSError, ImportError) as err:
        raise fail(str(err), EXIT_FAILED) from None
    except Exception as err:  # audio errors carry the file; anything else still gets a clean line
        from cltm.audio import AudioError

        if isinstance(err, AudioError):
            raise fail(f"{err} (fix or remove that manifest row)", EXIT_FAILED) from None
        raise

    if not result.is_main_process:
        return
    console = Console()
    console.print(
        f"{result.ran} run(s) trained, {result.skipped} already done; {result.runs.height} run(s) in "
        f"{result.out_dir / 'runs.parquet'}"
    )
    if result.predictions is not None:
        console.print(
            f"{result.predictions.height} prediction(s) in {result.out_dir / 'predictions.parquet'}"
        )
    _print_cells(console, Table, result.runs, task)
    console.print(
        f"CLTM of these runs: cltm matrix --from-runs {result.out_dir / 'runs.parquet'} --task {task} "
        "--out DIR"
    )


def _print_cells(console, table_cls, runs, task: str) -> None:
    """Mean metric per condition, and the CLTM cells when every condition is there."""
    import polars as pl

    from cltm.tasks import get_task

    metric = get_task(task).default_metric
    if runs.height == 0 or metric not in runs.columns:
        return
    # classification also shows UAR (balanced accuracy), the usual emotion-recognition figure
    extra = [] if task == "speaker" or "uar" not in runs.columns else ["uar"]
    summary = (
        runs.filter(pl.col("task") == task)
        .group_by("probe", "layer", "target", "donor", "condition", maintain_order=True)
        .agg(
            pl.col(metric).mean().alias("mean"),
            pl.col(metric).std().alias("sd"),
            *(pl.col(c).mean().alias(c) for c in extra),
            pl.len().alias("seeds"),
        )
        .sort("probe", "layer", "target", "condition", "donor")
    )
    table = table_cls(title=f"fine-tuned {metric} (mean over seeds)")
    for column in ("probe", "layer", "condition", "target", "donor", "seeds", "mean", "sd", *extra):
        table.add_column(column)
    for row in summary.iter_rows(named=True):
        sd = "" if row["sd"] is None else f"{row['sd']:.3f}"
        table.add_row(
            row["probe"],
            str(row["layer"]),
            row["condition"],
            row["target"],
            row["donor"],
            str(row["seeds"]),
            f"{row['mean']:.3f}",
            sd,
            *("" if row[c] is None else f"{row[c]:.3f}" for c in extra),
        )
    console.print(table)
    try:
        from cltm.transfer.stats import matrix_from_runs

        matrices = matrix_from_runs(runs.filter(pl.col("task") == task))
    except Exception:  # the summary above is the essential output; the CLTM is a convenience here
        return
    cells = matrices.filter(pl.col("target") != pl.col("donor"))
    if cells.height:
        table = table_cls(title="fine-tuned CLTM cells")
        for column in ("probe", "target", "donor", "cltm", "se", "unstable"):
            table.add_column(column)
        for row in cells.iter_rows(named=True):
            fmt = lambda v: "" if v is None else f"{v:.3f}"  # noqa: E731
            table.add_row(
                row["probe"],
                row["target"],
                row["donor"],
                fmt(row["cltm"]),
                fmt(row["cltm_se"]),
                str(row["unstable"]),
            )
        console.print(table)


def register(app: typer.Typer) -> None:
    app.command("finetune", help=HELP, short_help="Fine-tune chosen CLTM cells (full or PEFT).")(
        finetune_command
    )

"""Step time of token-selective SFT against plain TRL ``SFTTrainer``, side by side in one run.

Writes the `sft` section of docs/benchmarks.md. Every trainer gets the same rows, tokenised the same
way (plain TRL gets ``input_ids`` + ``completion_mask``: TRL's completion-only SFT on exactly our
tokens), the same initial model, batches and settings. The trainers take turns, in rounds whose order
alternates, so drift of a shared machine hits them alike; the figure is the median step time over
every measured step (the first ``--warmup`` steps of each run are dropped).

The ``critical`` spans come from ``--annotated DIR`` (a ``cft-rl annotate --out`` folder) when given;
otherwise each solution's number spans stand in for them. A step costs the same whichever tokens are
selected: the forward scores every completion token either way (for the metrics), so only the count
of selected tokens could matter, and it does not enter the cost. The ``entropy`` strategy's one-off
scoring pass (a forward over the whole dataset with the base model) is timed on its own.

    python scripts/bench_sft.py --model DIR [--steps 10] [--rounds 8] [--batch-size 16] [--no-write]
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch
from transformers import TrainerCallback
from trl import SFTConfig, SFTTrainer

from cft_rl.cpu import QUIET_CPU_RUN
from cft_rl.reports import alternating, markdown_table, write_section
from cft_rl.sft.prepare import prepare_dataset
from cft_rl.sft.run import load_sft_dataset
from cft_rl.sft.selection import numeric_spans
from cft_rl.sft.trainer import SelectiveSFTConfig, SelectiveSFTTrainer
from cft_rl.toy.build import load_toy

VARIANTS = ("trl", "full", "critical", "critical+dft")


class StepTimer(TrainerCallback):
    """CPU and wall time of each optimizer step (forward, backward, optimizer step).

    CPU time is the figure compared: on a machine shared with other jobs, wall time also measures
    how often the scheduler preempted us, and that noise is larger than the 3% being checked.
    """

    def __init__(self):
        self.cpu: list[float] = []
        self.wall: list[float] = []

    def on_step_begin(self, args, state, control, **kwargs):
        self._start = (time.process_time(), time.perf_counter())

    def on_step_end(self, args, state, control, **kwargs):
        self.cpu.append(time.process_time() - self._start[0])
        self.wall.append(time.perf_counter() - self._start[1])


def _settings(args, out: str) -> dict:
    return dict(
        output_dir=out,
        per_device_train_batch_size=args.batch_size,
        max_steps=args.steps + args.warmup,
        learning_rate=1e-4,
        logging_steps=args.steps + args.warmup,
        **QUIET_CPU_RUN,
        max_length=None,
        seed=0,
        disable_tqdm=True,
    )


def _trainer(variant: str, model, tokenizer, prepared, args, out: str):
    if variant == "trl":
        rows = prepared.remove_columns(["loss_weights", "labels"])  # TRL builds its completion-only labels
        config = SFTConfig(**_settings(args, out), completion_only_loss=True)
        return SFTTrainer(copy.deepcopy(model), args=config, train_dataset=rows, processing_class=tokenizer)
    strategy, _, loss = variant.partition("+")
    config = SelectiveSFTConfig(**_settings(args, out), strategy=strategy, loss_type=loss or "nll")
    return SelectiveSFTTrainer(
        copy.deepcopy(model), args=config, train_dataset=prepared, processing_class=tokenizer
    )


def _rows(args, data):
    n = args.batch_size * (args.steps + args.warmup)
    if args.annotated:
        return load_sft_dataset(args.annotated, "train").select(range(n))
    rows = data["train"].select(range(n))
    return rows.add_column("critical_spans", [[list(s) for s in numeric_spans(r)] for r in rows["solution"]])


def _time_variants(args, model, tokenizer, rows) -> dict[str, dict[str, list[float]]]:
    prepared = {}
    for variant in VARIANTS:
        strategy = "full" if variant == "trl" else variant.partition("+")[0]
        config = SelectiveSFTConfig(
            output_dir="unused", strategy=strategy, use_cpu=True, bf16=False, max_length=None
        )
        prepared[variant], _ = prepare_dataset(rows, tokenizer, config)
    times = {variant: {"cpu": [], "wall": []} for variant in VARIANTS}
    for _, variant in alternating(list(VARIANTS), args.rounds):
        trainer = _trainer(variant, model, tokenizer, prepared[variant], args, f"{args.scratch}/{variant}")
        timer = StepTimer()
        trainer.add_callback(timer)
        trainer.train()
        times[variant]["cpu"].append(timer.cpu[args.warmup :])
        times[variant]["wall"].append(timer.wall[args.warmup :])
    return times


TABLE_HEADER = [
    "trainer",
    "steps",
    "CPU / step",
    "vs trl",
    "fastest CPU step",
    "vs trl",
    "wall / step",
    "vs trl",
]


def _table(times) -> tuple[list[list], float]:
    """Table rows (medians, paired ratios, fastest steps) and the median `trl` wall step in ms."""

    def paired(name: str, kind: str) -> float:
        ratios = [
            statistics.median(ours) / statistics.median(base)
            for ours, base in zip(times[name][kind], times["trl"][kind], strict=True)
        ]
        return statistics.median(ratios) - 1

    def flat(name: str, kind: str) -> list[float]:
        return [t for run in times[name][kind] for t in run]

    fastest_trl = min(flat("trl", "cpu"))
    rows = []
    for name in times:
        cpu, wall, fastest = (
            statistics.median(flat(name, "cpu")),
            statistics.median(flat(name, "wall")),
            min(flat(name, "cpu")),
        )
        rows.append(
            [name, len(flat(name, "cpu")), f"{cpu * 1000:.1f} ms", f"{paired(name, 'cpu'):+.1%}"]
            + [f"{fastest * 1000:.1f} ms", f"{fastest / fastest_trl - 1:+.1%}"]
            + [f"{wall * 1000:.1f} ms", f"{paired(name, 'wall'):+.1%}"]
        )
    return rows, statistics.median(flat("trl", "wall")) * 1000


def _entropy_cost(args, model, tokenizer, rows) -> tuple[float, int]:
    config = SelectiveSFTConfig(
        output_dir="unused",
        strategy="entropy",
        use_cpu=True,
        bf16=False,
        max_length=None,
        entropy_batch_size=32,
    )
    _, summary = prepare_dataset(rows, tokenizer, config, scoring_model=model)
    return summary["entropy_scoring_seconds"], summary["rows"]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", required=True, help="a toy build folder (cft-rl toy build --out DIR)")
    parser.add_argument("--annotated", default=None, help="a cft-rl annotate --out folder for real spans")
    parser.add_argument("--steps", type=int, default=10, help="measured steps per run")
    parser.add_argument("--warmup", type=int, default=2, help="steps dropped at the start of each run")
    parser.add_argument("--rounds", type=int, default=8, help="runs of each trainer, in alternating order")
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads (fixed for stable timings)")
    parser.add_argument("--raw", default=None, help="write every step time (per trainer, per round) here")
    parser.add_argument("--no-write", action="store_true", help="print only; leave docs/benchmarks.md alone")
    args = parser.parse_args()
    args.scratch = tempfile.mkdtemp(prefix="bench_sft-")  # the trainers' output_dir (nothing is saved)
    torch.set_num_threads(args.threads)
    # As in the toy build: float32 denormals (tiny gradients, Adam moments) run ~100x slower on x86
    # CPUs, which would make a step's cost depend on *which* tokens were trained (measured here: +5%
    # for `critical` with them, -3% without). GPUs pay nothing for them; this bench measures the trainer.
    torch.set_flush_denormal(True)
    model, tokenizer, data = load_toy(args.model)
    rows = _rows(args, data)
    load_before = os.getloadavg()[0]
    times = _time_variants(args, model, tokenizer, rows)
    load = f"machine load average {load_before:.1f} at the start, {os.getloadavg()[0]:.1f} at the end"
    if args.raw:
        Path(args.raw).write_text(json.dumps(times))
    table, base_ms = _table(times)
    scoring_s, scored = _entropy_cost(args, model, tokenizer, rows)
    body = (
        "## SFT: step time of token-selective SFT against plain TRL\n\n"
        f"Step time on the toy model ({sum(p.numel() for p in model.parameters()) / 1e6:.2f} M parameters), "
        f"batch {args.batch_size}, float32 (denormals flushed), {args.threads} torch thread(s), "
        f"{args.rounds} alternating rounds "
        f"of {args.steps} measured steps per trainer. `trl` is plain `SFTTrainer` (completion-only loss) "
        f"on the same tokens; the others are `SelectiveSFTTrainer` with that strategy. Target: "
        f"`critical` within +3% of `trl` in CPU time (wall time on a shared machine also counts the "
        f"other jobs' preemptions). *vs trl*: median over rounds of the within-round ratio of median "
        f"step times (paired, so drift between rounds cancels); *fastest*: the least CPU time of any "
        f"step (contention only adds time, so this estimates the uncontended cost). During the run: {load}."
        "\n\n"
        + markdown_table(TABLE_HEADER, table)
        + f"\n\n`entropy` scoring, one-off before training: {scoring_s:.2f} s for {scored} rows "
        f"({scoring_s / scored * 1000:.1f} ms per row, {scoring_s * 1000 / base_ms:.1f} median `trl` steps)."
    )
    shutil.rmtree(args.scratch, ignore_errors=True)
    print(body)
    if not args.no_write:
        write_section("sft", body, "python " + " ".join(sys.argv))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

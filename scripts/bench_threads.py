"""Step time of a toy-GRPO-like torch workload under contention: every core's threads against fitted ones.

Writes the `threads` section of docs/benchmarks.md (issue 17). The workload is one GRPO step's torch
work on the toy model's shape (a randomly initialised Qwen2 of ``ToyBuildConfig``'s default sizes):
sample ``--batch`` completions of ``--completion-len`` tokens, then a forward and backward over the
whole sequences and an AdamW step. One model, in one process, runs three arms (``torch.set_num_threads``
between them, as the pipeline does for an in-process stage):

    idle        every core's threads, no competitor (the uncontended reference)
    contended   every core's threads, while ``--busy`` busy-loop processes each take a core
    fitted      the threads ``threads: auto`` picks (cft_rl.cpu.fit_threads of measure_load, measured
                with the competitors running), under the same competitors

Arms take turns in rounds whose order rotates, so drift of a shared machine hits them alike; the
figure is the median step time over every measured step (each arm's first step of a round is a dropped
warm-up).

    python scripts/bench_threads.py [--rounds 3] [--steps 3] [--busy 1] [--no-write]
    python scripts/bench_threads.py --batch 8 --completion-len 8 --steps 1 --rounds 1 --no-write  # smoke
"""

from __future__ import annotations

import argparse
import multiprocessing
import os
import statistics
import sys
import time

from cft_rl.cpu import fit_threads, measure_load, usable_cores
from cft_rl.reports import bench_command, markdown_table, write_section

# --- the workload ----------------------------------------------------------------------------------


def toy_shaped_model(args):
    """A randomly initialised Qwen2 of the toy's shape, its optimizer, and fixed random prompts."""
    import torch
    from transformers import Qwen2Config, Qwen2ForCausalLM

    torch.manual_seed(0)
    config = Qwen2Config(
        vocab_size=args.vocab,
        hidden_size=args.hidden,
        intermediate_size=3 * args.hidden,
        num_hidden_layers=args.layers,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=1024,
        tie_word_embeddings=True,
    )
    model = Qwen2ForCausalLM(config)
    prompts = torch.randint(1, args.vocab, (args.batch, args.prompt_len))
    return model, torch.optim.AdamW(model.parameters(), lr=1e-3), prompts


def grpo_like_step(args, model, optimizer, prompts) -> dict:
    """One step: sample completions, then forward, backward and AdamW over them; seconds of each half."""
    import torch
    from transformers import GenerationConfig

    sampling = GenerationConfig(
        do_sample=True, max_new_tokens=args.completion_len, eos_token_id=None, pad_token_id=0
    )
    start = time.perf_counter()
    model.eval()
    with torch.no_grad():
        sequences = model.generate(prompts, generation_config=sampling)
    generated = time.perf_counter()
    model.train()
    logits = model(sequences).logits[:, args.prompt_len - 1 : -1]
    logp = torch.log_softmax(logits, -1).gather(-1, sequences[:, args.prompt_len :, None])
    advantages = torch.randn(args.batch, 1, 1)  # stands in for the group-normalised rewards
    (-(logp * advantages).mean()).backward()
    optimizer.step()
    optimizer.zero_grad()
    return {"generate": generated - start, "train": time.perf_counter() - generated}


# --- the arms --------------------------------------------------------------------------------------


def _spin(parent: int) -> None:
    """A competitor: one core kept busy in pure Python, until told to stop or its parent is gone."""
    while os.getppid() == parent:
        for _ in range(1_000_000):
            pass


def _competitors(count: int) -> list[multiprocessing.Process]:
    procs = [multiprocessing.Process(target=_spin, args=(os.getpid(),), daemon=True) for _ in range(count)]
    for p in procs:
        p.start()
    time.sleep(0.5)  # let them take their cores before anything is measured
    return procs


def bench(args) -> tuple[dict[str, list[dict]], dict[str, list[float]], list[int]]:
    """Step times per arm over the rounds, the busy cores measured before each arm's run, and the
    threads ``auto`` picked for each fitted run."""
    import torch

    from cft_rl.cpu import cpu_float_math

    cores = usable_cores()
    model, optimizer, prompts = toy_shaped_model(args)
    arms = ["idle", "contended", "fitted"]
    times: dict[str, list[dict]] = {name: [] for name in arms}
    busy: dict[str, list[float]] = {name: [] for name in arms}
    fitted: list[int] = []
    with cpu_float_math():  # the jobs' float settings
        for round_ in range(args.rounds):
            for name in arms[round_ % 3 :] + arms[: round_ % 3]:
                competitors = _competitors(args.busy) if name != "idle" else []
                try:
                    load = measure_load()  # every arm: the machine may have other jobs than ours
                    busy[name].append(load.busy)
                    threads = cores
                    if name == "fitted":  # what `threads: auto` would pick right now
                        threads = fit_threads(load.cores, load.busy)
                        fitted.append(threads)
                    torch.set_num_threads(threads)
                    grpo_like_step(args, model, optimizer, prompts)  # warm-up: caches at this thread count
                    times[name] += [
                        grpo_like_step(args, model, optimizer, prompts) for _ in range(args.steps)
                    ]
                    print(f"round {round_ + 1}/{args.rounds}: {name}, {threads} threads", file=sys.stderr)
                finally:
                    for p in competitors:
                        p.terminate()
                        p.join()
    return times, busy, fitted


def describe(args, times: dict[str, list[dict]], busy: dict[str, list[float]], fitted: list[int]) -> str:
    cores = usable_cores()
    threads = {"idle": str(cores), "contended": str(cores), "fitted": "/".join(map(str, sorted(set(fitted))))}
    idle = statistics.median(t["generate"] + t["train"] for t in times["idle"])
    rows = []
    for name, steps in times.items():
        total = statistics.median(t["generate"] + t["train"] for t in steps)
        rows.append(
            [
                name,
                "none" if name == "idle" else f"{args.busy} busy loop(s)",
                f"{min(busy[name]):.1f}-{max(busy[name]):.1f}",
                threads[name],
                f"{total:.2f}",
                f"{statistics.median(t['generate'] for t in steps):.2f}",
                f"{statistics.median(t['train'] for t in steps):.2f}",
                f"{max(t['generate'] + t['train'] for t in steps):.2f}",
                f"{total / idle:.2f}x",
            ]
        )
    header = [
        "arm",
        "competitor",
        "busy cores seen",
        "threads",
        "step (s)",
        "generate (s)",
        "train (s)",
        "slowest (s)",
        "vs idle",
    ]
    return (
        "## Threads under contention: every core against fitted threads\n\n"
        f"A GRPO step's torch work on the toy shape (random Qwen2, vocab {args.vocab}, hidden {args.hidden}, "
        f"{args.layers} layer(s)): {args.batch} sampled completions of {args.completion_len} tokens after "
        f"{args.prompt_len}-token prompts, then forward, backward and AdamW over them; float32, denormals "
        f"flushed. One process, `torch.set_num_threads` per arm; {args.rounds} rotating round(s) of "
        f"{args.steps} measured steps; medians over every step. *fitted* runs with what `threads: auto` picks "
        f"with the competitors running. *busy cores seen*: `measure_load` before each run, of {cores} "
        "cores (the competitors and any other job on the machine; an *idle* arm above 0.3 was not idle). "
        "Fewer threads than cores changes float reduction order only: results stay seed-comparable, not "
        "bitwise identical.\n\n" + markdown_table(header, rows)
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3, help="runs of each arm, in rotating order")
    parser.add_argument("--steps", type=int, default=3, help="measured steps per run (after one warm-up)")
    parser.add_argument("--busy", type=int, default=1, help="competing busy-loop processes (cores taken)")
    parser.add_argument("--vocab", type=int, default=512)
    parser.add_argument("--hidden", type=int, default=128)
    parser.add_argument("--layers", type=int, default=2)
    parser.add_argument("--batch", type=int, default=64, help="completions per step (toy demo: 8 x 8)")
    parser.add_argument("--prompt-len", type=int, default=32)
    parser.add_argument("--completion-len", type=int, default=128)
    parser.add_argument("--no-write", action="store_true", help="print only; leave docs/benchmarks.md alone")
    args = parser.parse_args(argv)
    body = describe(args, *bench(args))
    print(body)
    if not args.no_write:
        command = bench_command("scripts/bench_threads.py", argv)
        write_section("threads", body, command)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

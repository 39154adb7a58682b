"""CPU float settings for the toy world's training and decoding."""

from __future__ import annotations

import contextlib

import torch


@contextlib.contextmanager
def cpu_float_math(threads: int | None = None):
    """Float32 denormals flushed to zero, and optionally a fixed thread count, restored on exit.

    Small models on CPU produce denormals all the time: Adam's second moments of tiny gradients, SiLU
    of very negative inputs, near-zero attention weights. x86 CPUs run arithmetic on them ~100x slower
    (measured here: a 4096x160x480 product, 15 ms -> 1.5 s; critical-token annotation of the toy model,
    17.3 s -> 5.9 s). Flushing them changes nothing a model can learn or predict. Both settings are
    process-wide, so they are restored: left on, flushing breaks code that relies on subnormals
    (hypothesis refuses to run, for one). A fixed thread count makes reductions reproducible.
    """
    previous_threads = torch.get_num_threads()
    if threads is not None:
        torch.set_num_threads(threads)
    torch.set_flush_denormal(True)
    try:
        yield
    finally:
        torch.set_flush_denormal(False)  # torch's default; it offers no getter to restore from
        torch.set_num_threads(previous_threads)


# Trainer settings shared by the CPU tests and benchmarks: no checkpoints, no trackers, float32
# (no bf16 on these CPUs' fast paths), no recomputation. Spread into a TRL config: ``**QUIET_CPU_RUN``.
QUIET_CPU_RUN = dict(
    save_strategy="no",
    report_to="none",
    use_cpu=True,
    bf16=False,
    gradient_checkpointing=False,
)

"""Benchmark records and dataset loaders, and the shared prompt: ``from cft_rl.data import load_benchmark``.

``benchmarks`` knows each benchmark's fields and gold answers; ``datasets`` reads files into records;
``prompts`` is the prompt and tokenisation contract every stage shares.
"""

from cft_rl import lazy_exports

_EXPORTS = {
    **dict.fromkeys(("BENCHMARKS", "PAPER_SUITE", "BenchmarkSpec", "RowError"), "cft_rl.data.benchmarks"),
    **dict.fromkeys(("BOXED_INSTRUCTION", "build_prompt", "encode_example"), "cft_rl.data.prompts"),
    **dict.fromkeys(
        (
            "FEATURES",
            "DataError",
            "load_benchmark",
            "load_math_dataset",
            "read_benchmark_records",
            "resolve_data_root",
        ),
        "cft_rl.data.datasets",
    ),
}
__all__ = sorted(_EXPORTS)
__getattr__ = lazy_exports(__name__, _EXPORTS)

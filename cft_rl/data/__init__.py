"""Benchmark records and dataset loaders, and the shared prompt: ``from cft_rl.data import load_benchmark``.

``benchmarks`` knows each benchmark's fields and gold answers; ``datasets`` reads files into records.
"""

from cft_rl import lazy_exports

_EXPORTS = {
    **dict.fromkeys(("BENCHMARKS", "PAPER_SUITE", "BenchmarkSpec", "RowError"), "cft_rl.data.benchmarks"),
    **dict.fromkeys(
        (
            "FEATURES",
            "DataError",
            "build_prompt",
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

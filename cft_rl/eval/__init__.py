"""Offline evaluation: batched sampling, the `cft-rl eval` job and its result tables."""

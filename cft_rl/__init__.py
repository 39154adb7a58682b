"""cft_rl: critical-token SFT warm-starts and GRPO for math reasoning, on Hugging Face TRL."""

__version__ = "0.1.0"

"""GRPO from a warm start: the exploration and entropy metrics, the monitored trainer, and the job."""

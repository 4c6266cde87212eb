# The two commands the README names: `make demo` (set up + main job) and `make test`.
# Set-up is idempotent: a venv in .venv, the CPU build of torch unless a torch is already there
# (GPU users install their CUDA build into .venv first, see README), then this package.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
TORCH_SPEC ?= torch==2.13.0

.PHONY: setup demo data data-quality test test-fast lint format bench results results-quality clean
SL := $(VENV)/bin/streamloco

$(VENV)/.installed: pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -c "import torch" 2>/dev/null || $(PY) -m pip install -q "$(TORCH_SPEC)"
	$(PY) -m pip install -q -e ".[demo,dev,hf]"
	touch $@

setup: $(VENV)/.installed

# The demo corpus, tokenizer and shards are files: make builds only what is missing
# (`rm -rf data` rebuilds all; an interrupted tokenization resumes where it stopped).
data/demo/demo_corpus.json: | setup
	$(SL) data demo data/demo

data/tokenizer/demo.model: data/demo/demo_corpus.json
	$(SL) tokenizer train --config configs/demo.toml

data/shards/manifest.json: data/tokenizer/demo.model
	@# finished shards older than the tokenizer are stale: start over (a partial run resumes)
	if [ -f $@ ]; then rm -rf data/shards; fi
	$(SL) data tokenize --config configs/demo.toml

data: setup data/shards/manifest.json
	$(SL) tokenizer report --config configs/demo.toml

# The quality bench's smaller tokenizer (2048 pieces) and its shards, from the same corpus.
data/tokenizer/quality.model: data/demo/demo_corpus.json
	$(SL) tokenizer train --config configs/quality.toml

data/shards-quality/manifest.json: data/tokenizer/quality.model
	if [ -f $@ ]; then rm -rf data/shards-quality; fi
	$(SL) data tokenize --config configs/quality.toml

data-quality: setup data/shards-quality/manifest.json

# Each demo run gets its own run directory (a second `make demo` must not trip over the first).
demo: data
	$(SL) train --config configs/demo.toml --run.name=demo-$$(date +%Y%m%d-%H%M%S)

# The Streaming DiLoCo comparison of docs/results.md (~50 min on 2 cores; `--preset quick` ~10).
results: data
	$(SL) bench --preset default

# Enough outer rounds to mean something: 150 at H=30, 22 tokens per parameter (~1 h on 2 cores).
results-quality: data-quality
	$(SL) bench --preset quality

# The full suite (what CI runs): lint, then tests/unit and tests/integration (real local Ray).
test: setup
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/pytest

# Day-to-day: tests/unit without the slow ones; no Ray, no subprocess CLI runs (about 4 min).
test-fast: setup
	$(VENV)/bin/pytest tests/unit -m "not slow" -q

lint: setup
	$(VENV)/bin/ruff check .

format: setup
	$(VENV)/bin/ruff format .
	$(VENV)/bin/ruff check --fix .

bench: setup
	$(PY) benchmarks/bench_codecs.py
	$(PY) benchmarks/bench_fertility.py
	$(PY) benchmarks/bench_data.py
	$(PY) benchmarks/bench_wire_bytes.py
	$(PY) benchmarks/bench_outer_apply.py
	$(PY) benchmarks/bench_overlap.py

clean:
	rm -rf $(VENV) runs .pytest_cache .ruff_cache

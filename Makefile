# minigpt: every target sets up .venv by itself on a fresh clone.
PYTHON ?= python3
# A local CPU build on our machines; set TORCH= to skip, or e.g. TORCH="torch==2.5.1" elsewhere.
TORCH ?= torch==2.13.0
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
EXPORT := $(BIN)/nbdev-export

.PHONY: install export sync-check test test-no-bf16 stale execute pdf demo clean

install: $(STAMP)

$(STAMP): pyproject.toml Makefile
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	# torch first when absent: `pip install -e .` alone may pick a multi-GB CUDA build
	$(BIN)/python -c "import torch" 2>/dev/null || test -z "$(TORCH)" || \
		$(BIN)/python -m pip install --quiet "$(TORCH)"
	$(BIN)/python -m pip install --quiet -e ".[dev]"
	# nbdev-export imports tools/nbdev_modules.py (pyproject's export_procs): the root on the path
	$(BIN)/python -c "import pathlib, sysconfig; \
		pathlib.Path(sysconfig.get_paths()['purelib'], 'minigpt-root.pth').write_text('$(CURDIR)\n')"
	touch $(STAMP)

export: $(STAMP)
	$(EXPORT)

# The package must be exactly what the notebooks export, and the notebooks must be clean.
sync-check: $(STAMP)
	$(EXPORT)
	$(BIN)/nbdev-clean
	@if [ -n "$$(git status --porcelain)" ]; then \
		echo "sync-check: the notebooks and the package (or the working tree) differ:"; \
		git status --porcelain; \
		echo "run 'make export' and commit the notebooks with the generated modules"; \
		exit 1; \
	fi
	@echo "sync-check: notebooks and package agree"

test: $(STAMP)
	$(EXPORT)
	$(BIN)/nbdev-test --n-workers 2 --timing
	$(BIN)/python -m pytest -q

# The same tests as on a CPU without bf16 units (most laptops), whatever this CPU has.
test-no-bf16: $(STAMP)
	$(EXPORT)
	MINIGPT_CPU_BF16=0 $(BIN)/nbdev-test --n-workers 2 --timing
	MINIGPT_CPU_BF16=0 $(BIN)/python -m pytest -q

# The notebooks whose saved outputs come from older code than the current (exit 1 if any).
stale: $(STAMP)
	$(EXPORT)
	$(BIN)/python tools/stale.py

# Re-executes the stale notebooks; NBS=--all all of them, or NBS="nbs/03_loader.ipynb ..."
execute: $(STAMP)
	$(EXPORT)
	$(BIN)/python tools/execute_nbs.py $(NBS)

pdf: $(STAMP)
	$(BIN)/python book/build.py

# From a fresh clone to generated text: prepare the default corpus, train for three minutes
# with the schedule fitted to them (or reuse the run in runs/cpu), print the validation bits
# per byte, then stream a continuation of a prompt. The model is the CPU preset at half width
# and half context, with small batches: in three minutes of a laptop CPU, many small steps
# of a small model reach a lower loss than a few large steps of the preset.
DEMO_TIME ?= 180
demo: $(STAMP)
	test -f data/shakespeare/meta.json || $(BIN)/minigpt prepare --corpus shakespeare \
		--vocab-size 4096 --out data/shakespeare
	test -f runs/cpu/best.safetensors || $(BIN)/minigpt train --data data/shakespeare --preset cpu \
		--set d_model=128 --set block_size=128 --batch-size 8 --lr 3e-3 \
		--out runs/cpu --max-time $(DEMO_TIME) --fit-max-time
	$(BIN)/minigpt generate --run runs/cpu --prompt "ROMEO:" --max-new-tokens 200 --seed 0

clean:
	rm -rf book/_build build dist *.egg-info .pytest_cache _docs _proc
	find . -name __pycache__ -not -path "./$(VENV)/*" -prune -exec rm -rf {} +

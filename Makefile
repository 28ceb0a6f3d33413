# cheers_pl — every target installs what it needs into a local virtual environment first.
# Stage targets take EXP=<experiment> (conf/experiment/<name>.yaml) and ARGS="key=value ...".
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
ARGS ?=
PYTEST_ARGS ?=
# one pytest process per core, one thread each (two 2-thread torch processes on 2 cores slow each other down);
# a test file stays in one process, so its module fixtures are built once
PYTEST_WORKERS ?= 2

.DEFAULT_GOAL := help
.PHONY: help install test demo demo-scratch tokenizer-checkpoint data-synthetic train-tokenizer train-align train-generation evaluate ablate bench \
        tensorboard lint clean

help: ## list the targets
	@echo "usage: make <target> [EXP=<experiment>] [ARGS=\"key=value ...\"]"
	@grep -E '^[a-zA-Z_-]+:.*## ' $(MAKEFILE_LIST) | awk 'BEGIN {FS = ":.*## "}; {printf "  %-18s %s\n", $$1, $$2}'

$(VENV)/.installed: requirements.txt pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(VENV)/bin/pip install --quiet --disable-pip-version-check -r requirements.txt
	$(VENV)/bin/pip install --quiet --disable-pip-version-check --no-deps -e .
	touch $@

install: $(VENV)/.installed ## create .venv and install the pinned requirements + this package

test: install ## run the test suite (fast and slow; GPU tests skip without a GPU) in PYTEST_WORKERS processes
	OMP_NUM_THREADS=1 $(PY) -m pytest -q -n $(PYTEST_WORKERS) --dist loadfile $(PYTEST_ARGS)

lint: install ## ruff check + format check
	$(VENV)/bin/ruff check cheers_pl tests && $(VENV)/bin/ruff format --check cheers_pl tests

DEMO_REPORT ?= runs/demo/report
DEMO_TRAIN_ARGS ?=
DEMO_EVAL_ARGS ?= per_category=16 images_per_prompt=2 max_vqa=512 max_recon=256 max_retrieval=256
SHARDS := data/shards/synthetic/manifest.json
# the committed tiny tokenizer (VAE, D, encoder, text tower), made by `make tokenizer-checkpoint`
TOKENIZER_DIR := checkpoints/tiny_tokenizer
ALIGN_CKPT := runs/tiny_align/checkpoints/last.ckpt
GENERATION_CKPT := runs/tiny_generation/checkpoints/last.ckpt

# The demo's steps are file targets: a stage whose checkpoint is newer than its input is not trained again
# (`make clean` starts over).
$(SHARDS): | $(VENV)/.installed
	$(PY) -m cheers_pl make-shards experiment=tiny_data
$(ALIGN_CKPT): $(SHARDS) $(TOKENIZER_DIR)/model.safetensors
	$(PY) -m cheers_pl train experiment=tiny_align $(DEMO_TRAIN_ARGS)
$(GENERATION_CKPT): $(ALIGN_CKPT)
	$(PY) -m cheers_pl train experiment=tiny_generation $(DEMO_TRAIN_ARGS)

demo: install $(GENERATION_CKPT) ## the main job: shards -> align -> generation (from the committed tokenizer) -> evaluate -> report
	$(PY) -m cheers_pl evaluate ckpt=$(GENERATION_CKPT) out_dir=$(DEMO_REPORT) $(DEMO_EVAL_ARGS)
	@echo "demo report: $(DEMO_REPORT)/report.md (TensorBoard: make tensorboard)"

# Every stage from scratch (the tokenizer too, at the demo's short budget) in runs/scratch.
SCRATCH := runs/scratch
demo-scratch: install $(SHARDS) ## every stage from scratch: tokenizer -> align -> generation -> evaluate (runs/scratch)
	$(PY) -m cheers_pl train experiment=tiny_tokenizer output_root=$(SCRATCH) $(DEMO_TRAIN_ARGS)
	$(PY) -m cheers_pl train experiment=tiny_align output_root=$(SCRATCH) \
		stage.init_from=$(SCRATCH)/tiny_tokenizer/checkpoints/last.ckpt $(DEMO_TRAIN_ARGS)
	$(PY) -m cheers_pl train experiment=tiny_generation output_root=$(SCRATCH) \
		stage.init_from=$(SCRATCH)/tiny_align/checkpoints/last.ckpt $(DEMO_TRAIN_ARGS)
	$(PY) -m cheers_pl evaluate ckpt=$(SCRATCH)/tiny_generation/checkpoints/last.ckpt out_dir=$(SCRATCH)/report \
		$(DEMO_EVAL_ARGS)
	@echo "scratch report: $(SCRATCH)/report/report.md"

# The long tokenizer recipe behind $(TOKENIZER_DIR): the VAE alone, then the encoder and text tower contrastively at
# batch 256 on clean images (D = the VAE decoder's copy); then the export (figures in $(TOKENIZER_DIR)/card.json).
RECIPE := runs/recipe
tokenizer-checkpoint: install $(SHARDS) ## the long tokenizer recipe (2 phases, ~3 h on 2 cores) -> checkpoints/tiny_tokenizer
	$(PY) -m cheers_pl train experiment=tiny_tokenizer_vae output_root=$(RECIPE) $(ARGS)
	$(PY) -m cheers_pl train experiment=tiny_tokenizer_encoder output_root=$(RECIPE) $(ARGS)
	$(PY) -m cheers_pl export-tokenizer ckpt=$(RECIPE)/tiny_tokenizer_encoder/checkpoints/last.ckpt \
		out_dir=$(TOKENIZER_DIR)

data-synthetic: install ## write the synthetic world as train/val/test shards + manifest (EXP=tiny_data)
	$(PY) -m cheers_pl make-shards experiment=$(or $(EXP),tiny_data) $(ARGS)

train-tokenizer: install ## stage 1: train the unified vision tokenizer (EXP=tiny_tokenizer)
	$(PY) -m cheers_pl train experiment=$(or $(EXP),tiny_tokenizer) $(ARGS)

train-align: install ## stage 2: understanding alignment (EXP=tiny_align)
	$(PY) -m cheers_pl train experiment=$(or $(EXP),tiny_align) $(ARGS)

train-generation: install ## stage 3: joint cascaded generation (EXP=tiny_generation)
	$(PY) -m cheers_pl train experiment=$(or $(EXP),tiny_generation) $(ARGS)

evaluate: install ## GenEval-style, VQA and reconstruction evaluation of a checkpoint (ARGS="ckpt=...")
	$(PY) -m cheers_pl evaluate $(ARGS)

ablate: install ## the paper's ablations at an equal budget -> runs/ablations/ablations.md + .png (needs train-tokenizer)
	$(PY) -m cheers_pl ablate $(ARGS)

bench: install ## speed / memory benchmarks -> bench.json + bench.md
	$(PY) -m cheers_pl bench $(ARGS)

tensorboard: install ## serve the TensorBoard logs under runs/
	$(VENV)/bin/tensorboard --logdir runs --bind_all

clean: ## remove runs, shards and caches (keeps .venv)
	rm -rf runs data/shards .pytest_cache .ruff_cache
	find . -name __pycache__ -type d -prune -not -path "./$(VENV)/*" -exec rm -rf {} +

# The README's commands. Each sets libtorch up itself (scripts/setup-libtorch.sh):
# LIBTORCH if set, else a cached venv with torch==2.11.0 from PyPI.
SHELL := /bin/bash
.SHELLFLAGS := -eu -o pipefail -c
SETUP := setup_env="$$(scripts/setup-libtorch.sh)" && eval "$$setup_env"
CONFIG ?= configs/gru-scratch.toml
ARGS ?=

# The Time Machine: data/ (downloaded on first use, SHA-1 checked), unless a
# developer's shared copy is next to the checkout.
GRULM_DATA_DIR ?= $(if $(wildcard data/timemachine.txt),data,$(if $(wildcard ../shared/data/timemachine.txt),../shared/data,data))
export GRULM_DATA_DIR

.PHONY: train test build bench golden info lint gpu-bundle gpu-check

## make train: d2l's GRU experiment on The Time Machine, on CPU, end to end.
train: build
	./target/release/grulm train --config $(CONFIG) --device cpu $(ARGS)

## make test: every test (CPU). Tests run in parallel, many of them starting
## grulm; one libtorch thread each keeps OpenMP's spinning threads from
## oversubscribing the cores (which made the suite 2-6x slower, at random).
## A test that cannot run here (no corpus, no venv, no Slurm cluster at
## $SLURM_CONF: scripts/slurm-local.sh start DIR) says SKIPPED and counts as
## passed in cargo's summary; the last line counts them (scripts/skipped-tests.sh).
test:
	$(SETUP) && rm -rf target/skipped-tests && GRULM_SKIP_LOG="$(CURDIR)/target/skipped-tests" OMP_NUM_THREADS=1 cargo test --release
	@scripts/skipped-tests.sh target/skipped-tests

build:
	$(SETUP) && cargo build --release

info: build
	./target/release/grulm info

## make bench: grulm and PyTorch side by side (same libtorch, same threads), f32 and
## bf16 rows (PRECISION=f32 for f32 alone).
PRECISION ?= f32,bf16
bench: build
	$(SETUP) && python bench/pytorch_reference.py --check && ./target/release/grulm bench --compare-python "$$VIRTUAL_ENV/bin/python" --precision $(PRECISION) $(ARGS)

## make golden: regenerate tests/golden/builtin_gru.json with PyTorch.
golden:
	$(SETUP) && python tests/golden/make_builtin_golden.py

lint:
	$(SETUP) && cargo fmt --check && cargo clippy --all-targets -- -D warnings

## make gpu-bundle: what a GPU machine without Rust needs, in .gpu/ (git-ignored):
## the stripped release binary, configs/, bench/, the check script and the corpus.
GPU_CHECK_OUT ?= gpu-check-results
gpu-bundle: build
	rm -rf .gpu && mkdir -p .gpu/data
	strip -o .gpu/grulm target/release/grulm
	cp -r configs bench .gpu/ && cp scripts/gpu-check.sh .gpu/
	if [ -f "$(GRULM_DATA_DIR)/timemachine.txt" ]; then cp "$(GRULM_DATA_DIR)/timemachine.txt" .gpu/data/; fi
	du -sh .gpu

## make gpu-check: every CUDA path on this machine's GPU (scripts/gpu-check.sh).
gpu-check: gpu-bundle
	.gpu/gpu-check.sh $(GPU_CHECK_OUT)

# Entry points of the ASC toolkit. `make help` lists them.

# Dataset to turn into shards. Empty: the embedded demo dataset (generated into DEMO_DIR).
DATASET ?=
# Where the shards go.
OUT ?= data
# Where `make demo-data` writes the generated demo dataset (a synthetic stand-in for TAU22).
DEMO_DIR ?= demo-data
# Extra flags for `pipeline features` (e.g. FEATURES_FLAGS="--replay-sim --teacher-logits t.npy").
FEATURES_FLAGS ?=
# Python environment with pyarrow and duckdb for the shard-compatibility test.
VENV ?= .venv

CARGO ?= cargo
PYTHON ?= python3

.PHONY: help features demo-data train test test-gpu bench teachers lint clean-data

help:
	@echo "make features [DATASET=/path/to/TAU] [OUT=data]  dataset -> Parquet shards (demo dataset when DATASET is empty)"
	@echo "make demo-data [DEMO_DIR=demo-data]             generate the embedded demo dataset (TAU22 layout)"
	@echo "make train                                      cargo run --release -p train -- --shards \$$(OUT)/"
	@echo "make teachers                                   train the teacher ensemble and join fused logits into the shards"
	@echo "make test                                       the whole test suite (what CI runs)"
	@echo "make test-gpu                                   GPU-path equivalence tests on lavapipe (installs mesa-vulkan-drivers)"
	@echo "make bench                                      the benchmarks (pipeline, loader, model, scan, int8)"
	@echo "make lint                                       cargo fmt --check and clippy"

ifeq ($(strip $(DATASET)),)
features: demo-data
	$(CARGO) run --release -p pipeline -- features --dataset $(DEMO_DIR) --out $(OUT) $(FEATURES_FLAGS)
else
features:
	$(CARGO) run --release -p pipeline -- features --dataset $(DATASET) --out $(OUT) $(FEATURES_FLAGS)
endif

demo-data: $(DEMO_DIR)/meta.csv

$(DEMO_DIR)/meta.csv:
	$(CARGO) run --release -p pipeline -- synth --out $(DEMO_DIR)

train:
	$(CARGO) run --release -p train -- --shards $(OUT)/

# Teacher ensemble for one split (knobs: SPLIT, TEACHERS, MODELS, SEED, EPOCHS, RUNS, AVERAGE;
# see scripts/teachers.sh): train, predict, fuse (eq. 4) and join the fused logits into $(OUT).
teachers:
	OUT=$(OUT) CARGO=$(CARGO) bash scripts/teachers.sh

$(VENV)/.installed: pipeline/tests/python/requirements.txt
	$(PYTHON) -m venv $(VENV)
	$(VENV)/bin/python -m pip install --quiet --disable-pip-version-check -r pipeline/tests/python/requirements.txt
	touch $@

test: $(VENV)/.installed
	ASC_PYTHON=$(abspath $(VENV))/bin/python $(CARGO) test --release --workspace

# The CubeCL kernels vs the CPU kernels on a software Vulkan device (scripts/ci-gpu-test.sh).
test-gpu:
	CARGO=$(CARGO) bash scripts/ci-gpu-test.sh

bench:
	$(CARGO) bench --workspace

lint:
	$(CARGO) fmt --all -- --check
	$(CARGO) clippy --release --workspace --all-targets -- -D warnings

clean-data:
	rm -rf $(OUT) $(DEMO_DIR)

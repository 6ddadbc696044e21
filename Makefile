# Set-up on first use (.venv/), then run. Torch: the CPU build where there is no CUDA
# (on these machines `pip install torch==2.13.0` takes a file already on disk), the normal
# build where nvidia-smi finds a GPU.
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.fishtune-installed

.PHONY: setup study test lint bench repro

setup: $(STAMP)

$(STAMP): pyproject.toml
	python3 -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	if command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi -L >/dev/null 2>&1; then \
		$(BIN)/python -m pip install -q "torch>=2.13"; \
	else \
		$(BIN)/python -m pip install -q torch==2.13.0 || \
		$(BIN)/python -m pip install -q torch==2.13.0 --index-url https://download.pytorch.org/whl/cpu; \
	fi
	$(BIN)/python -m pip install -q -e ".[dev]"
	touch $(STAMP)

study: $(STAMP)
	$(BIN)/fishtune run studies/digits-quick.yaml

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy

test: lint
	$(BIN)/pytest -q

bench: $(STAMP)
	$(BIN)/python -m pip install -q -e ".[bench]"
	$(BIN)/python -m pip install -q --no-deps "backpack-for-pytorch>=1.7" "nngeometry==0.4"
	$(BIN)/python benchmarks/fisher_overhead.py

# The paper's claims (docs/results.md), on digits and on MNIST-1D: each study from scratch in
# repro/, its analysis in reports/, the plots copied to docs/img/, then each Table 1 comparison
# whose studies all ran. A subset: make repro REPRO_STUDIES="repro-mnist1d-correlation"
TABLE1_DIGITS := repro-fp-baselines repro-fp-fisher repro-fp-gp repro-fp-gpx repro-fp-gpr
TABLE1_MNIST1D := repro-mnist1d-fp-baselines repro-mnist1d-fp-fisher repro-mnist1d-fp-gp repro-mnist1d-fp-gpx repro-mnist1d-fp-gpr
REPRO_STUDIES := repro-correlation repro-spectrum $(TABLE1_DIGITS) repro-mnist1d-correlation $(TABLE1_MNIST1D) repro-mnist1d-memorisation

repro: $(STAMP)
	rm -rf repro && mkdir -p repro docs/img
	for study in $(REPRO_STUDIES); do \
		$(BIN)/fishtune run studies/$$study.yaml --storage repro --tracking-uri sqlite:///repro/mlflow.db || exit 1; \
		$(BIN)/fishtune analyze $$study --tracking-uri sqlite:///repro/mlflow.db --out reports/$$study || exit 1; \
		for png in reports/$$study/*.png; do cp $$png docs/img/$$study-$$(basename $$png); done; \
	done
	$(if $(filter-out $(REPRO_STUDIES),$(TABLE1_DIGITS)),,$(BIN)/fishtune compare $(TABLE1_DIGITS) --name repro-table1 --tracking-uri sqlite:///repro/mlflow.db)
	$(if $(filter-out $(REPRO_STUDIES),$(TABLE1_MNIST1D)),,$(BIN)/fishtune compare $(TABLE1_MNIST1D) --name repro-mnist1d-table1 --tracking-uri sqlite:///repro/mlflow.db)

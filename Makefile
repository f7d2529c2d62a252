# The README's whole set-up: `make demo` and `make test`, each from a fresh clone.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

.PHONY: venv demo test lint bench bench-cnn bench-dist bench-dist-netns bench-byzfl clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --disable-pip-version-check -e '.[dev]'
	touch $(STAMP)

venv: $(STAMP)

# The paper's Figure 3: logistic regression, 10 workers, 80 epochs, seed 8005, DistSGD /
# SignSGD / Signum with 0-4 Byzantine (vote-cancelling) workers; writes the figure
# (runs/demo/logreg-byzantine.png, .svg) and runs/demo/REPORT.md beside the paper's values.
demo: $(STAMP)
	$(BIN)/signvote reproduce logreg-byzantine --out runs/demo

test: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/pytest --durations=25

lint: $(STAMP)
	$(BIN)/ruff check .

bench: $(STAMP)
	$(BIN)/python benchmarks/bench_sim.py

bench-dist: $(STAMP)
	$(BIN)/python benchmarks/bench_dist.py bytes

# Needs root: it creates network namespaces, veth links and tc qdiscs (and deletes them).
bench-dist-netns: $(STAMP)
	$(BIN)/python benchmarks/bench_dist.py netns --hosts 4
	$(BIN)/python benchmarks/bench_dist.py netns --hosts 2

bench-cnn: $(STAMP)
	$(BIN)/python benchmarks/bench_cnn.py --repeats 5

# ByzFL goes into its own folder, without its dependencies (torchvision, scipy, ...).
benchmarks/.byzfl/byzfl: $(STAMP)
	$(BIN)/pip install --quiet --no-deps --target benchmarks/.byzfl byzfl==0.0.11

bench-byzfl: benchmarks/.byzfl/byzfl
	$(BIN)/python benchmarks/bench_aggregators.py --repeats 3

clean:
	rm -rf $(VENV) runs build src/*.egg-info .pytest_cache .ruff_cache

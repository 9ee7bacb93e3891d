# Everything a fresh machine needs; each target does its own setup.
PY ?= python3
ORCH := .venvs/orch/bin/python
LAB := .venvs/lab/bin/python

.PHONY: setup test mutations lint run baseline bench

setup:
	$(PY) -m orchestrator.envs

# The README's test command. Lab tests run in the lab venv, loop tests in the orchestrator venv.
test: setup
	$(LAB) -m pytest tests/lab -q; lab=$$?; \
	$(ORCH) -m pytest tests/orchestrator -q; orch=$$?; \
	echo "lab tests exit $$lab, orchestrator tests exit $$orch"; \
	test $$lab -eq 0 -a $$orch -eq 0

# Break each guard in a copy of the tree and run the tests that must notice (benchmarks/mutations.py):
# fails on a survivor, a stale entry or a broken mutation, so the table cannot rot. CI runs it.
mutations: setup
	$(ORCH) benchmarks/mutations.py

lint: setup
	$(ORCH) -m ruff check .
	$(ORCH) -m ruff format --check .

run: setup
	$(PY) launch_scientist.py --idea temporal_sae

# run_0 of the temporal_sae template, trained and validated for real (~10 min on 2 CPU cores).
baseline: setup
	$(LAB) -m saelab.prepare
	$(LAB) templates/temporal_sae/make_baseline.py

bench: setup
	$(LAB) benchmarks/harvest.py
	$(LAB) benchmarks/evals.py

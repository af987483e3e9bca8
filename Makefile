# gate: every target sets up what it needs (Debian packages, .venv) and is safe to run again.
SHELL := /bin/bash
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
PIP_STAMP := $(VENV)/.gate-installed
SYS_STAMP := $(VENV)/.gate-debian
export OMP_NUM_THREADS ?= 1
# Everything the test suite and the demo exercise: node, cloud service, PostgreSQL store, training, HTML report,
# federated fine-tuning (Flower).
EXTRAS ?= dev,node,cloud,postgres,train,report,wyoming,federated

.PHONY: setup sysdeps venv test bench demo loadtest train compare clean

setup: sysdeps venv

# Re-checked whenever the package list changes; the script itself is a no-op when all is installed.
sysdeps: $(SYS_STAMP)
$(SYS_STAMP): deploy/debian-packages.txt deploy/install-debian-packages.sh
	bash deploy/install-debian-packages.sh
	@mkdir -p $(VENV) && touch $@

venv: $(PIP_STAMP)
# The speech-embedding front end (gate/kws/embedding.py) reads its two graphs from openwakeword 0.5.1's
# wheel; the wheel goes in without its dependencies (tflite-runtime, which breaks under numpy 2).
$(PIP_STAMP): pyproject.toml | $(SYS_STAMP)
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[$(EXTRAS)]'
	$(PY) -m pip install -q --no-deps 'openwakeword==0.5.1'
	touch $@

# pytest exits 5 when it collected no test: that is a failure here.
test: setup
	$(PY) -m pytest -q -p no:cacheprovider; rc=$$?; \
	  if [ $$rc -eq 5 ]; then echo "make test: no tests were collected" >&2; exit 1; fi; exit $$rc

bench: setup
	$(PY) bench/run.py --out bench.json

# The bundled scene through the whole cascade: embedded broker, a private cloud worker, the savings
# table on stdout, JSON and a self-contained HTML report in out/. The HTML needs matplotlib, from the
# `report` extra in EXTRAS.
demo: setup
	@mkdir -p out
	$(VENV)/bin/gate-node replay --scenario datasets/demo --broker embedded \
	  --report out/demo-report.json --html out/demo-report.html
	@echo "HTML report: out/demo-report.html"

# 100 simulated nodes against one broker and two cloud workers on loopback (bounded; exits 1 on any loss).
loadtest: setup
	$(PY) -m bench.loadtest --out loadtest.json

# Synthesise, train the three models, quantize, evaluate and write model cards (about 50 min of training
# on two cores, plus about 6 min of speech synthesis the first time).
train: setup
	$(VENV)/bin/gate-cloud train --recipe datasets/recipes/hey_jarvis.yaml --out out/train --teacher

# Ours vs openWakeWord 0.5.1 and microWakeWord on the same scenes (their models ship in the wheels;
# openwakeword without its deps, which would pull tflite-runtime, broken under numpy 2).
compare: setup
	$(PY) -m pip install -q --no-deps 'openwakeword==0.5.1'
	$(PY) -m pip install -q 'onnxruntime>=1.17,<2' 'scikit-learn>=1,<2' 'pymicro-wakeword>=2.5,<3'
	$(PY) -m cloud.compare --recipe datasets/recipes/hey_jarvis.yaml --cache-dir out/cache \
		--out out/compare.json --html out/compare.html

clean:
	rm -rf $(VENV) out bench.json .pytest_cache build *.egg-info

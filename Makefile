# The two commands of the README:
#   make demo   - CPU smoke run: built-in demo data -> log-mel shards -> pre-training -> linear probe
#   make test   - the test suite (what CI runs)
# Each creates .venv and installs the pinned dependencies first (once).
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
DEMO := runs/demo
DEMO_CONFIG ?= configs/wav2vec2_conformer.py:local

.PHONY: demo test install bench clean-demo real-audio

$(STAMP): setup.py constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --disable-pip-version-check pip==26.3
	$(BIN)/pip install -q --disable-pip-version-check -c constraints.txt -e '.[dev]'
	touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	$(BIN)/audiossl demo-data --out $(DEMO)/audio
	$(BIN)/audiossl prep --input $(DEMO)/audio/train.csv --out $(DEMO)/data/train --frontend librosa_mel --num-mel-bins 64
	$(BIN)/audiossl prep --input $(DEMO)/audio/eval.csv --out $(DEMO)/data/eval --frontend librosa_mel --num-mel-bins 64 --classes-from $(DEMO)/data/train
	$(BIN)/audiossl pretrain --config $(DEMO_CONFIG) --workdir $(DEMO)/wav2vec2
	$(BIN)/audiossl probe --workdir $(DEMO)/wav2vec2 --compare-random

test: $(STAMP)
	$(BIN)/python -m pytest -q tests

clean-demo:
	rm -rf $(DEMO)

# Real-audio development benchmark from Debian packages (docs/real_audio_benchmark.md)
real-audio: $(STAMP)
	nice -n 10 $(BIN)/python -m tools.real_audio.build --out runs/real_audio

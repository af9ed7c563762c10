# The two commands of the README:
#   make demo   - CPU smoke run: built-in demo data -> log-mel shards -> pre-training -> linear probe
#                 -> label efficiency (probe vs fraction of the labels)
#   make test   - the test suite (what CI runs)
# Each creates .venv and installs the pinned dependencies first (once).
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
DEMO := runs/demo
DEMO_CONFIG ?= configs/eat.py:local
# `prep --config` takes the method's front end from its config (config.data.frontend): EAT reads
# 128-bin hanning Kaldi fbank, wav2vec2 and SLICER 64-bin log-mel; the folder is named after it.
DEMO_FRONTEND ?= $(if $(findstring eat.py,$(DEMO_CONFIG)),kaldi_fbank,librosa_mel)
DEMO_PREP_ARGS := --config $(DEMO_CONFIG)
DEMO_DATA := $(DEMO)/data/$(DEMO_FRONTEND)
DEMO_RUN := $(DEMO)/$(firstword $(subst ., ,$(notdir $(DEMO_CONFIG))))

.PHONY: demo test install bench clean-demo real-audio

$(STAMP): setup.py constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --disable-pip-version-check pip==26.3
	$(BIN)/pip install -q --disable-pip-version-check -c constraints.txt -e '.[dev,beam]'
	touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	$(BIN)/audiossl demo-data --out $(DEMO)/audio
	$(BIN)/audiossl prep --input $(DEMO)/audio/train.csv --out $(DEMO_DATA)/train $(DEMO_PREP_ARGS)
	$(BIN)/audiossl prep --input $(DEMO)/audio/eval.csv --out $(DEMO_DATA)/eval $(DEMO_PREP_ARGS) --classes-from $(DEMO_DATA)/train
	$(BIN)/audiossl pretrain --config $(DEMO_CONFIG) --workdir $(DEMO_RUN) \
	    --config.data.train_dir=$(DEMO_DATA)/train --config.data.eval_dir=$(DEMO_DATA)/eval
	$(BIN)/audiossl probe --workdir $(DEMO_RUN) --compare-random
	$(BIN)/audiossl label-efficiency --workdir $(DEMO_RUN) --fractions 0.1,0.33,1.0 --seeds 3

test: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/python -m pytest -q -n 2 --dist loadfile --durations=25 -m "not xla_default" tests
	AUDIOSSL_TEST_XLA=default $(BIN)/python -m pytest -q -n 2 --dist loadfile --durations=10 -m xla_default tests

clean-demo:
	rm -rf $(DEMO)

# Real-audio development benchmark from Debian packages (docs/real_audio_benchmark.md)
real-audio: $(STAMP)
	nice -n 10 $(BIN)/python -m tools.real_audio.build --out runs/real_audio

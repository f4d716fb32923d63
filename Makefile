# Glottis: top-level entry points. Recipes live in recipes/<corpus>/Makefile.
SHELL := /bin/bash
PYTHON := .venv/bin/python
STAMP := .venv/.glottis-setup-stamp
# Debian packages, one per line: the synthesisers that build the corpora (the festvox voices beyond kal, ked
# and slt are the `data-foreign` and `data-loan` stages'), ffmpeg for torchcodec, sox, WordNet's text, and
# gcc for the C WaveNet kernel (tts/_wavenet_kernel.c, compiled on first use; without it the numba kernel runs).
APT_PACKAGES := $(shell cat apt-packages.txt)
SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)
HOURS ?= 11.2

.PHONY: setup test lint demo bench data asr tts vocoder wav2vec2 clean-setup

setup: $(STAMP)

# The stamp depends on the files that define the environment, so editing them reruns setup.
$(STAMP): requirements.txt requirements-peers.txt pyproject.toml apt-packages.txt
	@missing=$$(for p in $(APT_PACKAGES); do dpkg-query -W -f='$${Status}\n' $$p 2>/dev/null | grep -q "install ok installed" || echo $$p; done); \
	if [ -n "$$missing" ]; then \
	  echo "Installing Debian packages: $$missing"; \
	  $(SUDO) env DEBIAN_FRONTEND=noninteractive apt-get update -qq && \
	  $(SUDO) env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $$missing; \
	fi
	@[ -x $(PYTHON) ] || python3 -m venv .venv
	$(PYTHON) -m pip install -q --upgrade pip
	$(PYTHON) -m pip install -q -r requirements.txt
	$(PYTHON) -m pip install -q --no-deps -r requirements-peers.txt
	$(PYTHON) -m pip install -q --no-deps -e .
	@touch $@

test: setup
	$(PYTHON) -m pytest tests

lint: setup
	$(PYTHON) -m ruff check audio asr tts tests bench

demo: setup
	$(MAKE) -C recipes/synth_en demo

bench: setup
	$(MAKE) -C recipes/real_en data
	$(PYTHON) -m bench.run

data: setup
	$(MAKE) -C recipes/synth_en data HOURS=$(HOURS)

asr: setup
	$(MAKE) -C recipes/synth_en asr

tts: setup
	$(MAKE) -C recipes/synth_en tts

vocoder: setup
	$(MAKE) -C recipes/synth_en vocoder

wav2vec2: setup
	$(MAKE) -C recipes/synth_en wav2vec2

clean-setup:
	rm -f $(STAMP)

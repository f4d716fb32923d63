# WaveNet vocoder on the single-voice TTS split (festival slt, 22.05 kHz), included by ./Makefile after tts.mk.
#   train -> copy synthesis of the test sentences with WaveNet and Griffin-Lim (same mels) -> transcribe both
#   (and the recordings) with the ASR model -> MCD and round-trip CER side by side -> RESULTS.md.
# Every target is a real file; the trainer resumes from its newest checkpoint when rerun.
VOC_CONFIG ?= $(ROOT)/configs/tts/wavenet.yaml
VOC_EXP := exp/vocoder_wavenet
VOC_BUNDLE := $(ROOT)/tts/pretrained/wavenet_synth_en
VOC_LIMIT ?= 30
VOC_TRAIN_ARGS ?=
# WaveNet sampling temperature, chosen on the first 30 dev sentences with the mel gate on (the default;
# --no-postfilter scores the raw output), bundled weights, seed 0 (RESULTS.md, session 25): MCD / round-trip
# CER 6.61 dB / 7.3% at 0.9, 6.42 / 5.7% at 1.0, 6.34 / 6.6% at 1.1, 6.25 / 5.8% at 1.2; without the gate
# 9.33 / 10.1% at 0.8 (the earlier choice, from 12 dev sentences of the first stage), 9.08 / 8.8% at 1.0.
# 1.0 samples the model's own distribution, and higher ones gain less MCD than this test's noise in CER.
# Add --candidates N for mel-guided sampling, with --temperature 1.2, the guided default of `glottis vocode`
# (RESULTS.md, sessions 35-37: 4 candidates, searched as 2 beams, take the bundle's test MCD from 5.93 to
# 5.47 dB over three seeds, round trip 6.55% -> 6.70%, at about 4x the generation time; 16 candidates on the
# previous bundle: 5.3 dB).
VOC_SYNTH_ARGS ?= --temperature 1.0
VOC_COPY := $(VOC_EXP)/copy

.PHONY: vocoder vocoder-bundle
vocoder: $(VOC_EXP)/scores.json $(VOC_EXP)/RESULTS.md

$(VOC_EXP)/final.pt: $(DATA)/stats.json $(call config_files,$(VOC_CONFIG))
	$(PYTHON) -m tts.vocoder_train --config $(VOC_CONFIG) --exp-dir $(VOC_EXP) \
	  --train $(TTS_DATA)/train.jsonl --dev $(TTS_DATA)/dev.jsonl $(VOC_TRAIN_ARGS)

# synth.jsonl is written last, after every wav: its presence means the folder is complete.
$(VOC_COPY)/synth.jsonl: $(VOC_EXP)/final.pt
	$(PYTHON) -m tts.vocoder_evaluate synth --model $< --manifest $(TTS_DATA)/test.jsonl --out-dir $(@D) \
	  --limit $(VOC_LIMIT) $(VOC_SYNTH_ARGS)

$(VOC_EXP)/roundtrip_%.jsonl: $(VOC_COPY)/synth.jsonl
	$(GLOTTIS) transcribe $(VOC_COPY)/$* --model $(TTS_ASR_MODEL) --format jsonl > $@.tmp && mv $@.tmp $@

$(VOC_EXP)/reference.jsonl: $(VOC_COPY)/synth.jsonl
	$(GLOTTIS) transcribe $$($(PYTHON) -m tts.evaluate paths --manifest $(VOC_COPY)/manifest.jsonl) \
	  --model $(TTS_ASR_MODEL) --format jsonl > $@.tmp && mv $@.tmp $@

$(VOC_EXP)/scores.json: $(VOC_EXP)/roundtrip_wavenet.jsonl $(VOC_EXP)/roundtrip_griffin-lim.jsonl $(VOC_EXP)/reference.jsonl
	$(PYTHON) -m tts.vocoder_evaluate score --synth-dir $(VOC_COPY) \
	  --roundtrip wavenet=$(VOC_EXP)/roundtrip_wavenet.jsonl \
	  --roundtrip griffin-lim=$(VOC_EXP)/roundtrip_griffin-lim.jsonl \
	  --reference $(VOC_EXP)/reference.jsonl --out $@

$(VOC_EXP)/RESULTS.md: $(VOC_EXP)/scores.json
	$(PYTHON) -m tts.vocoder_evaluate report --scores $< --out $@

# Refresh the vocoder shipped inside the package (fp16, model card with the scores).
# A stage trained from another model (--init) passes the whole chain as VOC_CARD_COMMAND.
VOC_CARD_NOTES ?=
VOC_CARD_COMMAND ?= make setup && make -C recipes/synth_en data vocoder vocoder-bundle
vocoder-bundle: $(VOC_EXP)/scores.json
	$(PYTHON) -m tts.wavenet_bundle --checkpoint $(VOC_EXP)/final.pt --out $(VOC_BUNDLE) --scores $< \
	  --config configs/tts/$(notdir $(VOC_CONFIG)) --command "$(VOC_CARD_COMMAND)" --notes "$(VOC_CARD_NOTES)"

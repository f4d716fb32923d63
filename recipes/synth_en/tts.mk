# TTS: Tacotron + Griffin-Lim on the single-voice TTS split (festival slt), included by ./Makefile.
#   train -> synthesise the test sentences -> transcribe them (and the voice's own test recordings)
#   with the ASR model -> MCD, round-trip CER and attention scores -> RESULTS.md and an alignment plot.
# Every target is a real file; the trainer resumes from its newest checkpoint when rerun.
TTS_CONFIG ?= $(ROOT)/configs/tts/tacotron.yaml
TTS_EXP ?= exp/tts_tacotron
TTS_DATA := $(DATA)/manifests/tts
TTS_BUNDLE := $(ROOT)/tts/pretrained/tacotron_synth_en
TTS_TRAIN_ARGS ?=
# Start from trained weights (bundle folder or checkpoint): see configs/tts/tacotron_continued.yaml.
TTS_INIT ?=
TTS_SYNTH_ARGS ?=
# The recogniser for the round trip: the bundled ASR model by default (override, e.g. with a checkpoint).
TTS_ASR_MODEL ?= $(ROOT)/asr/pretrained/conv_bilstm_synth_en

.PHONY: tts tts-bundle
tts: $(TTS_EXP)/scores.json $(TTS_EXP)/RESULTS.md $(TTS_EXP)/alignment.png

$(TTS_EXP)/final.pt: $(DATA)/stats.json $(call config_files,$(TTS_CONFIG))
	$(PYTHON) -m tts.train --config $(TTS_CONFIG) --exp-dir $(TTS_EXP) \
	  --train $(TTS_DATA)/train.jsonl --dev $(TTS_DATA)/dev.jsonl $(TTS_TRAIN_ARGS) $(if $(TTS_INIT),--init $(TTS_INIT))

# synth.jsonl is written last, after every wav: its presence means the folder is complete.
$(TTS_EXP)/synth/test/synth.jsonl: $(TTS_EXP)/final.pt
	$(PYTHON) -m tts.evaluate synth --model $< --manifest $(TTS_DATA)/test.jsonl --out-dir $(@D) $(TTS_SYNTH_ARGS)

$(TTS_EXP)/roundtrip.jsonl: $(TTS_EXP)/synth/test/synth.jsonl
	$(GLOTTIS) transcribe $(@D)/synth/test --model $(TTS_ASR_MODEL) --format jsonl > $@.tmp && mv $@.tmp $@

$(TTS_EXP)/reference.jsonl: $(DATA)/stats.json
	mkdir -p $(@D)
	$(GLOTTIS) transcribe $$($(PYTHON) -m tts.evaluate paths --manifest $(TTS_DATA)/test.jsonl) \
	  --model $(TTS_ASR_MODEL) --format jsonl > $@.tmp && mv $@.tmp $@

$(TTS_EXP)/scores.json: $(TTS_EXP)/synth/test/synth.jsonl $(TTS_EXP)/roundtrip.jsonl $(TTS_EXP)/reference.jsonl
	$(PYTHON) -m tts.evaluate score --manifest $(TTS_DATA)/test.jsonl --synth-dir $(TTS_EXP)/synth/test \
	  --roundtrip $(TTS_EXP)/roundtrip.jsonl --reference $(TTS_EXP)/reference.jsonl --out $@

$(TTS_EXP)/RESULTS.md: $(TTS_EXP)/scores.json
	$(PYTHON) -m tts.evaluate report --scores $< --out $@

$(TTS_EXP)/alignment.png: $(TTS_EXP)/synth/test/synth.jsonl
	$(PYTHON) -m tts.evaluate plot --synth-dir $(<D) --out $@

# Refresh the model shipped inside the package from this recipe's result.
TTS_CARD_NOTES ?=
TTS_CARD_COMMAND ?= make setup && make -C recipes/synth_en data tts tts-bundle
tts-bundle: $(TTS_EXP)/scores.json
	$(PYTHON) -m tts.bundle --checkpoint $(TTS_EXP)/final.pt --out $(TTS_BUNDLE) \
	  --scores $(TTS_EXP)/scores.json --data-stats $(DATA)/stats.json \
	  --config configs/tts/$(notdir $(TTS_CONFIG)) \
	  --command "$(TTS_CARD_COMMAND)" --notes "$(TTS_CARD_NOTES)"

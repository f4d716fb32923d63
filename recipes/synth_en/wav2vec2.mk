# wav2vec 2.0: what self-supervised pretraining buys with 1 hour of transcribed speech. Included by ./Makefile.
#   1. pretrain a small wav2vec 2.0 on all the training audio (no transcripts)
#   2. fine-tune it with CTC on a speaker-balanced 1-hour labelled subset
#   3. baseline: the Conv1D+BiLSTM recogniser trained on the same hour
#   4. baseline: the same wav2vec 2.0, randomly initialised, fine-tuned on the same hour
# Each system: tune the LM weights on dev, score dev and test greedy and with the LM; then one table,
# exp/wav2vec2/scores.json and RESULTS.md, with the wall time of every stage.
#
# `make wav2vec2` runs two lanes at once (W2V_JOBS=2), each trainer on one thread with no data-loader
# worker, so the 2 cores never hold more than 2 busy threads. Every target is a file and every trainer
# resumes from its newest checkpoint, so an interrupted run continues where it stopped.
#
# Budget (one thread per lane, measured 2026-12-01 with the other core busy; configs/asr/wav2vec2_logmel.yaml):
#   lane 1: pretraining 2400 x ~2.0 s = ~80 min, fine-tuning 2000 x ~1.55 s = ~52 min, tune + score ~1 min
#   lane 2: subset, stats, LM ~1 min; Conv1D+BiLSTM 1500 x 0.8 s = ~20 min; wav2vec 2.0 from scratch
#           2000 x ~1.45 s = ~49 min; tune + score ~2 x 1 min
# 2.2 h for the longer lane (session 14), within the 3 h target. The conv-encoder model of
# configs/asr/wav2vec2_small.yaml (W2V_CONFIG=...) is ~4x slower per step and far less accurate.
# configs/asr/wav2vec2_logmel40.yaml (40 ms frames) halves every wav2vec 2.0 stage's time for the same
# greedy CER, but the LM then helps less (RESULTS.md, session 18).
# The best wav2vec 2.0 measured since (RESULTS.md, sessions 26-31) is configs/asr/wav2vec2_fbank40.yaml
# fine-tuned for 3000 steps (W2V_FT_ARGS='--set finetune.total_steps=3000', 70 min on two threads): test
# greedy CER 27.55%. The Conv1D+BiLSTM trained for 3000 steps on the same hour gets 26.31%, so issue 6's
# target is not met either way, and the defaults above stay those whose whole run was timed (2.2 h).
W2V_CONFIG ?= $(ROOT)/configs/asr/wav2vec2_logmel.yaml
W2V_EXP ?= exp/wav2vec2
W2V_PT := $(W2V_EXP)/pretrain
W2V_FT := $(W2V_EXP)/ft_pretrained
W2V_SCRATCH := $(W2V_EXP)/ft_scratch
W2V_BILSTM := $(W2V_EXP)/bilstm_1h
W2V_SUBSET := $(W2V_EXP)/train_1h.jsonl
W2V_HOURS ?= 1
W2V_JOBS ?= 2
W2V_THREADS ?= 1
# From scratch nothing is worth keeping frozen, and the body needs the head's learning rate.
W2V_SCRATCH_ARGS ?= --set finetune.freeze_feature_encoder_steps=0 --set finetune.freeze_body_steps=0 \
  --set finetune.body_lr=0.0005
# Extra pretraining arguments, e.g. --set pretrain.total_steps=3600.
W2V_PT_ARGS ?=
# The unlabelled audio pretraining reads: the corpus's training split, or a larger pool such as
# $(DATA)/manifests/train_foreign_all.jsonl (train + `make data-extra data-variants data-foreign`).
W2V_PT_TRAIN ?= $(W2V_MANIFESTS)/train.jsonl
# Extra fine-tuning arguments for the pretrained model (none: the config's own settings). In
# wav2vec2_logmel.yaml those equal W2V_SCRATCH_ARGS, so the two wav2vec 2.0 runs differ only in their
# initial weights; wav2vec2_small.yaml keeps the pretrained conv encoder frozen.
W2V_FT_ARGS ?=
# The Conv1D+BiLSTM of conv_bilstm.yaml, for ~27 passes over the hour.
W2V_BILSTM_ARGS ?= --set train.total_steps=1500 --set train.warmup_steps=150 --set train.eval_every=300 \
  --set train.num_workers=0
W2V_TUNE_LIMIT ?= 200
W2V_LM_WEIGHTS ?= 0.4,0.8,1.2,1.6
W2V_WORD_SCORES ?= -1,0,1

W2V_MANIFESTS := $(DATA)/manifests
W2V_TUNE = $(PYTHON) -m asr.evaluate tune --lm $(ASR_EXP)/lm.arpa --manifest $(W2V_MANIFESTS)/dev.jsonl \
  --limit $(W2V_TUNE_LIMIT) --lm-weights=$(W2V_LM_WEIGHTS) --word-scores=$(W2V_WORD_SCORES) --out $@ --model
W2V_SCORE = $(PYTHON) -m asr.evaluate score --lm $(ASR_EXP)/lm.arpa --decoder $(@D)/decoder.json \
  --split dev=$(W2V_MANIFESTS)/dev.jsonl --split test=$(W2V_MANIFESTS)/test.jsonl --out $@ --model

.PHONY: wav2vec2 wav2vec2-results
wav2vec2:
	$(MAKE) -j$(W2V_JOBS) wav2vec2-results

wav2vec2-results: $(W2V_EXP)/scores.json $(W2V_EXP)/RESULTS.md $(W2V_EXP)/model/glottis.json

# Made once, when the recipe first starts: the report counts the wall time from here.
$(W2V_EXP)/started:
	mkdir -p $(@D) && touch $@

$(W2V_SUBSET): $(DATA)/stats.json | $(W2V_EXP)/started
	$(PYTHON) -m asr.subset --manifest $(W2V_MANIFESTS)/train.jsonl --hours $(W2V_HOURS) --out $@

# 1. Pretraining: all the training audio, no transcripts.
# The feature statistics are read only by the filterbank front end (encoder.front_end: fbank).
$(W2V_PT)/final/glottis.json: $(W2V_PT_TRAIN) $(call config_files,$(W2V_CONFIG)) $(ASR_EXP)/feature_stats.json \
    | $(W2V_EXP)/started
	$(PYTHON) -m asr.wav2vec2_pretrain --config $(W2V_CONFIG) --exp-dir $(W2V_PT) \
	  --train $(W2V_PT_TRAIN) --dev $(W2V_MANIFESTS)/dev.jsonl --feature-stats $(ASR_EXP)/feature_stats.json \
	  --threads $(W2V_THREADS) $(W2V_PT_ARGS)

# 2. Fine-tuning the pretrained model on the hour.
# The feature statistics are read only by a head with a log-mel branch (head.fbank), and by a new
# filterbank front end (a pretrained one keeps its own).
$(W2V_FT)/final/glottis.json: $(W2V_PT)/final/glottis.json $(W2V_SUBSET) $(ASR_EXP)/tokenizer.json \
    $(ASR_EXP)/feature_stats.json
	$(PYTHON) -m asr.wav2vec2 finetune --config $(W2V_CONFIG) --exp-dir $(W2V_FT) --init $(W2V_PT)/final \
	  --train $(W2V_SUBSET) --dev $(W2V_MANIFESTS)/dev.jsonl --tokenizer $(ASR_EXP)/tokenizer.json \
	  --feature-stats $(ASR_EXP)/feature_stats.json --threads $(W2V_THREADS) $(W2V_FT_ARGS)

# 3. The Conv1D+BiLSTM recogniser on the hour (feature statistics of all the training audio, as step 1).
$(W2V_BILSTM)/final.pt: $(W2V_SUBSET) $(ASR_EXP)/feature_stats.json $(ASR_EXP)/tokenizer.json \
    $(call config_files,$(ASR_CONFIG))
	$(PYTHON) -m asr.train --config $(ASR_CONFIG) --exp-dir $(W2V_BILSTM) --train $(W2V_SUBSET) \
	  --dev $(W2V_MANIFESTS)/dev.jsonl --tokenizer $(ASR_EXP)/tokenizer.json --stats $(ASR_EXP)/feature_stats.json \
	  --threads $(W2V_THREADS) $(W2V_BILSTM_ARGS)

# 4. The same wav2vec 2.0, randomly initialised, fine-tuned on the hour.
$(W2V_SCRATCH)/final/glottis.json: $(W2V_SUBSET) $(ASR_EXP)/tokenizer.json $(call config_files,$(W2V_CONFIG)) \
    $(ASR_EXP)/feature_stats.json
	$(PYTHON) -m asr.wav2vec2 finetune --config $(W2V_CONFIG) --exp-dir $(W2V_SCRATCH) --init random \
	  --train $(W2V_SUBSET) --dev $(W2V_MANIFESTS)/dev.jsonl --tokenizer $(ASR_EXP)/tokenizer.json \
	  --feature-stats $(ASR_EXP)/feature_stats.json --threads $(W2V_THREADS) $(W2V_SCRATCH_ARGS)

# LM weights tuned on dev for each system, then dev and test scored greedy and with the LM.
$(W2V_FT)/decoder.json: $(W2V_FT)/final/glottis.json $(ASR_EXP)/lm.arpa
	$(W2V_TUNE) $(<D)
$(W2V_FT)/scores.json: $(W2V_FT)/final/glottis.json $(W2V_FT)/decoder.json
	$(W2V_SCORE) $(<D)
$(W2V_SCRATCH)/decoder.json: $(W2V_SCRATCH)/final/glottis.json $(ASR_EXP)/lm.arpa
	$(W2V_TUNE) $(<D)
$(W2V_SCRATCH)/scores.json: $(W2V_SCRATCH)/final/glottis.json $(W2V_SCRATCH)/decoder.json
	$(W2V_SCORE) $(<D)
$(W2V_BILSTM)/decoder.json: $(W2V_BILSTM)/final.pt $(ASR_EXP)/lm.arpa
	$(W2V_TUNE) $<
$(W2V_BILSTM)/scores.json: $(W2V_BILSTM)/final.pt $(W2V_BILSTM)/decoder.json
	$(W2V_SCORE) $<

$(W2V_EXP)/scores.json: $(W2V_FT)/scores.json $(W2V_SCRATCH)/scores.json $(W2V_BILSTM)/scores.json
	$(PYTHON) -m asr.compare scores --reference "wav2vec 2.0 pretrained" \
	  --system "wav2vec 2.0 pretrained=$(W2V_FT)" --system "wav2vec 2.0 from scratch=$(W2V_SCRATCH)" \
	  --system "Conv1D+BiLSTM=$(W2V_BILSTM)" \
	  --stage "wav2vec 2.0 pretraining on all training audio=$(W2V_PT)/final/glottis.json" \
	  --started $(W2V_EXP)/started --out $@

$(W2V_EXP)/RESULTS.md: $(W2V_EXP)/scores.json
	$(PYTHON) -m asr.compare report --scores $< --out $@

# The pretrained + fine-tuned model with its LM and tuned decoder: `glottis transcribe --model` this folder.
$(W2V_EXP)/model/glottis.json: $(W2V_FT)/scores.json
	$(PYTHON) -m asr.wav2vec2 export --model $(W2V_FT)/final --out $(@D) --lm $(ASR_EXP)/lm.arpa \
	  --decoder $(W2V_FT)/decoder.json

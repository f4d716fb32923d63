"""Unsupervised adaptation of a recogniser to one speaker or recording condition, at test time.

The recogniser's posteriors are made confident on the audio to be transcribed: a few passes of entropy
minimisation (as TENT, Wang et al. 2021, and SUTA, Lin et al. 2022, do for CTC models) over that audio,
with no transcripts. Only the front of the network moves, so it learns a new "ear", not new words:

- a per-band affine map of the normalised log-mel features (folded into the feature statistics
  afterwards, so the adapted recogniser is an ordinary one), and
- the first convolution block (its kernel and its batch-norm scale and shift; the running statistics
  stay as trained).

Entropy minimisation can collapse (on noisy audio every frame may turn into a confident blank, or into
confident garbage): when the adapted recogniser's greedy tokens on the adaptation audio differ from the
unadapted one's by more than half, the unadapted recogniser is kept and a warning says so.

Dropout is off (the LSTM's between layers too) and batch norm keeps its running statistics throughout,
as when transcribing, so the objective is deterministic. The adapted copy is returned; the given recogniser is left untouched.

    from asr.adapt import AdaptConfig, adapt_recognizer
    adapted, report = adapt_recognizer(model.recognizer, waves)   # waves: 1-D tensors, one speaker

Measured on synth_en's unseen natural voices (recipes/synth_en/RESULTS.md, session 17).
"""

from __future__ import annotations

import copy
import logging
import time
from dataclasses import asdict, dataclass

import torch
from torch import nn
from torchaudio.functional import edit_distance
from tqdm import tqdm

from asr.decode import collapse_path
from asr.recognizer import Recognizer
from asr.tokenizer import CharTokenizer

log = logging.getLogger(__name__)

BLANK_ID = CharTokenizer.blank_id  # CTC's blank, 0 in every Glottis tokenizer

__all__ = ["AdaptConfig", "adapt_recognizer", "posterior_entropy", "supports_adaptation"]


@dataclass
class AdaptConfig:
    epochs: int = 10  # passes over the adaptation audio
    lr: float = 0.003  # Adam
    batch_size: int = 8  # utterances (or pieces) per update
    max_seconds: float = 300.0  # at most this much audio is used (an even sample of the pieces)
    piece_seconds: float = 20.0  # longer audio is cut into pieces of this length
    temperature: float = 1.0  # of the posteriors whose entropy is minimised
    exclude_blank: bool = False  # minimise the entropy of the frames whose best token is not CTC's blank only
    # Guard against collapse (onto blank, or onto confident garbage, as on noisy audio): if the adapted
    # recogniser's greedy token sequences differ from the unadapted one's by more than this share (edit
    # distance over the unadapted tokens), the unadapted recogniser is returned.
    max_change: float = 0.5
    seed: int = 0


def posterior_entropy(log_probs: torch.Tensor, temperature: float = 1.0, *, blank_id: int | None = None
                      ) -> torch.Tensor:
    """Mean per-frame entropy (nats) of ``softmax(log_probs / temperature)``, ``(T, V) -> ()``.

    ``blank_id``: only frames whose best token is not that one count (0 if there are none)."""
    lq = torch.log_softmax(log_probs / temperature, dim=-1)
    entropy = -(lq.exp() * lq).sum(-1)
    if blank_id is None:
        return entropy.mean()
    keep = (log_probs.argmax(-1) != blank_id).to(entropy.dtype)
    return (entropy * keep).sum() / keep.sum().clamp(min=1.0)


def supports_adaptation(recognizer: torch.nn.Module) -> bool:
    """Whether ``adapt_recognizer`` can adapt this recogniser (the Conv1D+BiLSTM one, not wav2vec 2.0)."""
    return isinstance(recognizer, Recognizer) and hasattr(recognizer.model, "convs")


def _pieces(waves: list[torch.Tensor], cfg: AdaptConfig, sample_rate: int) -> list[torch.Tensor]:
    size = int(cfg.piece_seconds * sample_rate)
    pieces = [w[i : i + size] for w in waves for i in range(0, w.numel(), size)]
    pieces = [p for p in pieces if p.numel() >= sample_rate // 10]  # < 0.1 s says nothing
    total = sum(p.numel() for p in pieces) / sample_rate
    if total > cfg.max_seconds:  # an even sample across the audio, in order
        keep = max(1, int(len(pieces) * cfg.max_seconds / total))
        pieces = [pieces[int(k * len(pieces) / keep)] for k in range(keep)]
    return pieces


def adapt_recognizer(recognizer: Recognizer, waves: list[torch.Tensor], cfg: AdaptConfig | None = None, *,
                     progress: bool = False) -> tuple[Recognizer, dict]:
    """A copy of ``recognizer`` adapted to ``waves`` (1-D tensors at its sample rate, one speaker).

    Returns ``(adapted, report)``; ``report`` has the config, the audio used, the mean posterior entropy
    before and after, and the wall time.
    """
    cfg = cfg or AdaptConfig()
    if not supports_adaptation(recognizer):
        raise ValueError("adaptation supports the Conv1D+BiLSTM recogniser only "
                         f"(got {type(getattr(recognizer, 'model', recognizer)).__name__})")
    start = time.perf_counter()
    sample_rate = recognizer.feature_config.sample_rate
    pieces = _pieces([w.reshape(-1).float() for w in waves], cfg, sample_rate)
    if not pieces:
        raise ValueError("adaptation needs at least 0.1 s of audio")
    adapted = copy.deepcopy(recognizer)
    device = adapted.feat_mean.device
    for p in adapted.parameters():
        p.requires_grad_(False)
    # Sorted by length, batches carry little padding; the model runs its (padded) training path with
    # dropout off and batch norm on its running statistics.
    pieces.sort(key=len)
    batches = [pieces[i : i + cfg.batch_size] for i in range(0, len(pieces), cfg.batch_size)]
    with torch.no_grad():  # raw log-mels once; the normalisation is what adapts
        adapted.eval()
        raw = []
        for batch in batches:
            lengths = torch.tensor([p.numel() for p in batch], device=device)
            waves_ = nn.utils.rnn.pad_sequence(batch, batch_first=True).to(device)
            raw.append(adapted.frontend(waves_, lengths))
    log_scale = torch.zeros_like(adapted.feat_mean, requires_grad=True)
    shift = torch.zeros_like(adapted.feat_mean, requires_grad=True)
    front = list(adapted.model.convs[0].parameters())
    for p in front:
        p.requires_grad_(True)
    opt = torch.optim.Adam([log_scale, shift, *front], lr=cfg.lr)

    blank = BLANK_ID if cfg.exclude_blank else None

    def forward(k: int) -> list[torch.Tensor]:
        """Batch ``k``'s CTC log-probs, one ``(frames, vocab)`` per piece."""
        feats, lengths = raw[k]
        lp, n = adapted.model(adapted.normalise(feats, lengths, log_scale.exp(), shift), lengths)
        return [lp[b, : int(n[b])] for b in range(len(n))]

    def entropy(rows: list[torch.Tensor]) -> torch.Tensor:
        """Mean over pieces of their mean per-frame posterior entropy."""
        return torch.stack([posterior_entropy(r, cfg.temperature, blank_id=blank) for r in rows]).mean()

    def measure() -> tuple[float, list[list[int]]]:
        """Mean entropy over the pieces, and each piece's greedy tokens."""
        total, tokens = 0.0, []
        with torch.no_grad():
            for k in range(len(batches)):
                rows = forward(k)
                total += float(entropy(rows)) * len(rows)
                tokens += [collapse_path(r.argmax(-1).tolist(), BLANK_ID)[0] for r in rows]
        return total / len(pieces), tokens

    adapted.train()
    rnn_dropout = {}
    for module in adapted.modules():
        if isinstance(module, (nn.Dropout, nn.modules.batchnorm._BatchNorm)):
            module.eval()
        elif isinstance(module, nn.RNNBase):  # its dropout between layers obeys training mode, which
            rnn_dropout[module] = module.dropout  # the padded path needs (and cuDNN's backward)
            module.dropout = 0.0
    before, tokens_before = measure()
    gen = torch.Generator().manual_seed(cfg.seed)
    bar = tqdm(total=cfg.epochs * len(batches), desc="adapting", unit="step", leave=False, disable=not progress)
    for _ in range(cfg.epochs):
        for k in torch.randperm(len(batches), generator=gen).tolist():
            opt.zero_grad()
            entropy(forward(k)).backward()
            opt.step()
            bar.update()
    bar.close()
    after, tokens_after = measure()
    adapted.eval()
    for module, p in rnn_dropout.items():
        module.dropout = p
    with torch.no_grad():  # fold the affine into the statistics: (x - m) / s * a + b = (x - m') / s'
        scale = log_scale.exp()
        std = adapted.feat_std / scale
        adapted.feat_mean.copy_(adapted.feat_mean - shift * std)
        adapted.feat_std.copy_(std)
    for p in adapted.parameters():
        p.requires_grad_(False)
    change = (sum(edit_distance(a, b) for a, b in zip(tokens_before, tokens_after, strict=True))
              / max(1, sum(len(a) for a in tokens_before)))
    collapsed = change > cfg.max_change
    if collapsed:
        log.warning("adaptation reverted: it changed %.0f%% of the greedy tokens (more than %.0f%%: a collapse)",
                    100 * change, 100 * cfg.max_change)
        adapted = copy.deepcopy(recognizer).eval()
    report = {"config": asdict(cfg), "pieces": len(pieces),
              "seconds": round(sum(p.numel() for p in pieces) / sample_rate, 2),
              "entropy_before": round(before, 4), "entropy_after": round(after, 4),
              "tokens_before": sum(map(len, tokens_before)), "tokens_after": sum(map(len, tokens_after)),
              "token_change": round(change, 4), "reverted": collapsed,
              "wall_seconds": round(time.perf_counter() - start, 2)}
    return adapted, report

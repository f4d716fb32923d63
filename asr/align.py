"""Word timestamps by CTC forced alignment of a transcript against the acoustic model's log-probs.

The transcript (usually the decoder's output) is spelled with the tokenizer, aligned with
``torchaudio.functional.forced_align`` (Viterbi over the CTC topology), and the token spans are
grouped into words at the word separator ``|``. Frame indices become seconds through the model's
frame shift (``hop_length * subsampling / sample_rate``).
"""

from __future__ import annotations

import torch

from asr.tokenizer import Tokenizer

__all__ = ["token_spans", "word_timestamps"]


def token_spans(
    log_probs: torch.Tensor, token_ids: list[int], blank_id: int = 0
) -> list[tuple[int, int, int]]:
    """Viterbi CTC alignment of ``token_ids`` to ``log_probs``.

    Args:
        log_probs: ``(T, V)`` CTC log-probabilities of one utterance.
        token_ids: the ``L`` target ids (no blanks).
        blank_id: the CTC blank.

    Returns:
        ``L`` spans ``(token_id, start_frame, end_frame)``, end exclusive, in target order.

    Raises:
        ValueError: ``T`` is too short for the targets (CTC needs ``T >= L + repeats``).
    """
    import torchaudio.functional as F

    if log_probs.ndim != 2:
        raise ValueError(f"log_probs must be (T, V), got shape {tuple(log_probs.shape)}")
    if not token_ids:
        return []
    frames = log_probs.shape[0]
    repeats = sum(a == b for a, b in zip(token_ids, token_ids[1:], strict=False))
    if frames < len(token_ids) + repeats:
        raise ValueError(
            f"{frames} frames cannot hold {len(token_ids)} tokens with {repeats} repeats (CTC needs T >= L + repeats)"
        )
    emissions = log_probs.detach().to(device="cpu", dtype=torch.float32)[None]  # (1, T, V)
    targets = torch.tensor([token_ids], dtype=torch.int32)  # (1, L)
    path, scores = F.forced_align(emissions, targets, blank=blank_id)
    spans = F.merge_tokens(path[0], scores[0].exp(), blank=blank_id)
    if len(spans) != len(token_ids):  # merge_tokens splits repeats only at blanks, which CTC guarantees
        raise RuntimeError(f"alignment gave {len(spans)} spans for {len(token_ids)} tokens")
    return [(int(s.token), int(s.start), int(s.end)) for s in spans]


def word_timestamps(
    log_probs: torch.Tensor,
    text: str,
    tokenizer: Tokenizer,
    frame_shift_s: float,
) -> list[dict]:
    """Start and end time of every word of ``text`` in the audio behind ``log_probs``.

    Args:
        log_probs: ``(T, V)`` CTC log-probabilities of one utterance (one segment).
        text: normalised transcript to align (e.g. the decoded hypothesis).
        tokenizer: the model's tokenizer (blank and ``|`` separator ids).
        frame_shift_s: seconds per frame of ``log_probs``.

    Returns:
        ``[{"word": str, "start": float, "end": float}, ...]`` in seconds from the first frame; a
        word spans from its first token's first frame to its last token's last frame (inclusive,
        so ``end = (last frame + 1) * frame_shift_s``). Empty text gives ``[]``.
    """
    words = text.split()
    ids = tokenizer.encode(text)
    spans = token_spans(log_probs, ids, tokenizer.blank_id)
    out: list[dict] = []
    current: list[tuple[int, int, int]] = []
    for span in [*spans, None]:
        if span is None or span[0] == tokenizer.word_separator_id:
            if current:
                word = words[len(out)]
                out.append(
                    {
                        "word": word,
                        "start": current[0][1] * frame_shift_s,
                        "end": current[-1][2] * frame_shift_s,
                    }
                )
                current = []
            continue
        current.append(span)
    if len(out) != len(words):
        raise RuntimeError(f"aligned {len(out)} words for {len(words)} in {text!r}")
    return out

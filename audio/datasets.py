"""Training-time datasets: manifest -> waves, length-bucketed batches, padding, and Hugging Face bridges.

Datasets read manifests; they never walk directories. ``datasets`` (Hugging Face) is imported only
inside the functions that need it, because importing it takes over a second.
"""

from __future__ import annotations

import io
import logging
import os
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import soundfile as sf
import torch
from torch.nn.utils.rnn import pad_sequence

from audio.io import AudioError, load, save
from audio.manifest import Utterance, read_manifest, resolve_audio

if TYPE_CHECKING:
    import datasets as hf

__all__ = [
    "UtteranceDataset",
    "BucketBatchSampler",
    "collate_waves",
    "manifest_to_hf_dataset",
    "load_local_hf_dataset",
    "hf_dataset_to_utterances",
]

log = logging.getLogger(__name__)


class UtteranceDataset(torch.utils.data.Dataset):
    """The utterances of one manifest, loaded as mono float32 waves at ``sample_rate``.

    ``dataset[i]`` is ``{"id": str, "wave": (samples,) float32, "text": str, "speaker": str}``;
    ``wave`` is ``transform(wave)`` when a transform is given (it may return e.g. ``(frames, C)``).
    """

    def __init__(
        self,
        manifest: str | os.PathLike,
        *,
        sample_rate: int,
        transform: Callable[[torch.Tensor], torch.Tensor] | None = None,
        records: Sequence[Utterance] | None = None,
    ):
        """``records``: a filtered subset of the manifest's records (default: all of them)."""
        self.records = list(records) if records is not None else read_manifest(manifest)
        self.paths = [resolve_audio(manifest, r) for r in self.records]
        self.sample_rate = sample_rate
        self.transform = transform

    @property
    def durations(self) -> list[float]:
        """Seconds per utterance, from the manifest (for :class:`BucketBatchSampler`)."""
        return [r.duration for r in self.records]

    def __len__(self) -> int:
        return len(self.records)

    def __getitem__(self, index: int) -> dict:
        record = self.records[index]
        wave, _ = load(self.paths[index], self.sample_rate)
        if self.transform is not None:
            wave = self.transform(wave)
        return {"id": record.id, "wave": wave, "text": record.text, "speaker": record.speaker}


def collate_waves(items: Sequence[dict]) -> dict:
    """Pad the ``wave`` of each item with zeros along its first axis.

    Returns ``{"waves": (B, T_max, ...) float32, "lengths": (B,) int64, "ids", "texts", "speakers"}``
    where ``T`` is samples for raw waves, or frames when the dataset's transform returned ``(T, C)``.
    """
    waves = [item["wave"] for item in items]
    return {
        "waves": pad_sequence(waves, batch_first=True),
        "lengths": torch.tensor([w.shape[0] for w in waves], dtype=torch.int64),
        "ids": [item["id"] for item in items],
        "texts": [item["text"] for item in items],
        "speakers": [item["speaker"] for item in items],
    }


class BucketBatchSampler(torch.utils.data.Sampler[list[int]]):
    """Batches of similar-length utterances under a padded-length budget.

    A batch is valid when ``len(batch) * max(length in batch) <= budget``. Lengths are
    ``duration * frames_per_second`` with a ``max_frames`` budget, or plain seconds with
    ``max_seconds``. Utterances longer than the budget on their own are left out (logged once).

    Each epoch: utterances are split into ``num_buckets`` equal-count length buckets; each bucket
    is shuffled and filled greedily into batches; the batches are shuffled. Everything depends only
    on ``(seed, epoch)``, so every DDP rank builds the same list and takes ``batches[rank::R]``,
    after dropping the last ``len % R`` batches so that all ranks get the same count (with
    ``num_replicas > 1`` a few utterances sit out each epoch; which ones changes per epoch).

    To resume mid-epoch, save :meth:`state_dict` with the number of batches actually trained on
    (a DataLoader prefetches, so the sampler's own count runs ahead) and load it into a new sampler.
    """

    def __init__(
        self,
        durations: Sequence[float],
        *,
        max_seconds: float | None = None,
        max_frames: float | None = None,
        frames_per_second: float | None = None,
        max_batch_size: int | None = None,
        num_buckets: int = 10,
        shuffle: bool = True,
        seed: int = 0,
        num_replicas: int = 1,
        rank: int = 0,
    ):
        if (max_seconds is None) == (max_frames is None):
            raise ValueError("give exactly one of max_seconds or max_frames")
        if max_frames is not None and frames_per_second is None:
            raise ValueError("max_frames needs frames_per_second")
        if not 0 <= rank < num_replicas:
            raise ValueError(f"rank {rank} is not in [0, {num_replicas})")
        scale = 1.0 if max_seconds is not None else frames_per_second
        self.budget = float(max_seconds if max_seconds is not None else max_frames)
        self.lengths = np.asarray(durations, dtype=np.float64) * scale
        fits = np.flatnonzero(self.lengths <= self.budget)
        self.too_long = sorted(set(range(len(self.lengths))) - set(fits.tolist()))
        if self.too_long:
            log.warning(
                "%d utterance(s) exceed the batch budget %g alone and are left out",
                len(self.too_long),
                self.budget,
            )
        by_length = fits[np.argsort(self.lengths[fits], kind="stable")]
        self.buckets = [b for b in np.array_split(by_length, max(1, num_buckets)) if len(b)]
        self.max_batch_size = max_batch_size
        self.shuffle = shuffle
        self.seed = seed
        self.num_replicas = num_replicas
        self.rank = rank
        self.epoch = 0
        self._skip = 0  # batches to skip at the start of the next iteration (resume)
        self._done = 0  # batches handed out so far this epoch
        self._cache: tuple[int, list[list[int]]] | None = None

    def set_epoch(self, epoch: int) -> None:
        """Choose the epoch whose shuffle the next iteration uses (call before each epoch)."""
        if epoch != self.epoch:
            self._skip = self._done = 0
        self.epoch = epoch

    def _fill(self, order: np.ndarray) -> list[list[int]]:
        batches, batch, longest = [], [], 0.0
        for index in order.tolist():
            longest_with = max(longest, self.lengths[index])
            full = self.max_batch_size is not None and len(batch) >= self.max_batch_size
            if batch and (full or (len(batch) + 1) * longest_with > self.budget):
                batches.append(batch)
                batch, longest_with = [], self.lengths[index]
            batch.append(index)
            longest = longest_with
        if batch:
            batches.append(batch)
        return batches

    def _epoch_batches(self) -> list[list[int]]:
        """This rank's batches for ``self.epoch``, all of them (ignoring any resume skip)."""
        if self._cache is None or self._cache[0] != self.epoch:
            rng = np.random.default_rng([self.seed, self.epoch])
            batches = []
            for bucket in self.buckets:
                batches += self._fill(rng.permutation(bucket) if self.shuffle else bucket)
            if self.shuffle:
                batches = [batches[i] for i in rng.permutation(len(batches))]
            usable = len(batches) - len(batches) % self.num_replicas
            self._cache = (self.epoch, batches[self.rank : usable : self.num_replicas])
        return self._cache[1]

    def __iter__(self) -> Iterator[list[int]]:
        batches = self._epoch_batches()
        start, self._skip = self._skip, 0
        self._done = start
        for position in range(start, len(batches)):
            self._done = position + 1
            yield batches[position]

    def __len__(self) -> int:
        """Batches the next iteration yields (the rest of the epoch after a resume)."""
        return max(0, len(self._epoch_batches()) - self._skip)

    def state_dict(self, *, batches_done: int | None = None) -> dict:
        """``{"seed", "epoch", "batches_done"}``; pass ``batches_done`` if you know it better."""
        done = self._done if batches_done is None else batches_done
        return {"seed": self.seed, "epoch": self.epoch, "batches_done": int(done)}

    def load_state_dict(self, state: dict) -> None:
        """Continue an interrupted epoch: the next iteration starts after ``batches_done`` batches."""
        if state["seed"] != self.seed:
            raise ValueError(f"sampler state has seed {state['seed']}, this sampler has {self.seed}")
        self.epoch = int(state["epoch"])
        self._skip = self._done = int(state["batches_done"])


def manifest_to_hf_dataset(manifest_path: str | os.PathLike, sample_rate: int | None = None) -> hf.Dataset:
    """A Hugging Face ``Dataset`` with the manifest's fields; ``audio`` is an ``Audio`` column.

    Decoding happens on access (``ds[i]["audio"]["array"]``, ``["sampling_rate"]``), resampled to
    ``sample_rate`` if given. In datasets 5.x decoding goes through torchcodec (ffmpeg).
    """
    import datasets

    records = read_manifest(manifest_path)
    features = datasets.Features(
        {
            "id": datasets.Value("string"),
            "audio": datasets.Audio(sampling_rate=sample_rate),
            "text": datasets.Value("string"),
            "speaker": datasets.Value("string"),
            "duration": datasets.Value("float64"),
            "sample_rate": datasets.Value("int64"),
            "engine": datasets.Value("string"),
            "voice": datasets.Value("string"),
        }
    )
    columns = {name: [getattr(r, name) for r in records] for name in features}
    columns["audio"] = [str(resolve_audio(manifest_path, r)) for r in records]
    return datasets.Dataset.from_dict(columns, features=features)


def load_local_hf_dataset(path: str | os.PathLike, *, split: str | None = None) -> hf.Dataset:
    """A dataset from a ``save_to_disk`` folder, or any local folder ``datasets.load_dataset`` reads.

    A dataset dict needs ``split`` unless it holds a single split.
    """
    import datasets

    path = Path(path)
    if not path.is_dir():
        raise FileNotFoundError(f"{path}: no such dataset folder")
    saved = any((path / name).is_file() for name in ("state.json", "dataset_dict.json"))
    dataset = datasets.load_from_disk(str(path)) if saved else datasets.load_dataset(str(path))
    if isinstance(dataset, datasets.DatasetDict):
        if split is None and len(dataset) == 1:
            split = next(iter(dataset))
        if split not in dataset:
            raise ValueError(f"{path}: choose a split from {sorted(dataset)}")
        dataset = dataset[split]
    return dataset


def _decode_hf_audio(value, *, where: str) -> tuple[np.ndarray, int]:
    """``(samples,)`` mono float32 and its rate from an undecoded Audio value or an array dict."""
    if isinstance(value, dict) and value.get("array") is not None:
        data, sample_rate = np.asarray(value["array"], dtype=np.float32), int(value["sampling_rate"])
        if data.ndim == 2:
            data = data.mean(axis=0)  # datasets stores (channels, samples)
    elif isinstance(value, dict) and (value.get("bytes") or value.get("path")):
        source = io.BytesIO(value["bytes"]) if value.get("bytes") else value["path"]
        try:
            data, sample_rate = sf.read(source, dtype="float32", always_2d=True)
        except (RuntimeError, sf.LibsndfileError) as err:
            raise AudioError(where, f"cannot decode audio ({err})") from None
        data = data.mean(axis=1)  # (samples, C) -> (samples,)
    else:
        raise AudioError(where, "no audio bytes, path or array in this row")
    if data.size == 0:
        raise AudioError(where, "audio has zero length")
    if not np.isfinite(data).all():
        raise AudioError(where, "audio contains NaN or infinite samples")
    return data, sample_rate


def hf_dataset_to_utterances(
    dataset: hf.Dataset,
    *,
    out_dir: str | os.PathLike,
    audio_column: str = "audio",
    text_column: str = "text",
    speaker_column: str | None = None,
    id_column: str | None = None,
    engine: str = "hf",
    skipped: list[str] | None = None,
) -> list[Utterance]:
    """Write each row's audio to ``out_dir/<id>.wav`` (mono, 16-bit) and return its records.

    Audio is read with soundfile from the stored bytes/path (or taken from an ``array`` column),
    not resampled. ``id`` and ``speaker`` come from ``id_column``/``speaker_column``, else an
    ``id`` / ``speaker`` / ``speaker_id`` column if present, else the row number / ``""``.
    Rows whose audio cannot be decoded are skipped, logged, and appended to ``skipped``.
    Returned audio paths are absolute.
    """
    import datasets

    if isinstance(dataset.features.get(audio_column), datasets.Audio):
        dataset = dataset.cast_column(audio_column, datasets.Audio(decode=False))
    columns = dataset.column_names
    for column in (audio_column, text_column, id_column, speaker_column):
        if column is not None and column not in columns:
            raise ValueError(f"dataset has no column {column!r}; its columns are {columns}")
    id_column = id_column or ("id" if "id" in columns else None)
    speaker_column = speaker_column or next((c for c in ("speaker", "speaker_id") if c in columns), None)
    out_dir = Path(out_dir).resolve()
    width = max(6, len(str(len(dataset))))
    records, bad = [], []
    for index, row in enumerate(dataset):
        utt_id = str(row[id_column]) if id_column else f"{index:0{width}d}"
        where = f"{engine}[{index}] ({utt_id})"
        path = out_dir / f"{utt_id.replace('/', '_')}.wav"
        try:
            wave, sample_rate = _decode_hf_audio(row[audio_column], where=where)
            save(path, wave, sample_rate)
        except AudioError as err:
            bad.append(str(err))
            continue
        records.append(
            Utterance(
                id=utt_id,
                audio=str(path),
                text=str(row[text_column]).strip(),
                speaker=str(row[speaker_column]) if speaker_column else "",
                duration=len(wave) / sample_rate,
                sample_rate=sample_rate,
                engine=engine,
            )
        )
    if bad:
        log.warning("%s: skipped %d undecodable row(s):\n  %s", engine, len(bad), "\n  ".join(bad))
    if skipped is not None:
        skipped.extend(bad)
    return records

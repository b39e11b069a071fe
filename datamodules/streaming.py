"""The streaming DataModule every modality builds on: URLs, resampled training, exact eval, safe decoding.

(Over 400 lines because it is one class, the whole surface a modality subclasses and a config sets: its argument
docs, which `perceiver-lit fit --help` prints, and the per-sample hooks. The parts it uses live beside it:
sources.py, stream.py, loader.py, buffers.py, skip_counts.py, shard_checks.py, errors.py.)

How a modality plugs in (see image.py for a complete, short example)::

    class MyDataModule(StreamingDataModule):
        input_exts = ("npy",)                 # extensions that may hold the input; nothing else is ever read

        def __init__(self, my_option: int = 1, **kwargs):
            super().__init__(**kwargs)        # base args: urls, batch_size, num_workers, num_classes, ...
            self.input_shape = (1024, 3)      # per-sample shape of batch["inputs"] (a fact, set in __init__)

        def decode_inputs(self, sample, train):   # sample: {"__key__", "__url__", ext: bytes}
            x = ...                           # decode sample[ext] for one ext in input_exts, then transform
            return torch.as_tensor(x)         # a Tensor, or a dict of Tensors (multimodal)

A subclass may also override `permute_inputs` (how `permute_seed` applies; default: elements of the flattened
leading dims, see transforms/permute.py), `decode_target` (default: `cls` or `json`) and `extra_fields` (text
adds `pad_mask`). Everything else (sharding, shuffling, batching, corrupt-sample handling, DDP) lives here.

A sample that fails to decode (truncated image, bad npy, missing label or input) raises inside `decode_inputs` /
`decode_target`; the base catches it, logs ONE warning line naming shard and key, counts it
(`self.corrupt_samples`) and goes on. Nothing is ever unpickled: shards are read as raw bytes and only the
subclass's `input_exts` plus `cls`/`json` are looked at.
"""

from __future__ import annotations

import json
import logging
import random
from collections.abc import Iterator, Sequence
from typing import Any

import lightning as L
import numpy as np
import torch
from torch.utils.data import DataLoader

from datamodules.buffers import stack
from datamodules.errors import DataError, LabelRangeError, label_range_message
from datamodules.loader import MixingLoader, _as_is, _worker_context
from datamodules.shard_checks import check_shard_headers, scan_eval_shards
from datamodules.skip_counts import SkipCounts
from datamodules.sources import ShardOpenError, expand_urls, is_local, iter_tar_samples, read_index_counts
from datamodules.stream import ShardStream, StreamSource, _rank_world

log = logging.getLogger("datamodules")


# ----------------------------------------------------------------------------------------------- the DataModule
class StreamingDataModule(L.LightningDataModule):
    """WebDataset-style tar shards -> batches `{"inputs", "target", "key"}` (docs/architecture.md).

    Args:
        train_urls, val_urls, test_urls: shard URLs: brace patterns ("d/train-{000000..000009}.tar"), local paths,
            "pipe:cmd", http(s)/s3/gs URLs (webdataset's gopen); a list or a "::"-separated string of patterns.
        batch_size: per device.
        num_workers: DataLoader workers per device (0: in the main process).
        shuffle_buffer: samples in each worker's shuffle buffer (training).
        samples_per_epoch: training samples per epoch over all ranks; sets a fixed, equal batch count per rank.
            Default: the train count from index.json.
        num_classes, multilabel: label facts (multi-label: `json` list of class indices -> multi-hot).
        permute_seed, permute_block: one fixed permutation of input elements (docs/architecture.md).
        skip_bad_shards: warn and skip shards that cannot be opened instead of raising.
        check_counts: compare eval sample counts with index.json (mismatch is an error).
        scan_eval_shards: at setup, read every local val/test/predict shard to its end: a truncated shard, a
            sample count that differs from index.json (with check_counts) or a label at or above num_classes
            fails there, before training, not at the first validation an epoch later.
        max_eval_corrupt_fraction: validate/test/predict report how many samples they skipped as corrupt; more
            than this fraction of the samples read is an error (the metric would describe a subset). 0: any.
            Raw files given as `predict_files` are exempt: an unreadable one is skipped, named and counted.
        mix_batches: cross-worker shuffle: this many consecutive batches (from different workers) are re-dealt
            in the main process (training with num_workers > 1; 1 = off). Costs one copy per sample.
        pin_memory: hand batches over in pinned (page-locked) memory, for asynchronous host-to-device copies;
            with mixing on, the mixed batches are pinned (the mix writes them into pinned memory). No effect,
            with one warning, where no accelerator supports pinning.
        seed: base seed for shard resampling and shuffling (each rank and worker derives its own).
        predict_urls: shards for `perceiver-lit predict` (default: `test_urls`); read like eval, exactly once.
            Labels are optional there: unlabelled samples are predicted, not skipped.
        predict_files: raw files for `perceiver-lit predict` instead of shards (wins over predict_urls): a glob
            ("photos/*.jpg"), a folder (every file under it), a list file (one path a line; a file whose extension
            is not an input extension of the module), or a list of these. Decoded with the eval transforms;
            unreadable files and files of another modality are skipped, named and counted like corrupt samples.
        class_names: the names of the classes (index = position); default: `classes.json` beside the first local
            shard of train/val/test/predict_urls (written by perceiver-lit-shards), else None. The CLI passes them
            to the task, which keeps them in its checkpoint.
    """

    input_exts: tuple[str, ...] = ()  # the extensions a subclass decodes; nothing else is ever read
    # input extensions whose decoder takes any buffer: large members of local shards arrive as zero-copy
    # memoryviews of the memory-mapped shard (everything else, and every member of a streamed shard, is bytes)
    buffer_exts: tuple[str, ...] = ()
    label_exts: tuple[str, ...] = ("cls", "json")

    def __init__(
        self,
        train_urls: str | list[str] | None = None,
        val_urls: str | list[str] | None = None,
        test_urls: str | list[str] | None = None,
        batch_size: int = 64,
        num_workers: int = 2,
        shuffle_buffer: int = 1000,
        samples_per_epoch: int | None = None,
        num_classes: int = 10,
        multilabel: bool = False,
        permute_seed: int | None = None,
        permute_block: int | tuple[int, ...] = 1,
        skip_bad_shards: bool = False,
        check_counts: bool = True,
        scan_eval_shards: bool = True,
        max_eval_corrupt_fraction: float = 0.01,
        mix_batches: int = 4,
        pin_memory: bool = False,
        seed: int = 0,
        predict_urls: str | list[str] | None = None,
        predict_files: str | list[str] | None = None,
        class_names: list[str] | None = None,
    ):
        super().__init__()
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        self.train_urls, self.val_urls, self.test_urls = train_urls, val_urls, test_urls
        self.predict_urls = predict_urls if predict_urls is not None else test_urls  # `perceiver-lit predict`
        self.batch_size, self.num_workers, self.shuffle_buffer = batch_size, num_workers, shuffle_buffer
        self.samples_per_epoch = samples_per_epoch
        self.num_classes, self.multilabel = num_classes, multilabel
        self.permute_seed, self.permute_block = permute_seed, permute_block
        self.skip_bad_shards, self.check_counts = skip_bad_shards, check_counts
        if not 0.0 <= max_eval_corrupt_fraction <= 1.0:
            raise ValueError(f"max_eval_corrupt_fraction must be in [0, 1], got {max_eval_corrupt_fraction}")
        self.scan_eval_shards, self.max_eval_corrupt_fraction = scan_eval_shards, max_eval_corrupt_fraction
        self.mix_batches, self.pin_memory, self.seed = mix_batches, pin_memory, seed
        self.input_shape: tuple[int, ...] | dict[str, tuple[int, ...]] = ()  # set by the subclass
        self.predict_files = predict_files
        if class_names is None:
            from datamodules.class_names import find_class_names

            class_names = find_class_names([train_urls, val_urls, test_urls, self.predict_urls], num_classes)
        self.class_names: list[str] | None = list(class_names) if class_names else None
        self.skipped = SkipCounts()  # corrupt samples and unreadable shards, counted across the workers
        self.rng = random.Random(seed)  # augmentation randomness; reseeded per epoch, rank and worker
        self._streams: dict[str, ShardStream] = {}

    # ---- the corrupt-data hook the training side reads
    @property
    def corrupt_samples(self) -> int:
        """Corrupt samples skipped so far on this rank (all workers, all epochs). A task or the
        `LogCorruptSamples` callback logs it; sum over ranks with sync_dist."""
        return self.skipped.corrupt_samples

    @property
    def bad_shards(self) -> int:
        """Shards skipped because they could not be opened (skip_bad_shards=True)."""
        return self.skipped.bad_shards

    @property
    def eval_counts(self) -> tuple[int, int]:
        """(corrupt samples skipped, samples read) by val/test/predict passes so far on this rank; the
        `LogCorruptSamples` callback reports the difference over one pass and checks it with `check_eval_corrupt`."""
        return self.skipped.eval_counts

    def check_eval_corrupt(self, stage: str, skipped: int, read: int) -> None:
        """Raise DataError when one val/test/predict pass (summed over ranks) skipped more than
        max_eval_corrupt_fraction of the samples it read: its metrics would describe a subset of the data."""
        fraction = skipped / read if read else 0.0
        # Raw files given to predict (predict_files) are the user's own: an unreadable one is skipped, named and
        # counted, and the others are still predicted; shards are a data set, held to the limit.
        raw_files = stage == "predict" and self.predict_files
        if fraction > self.max_eval_corrupt_fraction and not raw_files:
            raise DataError(
                f"{stage}: {skipped} of {read} samples ({fraction:.1%}) were corrupt and skipped, more "
                f"than data.init_args.max_eval_corrupt_fraction={self.max_eval_corrupt_fraction}: the "
                "metrics would describe a subset of the data. Fix the shards (see the warnings above), or "
                "raise the threshold to accept it"
            )

    # ---- what the stream reads and calls (stream.py); made anew with each loader, so a setting changed between
    # loaders (Lightning's batch-size finder sets batch_size) reaches the next one
    def stream_source(self) -> StreamSource:
        return StreamSource(
            seed=self.seed,
            batch_size=self.batch_size,
            num_workers=self.num_workers,
            shuffle_buffer=self.shuffle_buffer,
            samples_per_epoch=self.samples_per_epoch,
            skip_bad_shards=self.skip_bad_shards,
            check_counts=self.check_counts,
            buffer_exts=self.buffer_exts,
            start_worker=self._start_worker,
            make_sample=self._make_sample,
            collate=self.collate,
            corrupt=self.skipped.corrupt,
            bad_shard=self.skipped.bad_shard,
            count_read=self.skipped.count_read,
            read_file=self.iter_file_samples,
            trainer_epoch=self._trainer_epoch,
        )

    def _start_worker(self, slot: int, rng: random.Random) -> None:
        """In each worker (slot 0: the main process), per epoch: its counter slot and augmentation randomness."""
        self.skipped.slot, self.rng = slot, rng

    def _trainer_epoch(self) -> int | None:
        trainer = getattr(self, "trainer", None)
        return trainer.current_epoch if trainer is not None else None

    # ---- per-sample decoding (runs in the workers)
    def decode_inputs(self, sample: dict[str, Any], train: bool) -> torch.Tensor | dict[str, torch.Tensor]:
        """Decode and transform the input of one raw sample; raise on bad data. Subclasses implement it."""
        raise NotImplementedError

    def find_ext(self, sample: dict[str, Any], exts: Sequence[str] | None = None) -> str:
        """The first of `exts` (default: input_exts) present in a raw sample, else a KeyError naming both."""
        exts = self.input_exts if exts is None else exts
        for ext in exts:
            if ext in sample:
                return ext
        found = sorted(k for k in sample if not k.startswith("__"))
        raise KeyError(f"no input among {list(exts)}; sample has {found}")

    def decode_target(self, sample: dict[str, Any]) -> torch.Tensor:
        """`cls`: ASCII class index -> int64 (), or a one-hot float32 (C,) when multilabel (a sample with one
        label). `json`: a list of indices (or {"label": ...}) -> float32 (C,) multi-hot when multilabel, else its
        single index. `json` wins when a multilabel sample has both."""
        if "cls" in sample and not (self.multilabel and "json" in sample):
            y = int(sample["cls"].decode("ascii").strip())
            if y >= self.num_classes:
                raise LabelRangeError(f"label {y} is not below data.init_args.num_classes={self.num_classes}")
            if y < 0:
                raise ValueError(f"label {y} outside [0, {self.num_classes})")
            if not self.multilabel:
                return torch.tensor(y, dtype=torch.int64)
            labels = [y]
        elif "json" in sample:
            obj = json.loads(sample["json"].decode("utf-8"))
            labels = obj.get("label", obj.get("labels")) if isinstance(obj, dict) else obj
            labels = [labels] if isinstance(labels, int) else list(labels)
            high = [c for c in labels if isinstance(c, int) and c >= self.num_classes]
            if high:
                raise LabelRangeError(f"label {max(high)} is not below data.init_args.num_classes={self.num_classes}")
            if any(not isinstance(c, int) or not 0 <= c < self.num_classes for c in labels):
                raise ValueError(f"labels {labels} not class indices in [0, {self.num_classes})")
            if not self.multilabel:
                if len(labels) != 1:
                    raise ValueError(f"single-label data module got {len(labels)} labels")
                return torch.tensor(labels[0], dtype=torch.int64)
        else:
            raise KeyError(f"no label: expected one of {list(self.label_exts)}")
        target = np.zeros(self.num_classes, dtype=np.float32)  # multi-hot; numpy: 1.6 us against torch's 6.3
        target[labels] = 1.0
        return torch.from_numpy(target)

    def permute_inputs(self, inputs: Any) -> Any:
        """Apply the fixed `permute_seed` permutation (default: elements = all dims but the last)."""
        from datamodules.transforms.permute import permute_elements

        return permute_elements(inputs, self.permute_seed, block=self.permute_block)

    def check_permute_block(self) -> None:
        """Apply the permutation to zeros of `input_shape` once, at config time (a subclass calls it at the end of
        `__init__`): a block that does not tile the sample is a config error here, not a stream of skipped
        samples later."""
        if self.permute_seed is None:
            return
        shape = self.input_shape
        zeros = {k: torch.zeros(v) for k, v in shape.items()} if isinstance(shape, dict) else torch.zeros(shape)
        try:
            self.permute_inputs(zeros)
        except ValueError as e:
            raise ValueError(f"{type(self).__name__}: permute_block does not tile input_shape {shape}: {e}") from e

    def extra_fields(self, sample: dict[str, Any], inputs: Any) -> dict[str, Any]:
        """Extra per-sample tensors to batch (text: pad_mask). Default: none."""
        return {}

    def _make_sample(self, raw: dict[str, Any], train: bool, labels_optional: bool = False) -> dict[str, Any] | None:
        try:
            inputs = self.decode_inputs(raw, train)
            if self.permute_seed is not None:
                inputs = self.permute_inputs(inputs)
            if labels_optional and self.needs_label and not any(e in raw for e in self.label_exts):
                target = self.missing_target()  # predict: an unlabelled sample is predicted, not corrupt
            else:
                target = self.decode_target(raw) if self.needs_label else self.default_target(inputs)
            extra = self.extra_fields(raw, inputs)  # after the permutation: a pad_mask follows the bytes
        except LabelRangeError as e:  # the config, not the sample: stop
            raise LabelRangeError(label_range_message(raw, e)) from None
        except Exception as e:  # noqa: BLE001 - any decoding failure is a corrupt sample
            self.skipped.corrupt(raw.get("__url__", "?"), raw.get("__key__", "?"), e, evaluating=not train)
            return None
        return {"inputs": inputs, "target": target, "key": raw["__key__"], **extra}

    def collate(self, samples: list[dict[str, Any]]) -> dict[str, Any]:
        """Stack per-sample tensors (and dicts of tensors); keys become a list of str; the inputs are batched by
        `collate_inputs`."""
        out: dict[str, Any] = {}
        for k, v in samples[0].items():
            if k == "inputs":
                out[k] = self.collate_inputs([s[k] for s in samples])
            elif k == "key":
                out[k] = [s[k] for s in samples]
            elif isinstance(v, dict):
                out[k] = {kk: stack([s[k][kk] for s in samples]) for kk in v}
            else:
                out[k] = stack([s[k] for s in samples])
        return out

    def collate_inputs(self, inputs: list[Any]) -> Any:
        """Batch the per-sample inputs (tensors, or dicts of tensors). Subclasses that turn uint8 into the
        normalised float batch, or hand on rows decoded in place, override this."""
        if isinstance(inputs[0], dict):
            return {k: stack([x[k] for x in inputs]) for k in inputs[0]}
        return stack(inputs)

    # ---- Lightning hooks
    def _rank_and_world(self) -> tuple[int, int]:
        trainer = getattr(self, "trainer", None)
        return (trainer.global_rank, trainer.world_size) if trainer is not None else _rank_world()

    def _world(self) -> int:
        return self._rank_and_world()[1]

    def setup(self, stage: str | None = None) -> None:
        world, nw = self._world(), max(self.num_workers, 1)
        wanted = {
            "fit": ["train", "val"],
            "validate": ["val"],
            "test": ["test"],
            "predict": ["predict"],
            None: ["train", "val", "test"],
        }
        for split in wanted.get(stage, ["train", "val", "test"]):
            if split == "predict" and self.predict_files is not None and split not in self._streams:
                from datamodules.files import expand_files

                files = expand_files(self.predict_files, self.input_exts)
                self._streams[split] = ShardStream(self.stream_source(), files, train=False, counts=None, files=True)
                continue
            spec = getattr(self, f"{split}_urls")
            if spec is None or split in self._streams:
                continue
            urls = expand_urls(spec)
            counts = read_index_counts(urls)
            if split == "train":
                if self.samples_per_epoch is None:
                    if counts is None:
                        raise DataError(f"samples_per_epoch is needed: no index.json counts for train_urls {spec!r}")
                    self.samples_per_epoch = sum(counts.values())
                if self.samples_per_epoch < world * self.batch_size:
                    raise DataError(
                        f"samples_per_epoch={self.samples_per_epoch} < {world} ranks x batch_size "
                        f"{self.batch_size}: no full batch per rank"
                    )
            elif len(urls) < world * nw:
                raise DataError(
                    f"{split}_urls has {len(urls)} shards for {world} ranks x {nw} workers: exact eval "
                    "gives each worker whole shards; write more, smaller shards (perceiver-lit-shards "
                    "--maxcount) or lower num_workers"
                )
            check_shard_headers(split, urls, self.skip_bad_shards)
            top = read_index_counts(urls, "max_label") if self.needs_label else None
            if top and max(top.values()) >= self.num_classes:  # the writers' record: no shard needs to be read
                url = max(top, key=top.get)
                raise LabelRangeError(
                    f"{split} shard {url!r} holds labels up to {top[url]} (index.json), not below "
                    f"data.init_args.num_classes={self.num_classes}: set data.init_args.num_classes "
                    "to the number of classes the shards hold (labels are 0-based)"
                )
            self._check_first_sample(split, urls)
            if split != "train" and self.scan_eval_shards:
                scan_eval_shards(split, urls, counts, self.check_counts, self.input_exts, self._check_label_range)
            self._streams[split] = ShardStream(
                self.stream_source(), urls, train=split == "train", counts=counts, labels_optional=split == "predict"
            )

    def _check_first_sample(self, split: str, urls: list[str]) -> None:
        """Fail before training if the first sample of the first local shard lacks the input or the label."""
        if not urls or not is_local(urls[0]):
            return
        try:
            raw = next(iter_tar_samples(urls[0], lambda *a: None), None)
        except ShardOpenError:
            if self.skip_bad_shards:
                return
            raise
        if raw is None:
            return
        found = sorted(k for k in raw if not k.startswith("__"))
        if self.input_exts and not any(e in raw for e in self.input_exts):
            raise DataError(
                f"{split} shard {urls[0]!r} key {raw['__key__']!r}: no input key among "
                f"{list(self.input_exts)} (found {found})"
            )
        if self.needs_label and split != "predict" and not any(e in raw for e in self.label_exts):
            raise DataError(
                f"{split} shard {urls[0]!r} key {raw['__key__']!r}: no label key among "
                f"{list(self.label_exts)} (found {found})"
            )
        self._check_label_range(split, raw)

    def _check_label_range(self, split: str, raw: dict[str, Any]) -> None:
        """Raise LabelRangeError (naming split, shard and key) if the sample's label is >= num_classes."""
        if not self.needs_label or not any(e in raw for e in self.label_exts):
            return
        try:
            self.decode_target(raw)
        except LabelRangeError as e:
            raise LabelRangeError(label_range_message(raw, e, split)) from None
        except Exception:  # noqa: BLE001 - a damaged label is a corrupt sample, skipped and counted when read
            pass

    needs_label = True  # False: unlabelled data (text MLM); the target comes from default_target

    def default_target(self, inputs: Any) -> torch.Tensor:
        return torch.tensor(-1, dtype=torch.int64)

    def missing_target(self) -> torch.Tensor:
        """The target of an unlabelled sample in predict: -1 (single-label) or all -1 (C,) (multi-label)."""
        if self.multilabel:
            return torch.full((self.num_classes,), -1.0)
        return torch.tensor(-1, dtype=torch.int64)

    def iter_file_samples(self, path: str) -> Iterator[dict[str, Any]]:
        """Raw samples of one file given in `predict_files` (default: the whole file is one sample under its
        extension, keyed by its path). Raises OSError when the file cannot be read."""
        from datamodules.files import file_sample

        yield file_sample(path)

    def __getstate__(self) -> dict[str, Any]:
        state = self.__dict__.copy()  # workers started by spawn get the module without its trainer
        state["trainer"] = None
        return state

    def _loader(self, split: str) -> DataLoader:
        if split not in self._streams:
            self.setup({"train": "fit", "val": "validate", "test": "test", "predict": "predict"}[split])
        if split not in self._streams:
            raise DataError(f"no {split}_urls configured")
        stream = self._streams[split]
        stream.rank, stream.world = self._rank_and_world()
        stream.source = self.stream_source()
        train = split == "train"
        return MixingLoader(
            stream,
            batch_size=None,
            collate_fn=_as_is,
            num_workers=self.num_workers,
            pin_memory=self.pin_memory,
            persistent_workers=False,
            mix=self.mix_batches if train and self.num_workers > 1 else 1,
            mix_seed=self.seed + stream.rank,
            prefetch_factor=2 if self.num_workers > 0 else None,
            multiprocessing_context=_worker_context() if self.num_workers > 0 else None,
        )

    def train_dataloader(self) -> DataLoader:
        return self._loader("train")

    def val_dataloader(self) -> DataLoader:
        return self._loader("val")

    def test_dataloader(self) -> DataLoader:
        return self._loader("test")

    def predict_dataloader(self) -> DataLoader:
        """One exact pass over `predict_urls` (default: `test_urls`), split by rank and worker like eval."""
        return self._loader("predict")

"""tf.data input pipelines over prepared data (the output of `audiossl prep`).

Both iterators yield dicts of numpy arrays for one host: `features` float32 [b, T, mel] normalised
per mel bin with the mean/std of the manifest in `stats_dir` (or of a run's `data_stats.json`;
`normalization="per_bin"`, the default), with one global pair (`"global"`, `norm_mean`/`norm_std`)
or not at all (`"none"`);
padding frames are 0, `valid` bool [b, T] (True = real frame) and `labels` float32 [b, C]
(multi-hot); b = batch_size // process_count.

Training order (`train_iterator`) is a pure function of (seed, epoch, position):
* each host reads its own shard files (file i -> host i % process_count); with fewer files than
  hosts every host reads all files and keeps every process_count-th example;
* per epoch, the host's files are permuted with a stateless shuffle keyed by (seed, epoch), read
  interleaved (deterministically), shuffled with a buffer seeded by (seed, epoch), cut to whole
  batches (the epoch's remainder is dropped), and each example's crop start is drawn statelessly
  from (seed, epoch, index in epoch).
The iterator's state is just the number of batches it has handed out; resuming from it rebuilds the
stream at (epoch, offset) and skips the consumed part of that epoch as raw records (not decoded),
so the resumed run yields exactly the batches the uninterrupted run would have.

Evaluation (`eval_iterator`) reads every example exactly once across hosts (host i gets the i-th
contiguous range of the manifest's example order), crops the first `crop_frames` frames (AST/EAT
style truncation; shorter clips are padded and masked) and pads the last batches with rows whose
`_mask` is False, so every host runs the same number of batches.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Iterator

import numpy as np

from audiossl_jax.data import records
from audiossl_jax.data.manifest import load_manifest

__all__ = [
    "load_manifest",
    "train_iterator",
    "eval_iterator",
    "TrainIterator",
    "EvalIterable",
    "num_classes",
    "class_names",
    "mel_bins",
]

_STATE_VERSION = 1
_MAX_EPOCHS = 2**40


def num_classes(data_dir: str) -> int:
    return load_manifest(data_dir)["num_classes"]


def class_names(data_dir: str) -> list[str]:
    return list(load_manifest(data_dir)["class_names"])


def mel_bins(data_dir: str) -> int:
    return int(load_manifest(data_dir)["mel_bins"])


def _local_batch(batch_size: int, process_count: int, process_index: int) -> int:
    if not 0 <= process_index < process_count:
        raise ValueError(f"process_index={process_index} must be in [0, process_count={process_count})")
    if batch_size <= 0 or batch_size % process_count:
        raise ValueError(f"batch_size={batch_size} must be a positive multiple of process_count={process_count}")
    return batch_size // process_count


def _gfile():
    import tensorflow as tf

    return tf.io.gfile


def _shards(data_dir: str, manifest: dict) -> list[tuple[str, int]]:
    shards = [
        (os.path.join(data_dir, s["file"]), int(s["num_examples"])) for s in manifest["shards"] if s["num_examples"] > 0
    ]
    if not shards:
        raise ValueError(f"{data_dir!r} holds no examples (manifest num_examples=0)")
    for path, _ in shards:
        if not _gfile().exists(path):
            raise FileNotFoundError(f"shard {path!r} listed in {data_dir}/manifest.json is missing")
    return shards


NORMALIZATIONS = ("per_bin", "global", "none")


def _normaliser(
    data_dir: str,
    stats_dir: str | None,
    manifest: dict,
    normalization: str = "per_bin",
    norm_mean: float | None = None,
    norm_std: float | None = None,
):
    """(mean, std) per mel bin: the manifest's statistics ("per_bin", of `stats_dir` if given), one
    pair for every bin ("global": `norm_mean`/`norm_std`, e.g. AST/EAT's AudioSet fbank -4.268 /
    4.569, or the manifest's `global_mean`/`global_std` when both are None) or 0 / 1 ("none")."""
    mel = manifest["mel_bins"]
    if normalization not in NORMALIZATIONS:
        raise ValueError(f"normalization={normalization!r} (config.data.normalization) is not one of {NORMALIZATIONS}")
    if normalization == "none":
        return np.zeros(mel, np.float32), np.ones(mel, np.float32)
    if normalization == "global" and (norm_mean is not None or norm_std is not None):
        if norm_mean is None or norm_std is None or not norm_std > 0:
            raise ValueError(
                f"normalization='global' needs both norm_mean and a positive norm_std "
                f"(config.data.norm_mean / config.data.norm_std), got {norm_mean!r} / {norm_std!r}"
            )
        return np.full(mel, norm_mean, np.float32), np.full(mel, norm_std, np.float32)
    stats = load_stats(stats_dir) if stats_dir else manifest
    if stats["mel_bins"] != mel:
        raise ValueError(f"stats_dir {stats_dir!r} has {stats['mel_bins']} mel bins, {data_dir!r} has {mel}")
    if stats["mean"] is None:
        raise ValueError(f"manifest of {stats_dir or data_dir!r} has no mean/std (no examples)")
    if normalization == "global":
        return (np.full(mel, stats["global_mean"], np.float32), np.full(mel, stats["global_std"], np.float32))
    return np.asarray(stats["mean"], np.float32), np.asarray(stats["std"], np.float32)


STATS_KEYS = ("mel_bins", "mean", "std", "global_mean", "global_std")


def load_stats(stats_dir: str) -> dict:
    """The feature statistics (`STATS_KEYS`) of `stats_dir`: a prepared folder (its manifest) or a
    `.json` file holding those keys, such as a run's `<workdir>/data_stats.json`
    (`train/run_files.py`), so a run's statistics outlive its corpus."""
    if not stats_dir.endswith(".json"):
        return load_manifest(stats_dir)
    gfile = _gfile()
    if not gfile.exists(stats_dir):
        raise FileNotFoundError(f"stats file {stats_dir!r} not found")
    with gfile.GFile(stats_dir) as f:
        try:
            stats = json.load(f)
        except ValueError as e:
            raise ValueError(f"cannot read {stats_dir!r} (corrupt JSON): {e}") from e
    missing = [k for k in STATS_KEYS if k not in stats]
    if missing:
        raise ValueError(f"stats file {stats_dir!r} lacks the field(s) {missing}")
    return stats


def normalization_kwargs(data_config) -> dict:
    """The iterators' normalisation arguments from a config's `data` block (`normalization`,
    `norm_mean`, `norm_std`; a missing field means per-bin statistics)."""
    get = data_config.get
    return {
        "normalization": get("normalization", "per_bin"),
        "norm_mean": get("norm_mean"),
        "norm_std": get("norm_std"),
    }


def _example_fn(mel: int, num_classes_: int, mean: np.ndarray, std: np.ndarray, crop_frames: int):
    """Returns make(serialized, start_fn) -> ({features, valid, labels}, clip_id), where
    start_fn(frames) gives the first frame of the crop."""
    import tensorflow as tf

    mean_t, inv_std_t = tf.constant(mean), tf.constant(1.0 / std)

    def make(serialized, start_fn):
        ex = records.parse(serialized, mel)
        frames = tf.shape(ex["features"], out_type=tf.int64)[0]
        start = start_fn(frames)
        window = ex["features"][start : start + crop_frames]
        length = tf.shape(window, out_type=tf.int64)[0]
        x = (tf.cast(window, tf.float32) - mean_t) * inv_std_t
        x = tf.pad(x, [[0, crop_frames - length], [0, 0]])
        valid = tf.range(crop_frames, dtype=tf.int64) < length
        hot = tf.one_hot(ex["labels"], num_classes_, dtype=tf.float32)  # [num_labels, C]
        labels = tf.reshape(tf.maximum(tf.reduce_max(hot, axis=0), 0.0), [num_classes_])
        x = tf.ensure_shape(x, [crop_frames, mel])
        return {"features": x, "valid": valid, "labels": labels}, ex["clip_id"]

    return make


class TrainIterator:
    """Endless iterator of training batches with a small, exact, JSON-serialisable state."""

    def __init__(
        self,
        data_dir: str,
        *,
        batch_size: int,
        crop_frames: int,
        seed: int,
        stats_dir: str | None = None,
        process_index: int = 0,
        process_count: int = 1,
        state: dict | None = None,
        shuffle_buffer: int = 1000,
        cycle_length: int = 16,
        normalization: str = "per_bin",
        norm_mean: float | None = None,
        norm_std: float | None = None,
    ):
        if crop_frames <= 0:
            raise ValueError(f"crop_frames must be positive, got {crop_frames}")
        self.manifest = load_manifest(data_dir)
        self.local_batch = _local_batch(batch_size, process_count, process_index)
        self._key = {
            "seed": int(seed),
            "batch_size": int(batch_size),
            "crop_frames": int(crop_frames),
            "process_count": int(process_count),
        }
        shards = _shards(data_dir, self.manifest)
        total = sum(n for _, n in shards)
        if len(shards) >= process_count:
            self._files = [p for p, _ in shards[process_index::process_count]]
            self._element_shard = None
            host_examples = sum(n for _, n in shards[process_index::process_count])
        else:
            self._files = [p for p, _ in shards]
            self._element_shard = (process_count, process_index)
            host_examples = len(range(process_index, total, process_count))
        self.batches_per_epoch = host_examples // self.local_batch
        if self.batches_per_epoch == 0:
            raise ValueError(
                f"host {process_index} of {process_count} has {host_examples} examples "
                f"of {data_dir!r}, fewer than its batch of {self.local_batch}"
            )
        self._mean, self._std = _normaliser(data_dir, stats_dir, self.manifest, normalization, norm_mean, norm_std)
        self._crop_frames, self._seed = int(crop_frames), int(seed)
        self._shuffle_buffer, self._cycle_length = int(shuffle_buffer), int(cycle_length)
        self.batches_consumed = 0
        if state is not None:
            self.batches_consumed = self._check_state(state)
        self._it: Iterator | None = None

    def _check_state(self, state: dict) -> int:
        if state.get("version") != _STATE_VERSION:
            raise ValueError(f"iterator state version {state.get('version')!r} != {_STATE_VERSION}")
        for key, value in self._key.items():
            if state.get(key) != value:
                raise ValueError(
                    f"iterator state has {key}={state.get(key)!r}, this run {value!r}: the data order would differ"
                )
        return int(state["batches_consumed"])

    def get_state(self) -> dict:
        """{'version', 'batches_consumed', seed, batch_size, crop_frames, process_count}; the same
        on every host, so one copy may be saved with the checkpoint."""
        return {"version": _STATE_VERSION, "batches_consumed": self.batches_consumed, **self._key}

    @property
    def epoch(self) -> int:
        return self.batches_consumed // self.batches_per_epoch

    def _dataset(self):
        import tensorflow as tf

        start_epoch, start_batch = divmod(self.batches_consumed, self.batches_per_epoch)
        per_epoch = self.batches_per_epoch * self.local_batch
        files = tf.constant(self._files)
        seed, crop = self._seed, self._crop_frames
        make = _example_fn(self.manifest["mel_bins"], self.manifest["num_classes"], self._mean, self._std, crop)
        element_shard, buffer = self._element_shard, self._shuffle_buffer
        cycle = min(self._cycle_length, len(self._files))

        def epoch_examples(epoch):
            epoch_seed = tf.stack([tf.constant(seed, tf.int64), epoch])
            order = tf.random.experimental.stateless_shuffle(files, seed=epoch_seed)
            ds = tf.data.Dataset.from_tensor_slices(order).interleave(
                tf.data.TFRecordDataset,
                cycle_length=cycle,
                block_length=1,
                num_parallel_calls=tf.data.AUTOTUNE,
                deterministic=True,
            )
            if element_shard is not None:
                ds = ds.shard(*element_shard)
            ds = ds.shuffle(buffer, seed=seed * 1_000_003 + epoch, reshuffle_each_iteration=False)
            ds = ds.take(per_epoch).enumerate()
            skip = tf.where(
                epoch == start_epoch, tf.constant(start_batch * self.local_batch, tf.int64), tf.constant(0, tf.int64)
            )
            ds = ds.skip(skip)
            return ds.map(lambda index, record: (epoch, index, record))

        def example(epoch, index, record):
            key = tf.random.experimental.stateless_fold_in(tf.stack([tf.constant(seed, tf.int64), epoch]), index)

            def start_fn(frames):
                return tf.random.stateless_uniform(
                    [], seed=key, minval=0, maxval=tf.maximum(frames - crop, 0) + 1, dtype=tf.int64
                )

            return make(record, start_fn)[0]

        ds = tf.data.Dataset.range(start_epoch, _MAX_EPOCHS).flat_map(epoch_examples)
        ds = ds.map(example, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
        ds = ds.batch(self.local_batch, drop_remainder=True)
        options = tf.data.Options()
        options.deterministic = True
        return ds.with_options(options).prefetch(tf.data.AUTOTUNE)

    def __iter__(self) -> TrainIterator:
        return self

    def __next__(self) -> dict[str, np.ndarray]:
        if self._it is None:
            self._it = self._dataset().as_numpy_iterator()
        batch = next(self._it)
        self.batches_consumed += 1
        return batch


def train_iterator(
    data_dir: str,
    *,
    batch_size: int,
    crop_frames: int,
    seed: int,
    stats_dir: str | None = None,
    process_index: int = 0,
    process_count: int = 1,
    state: dict | None = None,
    shuffle_buffer: int = 1000,
    normalization: str = "per_bin",
    norm_mean: float | None = None,
    norm_std: float | None = None,
) -> TrainIterator:
    """Endless, resumable training batches for this host (see the module docstring)."""
    return TrainIterator(
        data_dir,
        batch_size=batch_size,
        crop_frames=crop_frames,
        seed=seed,
        stats_dir=stats_dir,
        process_index=process_index,
        process_count=process_count,
        state=state,
        shuffle_buffer=shuffle_buffer,
        normalization=normalization,
        norm_mean=norm_mean,
        norm_std=norm_std,
    )


class EvalIterable:
    """Re-iterable evaluation batches; `len()` is the (host-independent) number of batches."""

    def __init__(
        self,
        data_dir: str,
        *,
        batch_size: int,
        crop_frames: int,
        stats_dir: str | None = None,
        process_index: int = 0,
        process_count: int = 1,
        with_clip_id: bool = False,
        normalization: str = "per_bin",
        norm_mean: float | None = None,
        norm_std: float | None = None,
    ):
        if crop_frames <= 0:
            raise ValueError(f"crop_frames must be positive, got {crop_frames}")
        self.manifest = load_manifest(data_dir)
        self.local_batch = _local_batch(batch_size, process_count, process_index)
        shards = _shards(data_dir, self.manifest)
        total = sum(n for _, n in shards)
        lo, hi = total * process_index // process_count, total * (process_index + 1) // process_count
        self.num_examples = hi - lo  # this host's real rows
        self.num_batches = math.ceil(math.ceil(total / process_count) / self.local_batch)
        self._files, offset, self._skip = [], 0, 0
        for path, n in shards:
            if offset + n > lo and offset < hi:
                if not self._files:
                    self._skip = lo - offset
                self._files.append(path)
            offset += n
        self._mean, self._std = _normaliser(data_dir, stats_dir, self.manifest, normalization, norm_mean, norm_std)
        self._crop_frames, self._with_clip_id = int(crop_frames), with_clip_id

    def __len__(self) -> int:
        return self.num_batches

    def _dataset(self):
        import tensorflow as tf

        mel, classes, crop = self.manifest["mel_bins"], self.manifest["num_classes"], self._crop_frames
        make = _example_fn(mel, classes, self._mean, self._std, crop)

        def example(record):
            ex, clip_id = make(record, lambda frames: tf.constant(0, tf.int64))
            ex["_mask"] = tf.constant(True)
            if self._with_clip_id:
                ex["clip_id"] = clip_id
            return ex

        padding = {
            "features": np.zeros((crop, mel), np.float32),
            "valid": np.zeros(crop, bool),
            "labels": np.zeros(classes, np.float32),
            "_mask": False,
        }
        if self._with_clip_id:
            padding["clip_id"] = b""
        num_rows = self.num_batches * self.local_batch
        ds = tf.data.TFRecordDataset(self._files).skip(self._skip).take(self.num_examples)
        ds = ds.map(example, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
        pad = tf.data.Dataset.from_tensors(padding).repeat(num_rows - self.num_examples)
        return ds.concatenate(pad).batch(self.local_batch).prefetch(tf.data.AUTOTUNE)

    def __iter__(self) -> Iterator[dict[str, np.ndarray]]:
        if self.num_examples == 0:  # more hosts than examples: this one yields padding only
            yield from self._padding_only()
        else:
            yield from self._dataset().as_numpy_iterator()

    def _padding_only(self):
        mel, classes, crop = self.manifest["mel_bins"], self.manifest["num_classes"], self._crop_frames
        b = self.local_batch
        for _ in range(self.num_batches):
            batch = {
                "features": np.zeros((b, crop, mel), np.float32),
                "valid": np.zeros((b, crop), bool),
                "labels": np.zeros((b, classes), np.float32),
                "_mask": np.zeros(b, bool),
            }
            if self._with_clip_id:
                batch["clip_id"] = np.array([b""] * b, object)
            yield batch


def eval_iterator(
    data_dir: str,
    *,
    batch_size: int,
    crop_frames: int,
    stats_dir: str | None = None,
    process_index: int = 0,
    process_count: int = 1,
    with_clip_id: bool = False,
    normalization: str = "per_bin",
    norm_mean: float | None = None,
    norm_std: float | None = None,
) -> EvalIterable:
    """Every example exactly once across hosts, in padded batches with `_mask` (module docstring)."""
    return EvalIterable(
        data_dir,
        batch_size=batch_size,
        crop_frames=crop_frames,
        stats_dir=stats_dir,
        process_index=process_index,
        process_count=process_count,
        with_clip_id=with_clip_id,
        normalization=normalization,
        norm_mean=norm_mean,
        norm_std=norm_std,
    )

"""`audiossl prep`: audio + labels -> TFRecord shards of float16 log-mel + manifest.json.

* Clips are assigned round-robin to `num_shards` shards (clip i -> shard i % num_shards) in the
  listing's order, so the output depends only on the inputs and options: same inputs, same bytes.
* Worker processes (spawned; they never import TensorFlow) decode, resample, compute features,
  per-bin sums and the serialized example; the parent only writes each shard to
  `<shard>.tmp-<pid>`, then renames it into place together with a `<shard>.done.json` sidecar
  (its counts, per-bin sums, skipped inputs and a fingerprint of its inputs and options). A rerun
  keeps every shard whose sidecar fingerprint matches and redoes the rest; an interrupted run
  leaves only temporary files, which the next run deletes.
* A bad input never stops the run: it is recorded in `manifest["skipped"]` with its reason, and
  `num_inputs == num_examples + num_skipped` always holds.
* Inputs and `out` may be local or any `tf.io.gfile` URL (`gs://`, `ram://`; `fileio.py`).
* `beam_prep.py` runs the same steps (`plan`, `_clip_to_example`, `_ShardWriter`, `finish`) as an
  Apache Beam pipeline; its output is byte-identical.
"""

from __future__ import annotations

import contextlib
import dataclasses
import glob
import hashlib
import json
import math
import multiprocessing
import os
import sys
from collections.abc import Iterator

import numpy as np

from audiossl_jax.data import audio_io, fileio, records, sources
from audiossl_jax.data import manifest as manifest_lib
from audiossl_jax.features import frontends
from audiossl_jax.features import stats as stats_lib

DEFAULT_CLIPS_PER_SHARD = 1024


def default_num_shards(num_clips: int) -> int:
    """The smallest power of two giving at most DEFAULT_CLIPS_PER_SHARD clips per shard.

    A power of two divides evenly over any power-of-two number of hosts up to itself, so each host
    of a TPU slice reads the same number of whole shards; AudioSet-2M (~2.0 M clips) gets 2,048
    shards: 16 per host on 128 hosts, one per tf.data reader (`pipeline.TrainIterator`'s
    `cycle_length` 16)."""
    wanted = max(1, math.ceil(num_clips / DEFAULT_CLIPS_PER_SHARD))
    return 1 << (wanted - 1).bit_length()


@dataclasses.dataclass(frozen=True)
class ClipOptions:
    """What every worker needs to turn a file into features."""

    frontend: frontends.Frontend
    class_index: dict  # class name -> index
    max_seconds: float | None  # read at most this much (crop from the start)
    min_seconds: float  # zero-pad shorter clips to this length


def _clip_to_example(clip: sources.Clip, opts: ClipOptions):
    """('ok', serialized example, per-bin stats of its frames) or ('skip', reason); never raises."""
    try:
        wave, duration = audio_io.load_audio(clip.path, max_seconds=opts.max_seconds)
        min_samples = int(round(opts.min_seconds * audio_io.TARGET_RATE))
        if wave.shape[0] < min_samples:
            wave = np.pad(wave, (0, min_samples - wave.shape[0]))
        if wave.shape[0] < opts.frontend.min_samples():
            return (
                "skip",
                f"too short: {wave.shape[0]} samples at 16 kHz, fewer than one frame "
                f"({opts.frontend.min_samples()}); use --min-seconds to pad",
            )
        feats = opts.frontend(wave)
        if not np.all(np.isfinite(feats)):
            return ("skip", "features are not finite")
        feats16 = feats.astype(records.FEATURE_DTYPE)
        if not np.all(np.isfinite(feats16)):
            return ("skip", "features overflow float16")
        labels = sorted(opts.class_index[name] for name in clip.labels)
        clip_stats = stats_lib.MelStats.zeros(feats16.shape[1])
        clip_stats.add(feats16)
        return ("ok", records.serialize(feats16, labels, clip.clip_id, duration), clip_stats)
    except audio_io.BadAudio as e:
        return ("skip", str(e))
    except Exception as e:  # noqa: BLE001 - one bad file must never stop the run
        return ("skip", f"failed: {type(e).__name__}: {e}")


_WORKER_OPTS: ClipOptions | None = None


def _init_worker(opts: ClipOptions, parent_pid: int | None = None) -> None:
    global _WORKER_OPTS
    _WORKER_OPTS = opts
    if parent_pid is not None:
        _die_with_parent(parent_pid)


def _die_with_parent(parent_pid: int) -> None:
    """A worker is killed the moment its parent dies (even by SIGKILL), instead of lingering until it
    notices its closed pipe: Linux PR_SET_PDEATHSIG; elsewhere nothing."""
    if sys.platform.startswith("linux"):
        try:
            import ctypes
            import signal

            ctypes.CDLL(None, use_errno=True).prctl(1, int(signal.SIGKILL))  # 1 = PR_SET_PDEATHSIG
        except (OSError, AttributeError):
            pass
    if os.getppid() != parent_pid:  # the parent died before the call above
        os._exit(1)


def _work(task):
    shard, clip = task
    return shard, _clip_to_example(clip, _WORKER_OPTS)


def _fingerprint(clips: list[sources.Clip], opts: ClipOptions, class_names: list[str]) -> str:
    h = hashlib.sha256()
    h.update(
        json.dumps(
            {
                "frontend": opts.frontend.params,
                "classes": class_names,
                "max_seconds": opts.max_seconds,
                "min_seconds": opts.min_seconds,
                "format": manifest_lib.FORMAT_VERSION,
            },
            sort_keys=True,
        ).encode()
    )
    for clip, size in zip(clips, fileio.sizes([clip.path for clip in clips])):
        h.update(json.dumps([clip.clip_id, clip.path, list(clip.labels), size]).encode())
    return h.hexdigest()


def _done_record(out: str, name: str, fingerprint: str) -> dict | None:
    """The sidecar of a finished shard whose fingerprint matches, else None."""
    sidecar = fileio.join(out, name + ".done.json")
    try:
        if not fileio.exists(sidecar):
            return None
        done = json.loads(fileio.read_bytes(sidecar))
        ok = done.get("fingerprint") == fingerprint and fileio.getsize(fileio.join(out, name)) == done["num_bytes"]
        return done if ok else None
    except Exception:  # noqa: BLE001 - unreadable or half-written: redo the shard
        return None


def _results(todo: list[tuple[int, sources.Clip]], opts: ClipOptions, workers: int) -> Iterator:
    """(shard, result) for every task, in order; spawned workers unless workers <= 1."""
    if workers <= 1 or len(todo) <= 1:
        for shard, clip in todo:
            yield shard, _clip_to_example(clip, opts)
        return
    ctx = multiprocessing.get_context("spawn")  # fork after TensorFlow/threads is unsafe
    with (
        _environment(_ONE_THREAD),
        ctx.Pool(min(workers, len(todo)), initializer=_init_worker, initargs=(opts, os.getpid())) as pool,
    ):
        yield from pool.imap(_work, todo, chunksize=8)


# One BLAS/OpenMP thread per worker: the processes already use every core, and idle BLAS threads
# spin (with 2 threads per worker the fbank matmul cost 3-4x more CPU time).
_ONE_THREAD = {"OMP_NUM_THREADS": "1", "OPENBLAS_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}


@contextlib.contextmanager
def _environment(overrides: dict[str, str]):
    """Sets environment variables (inherited by spawned workers) and restores them afterwards."""
    saved = {key: os.environ.get(key) for key in overrides}
    os.environ.update(overrides)
    try:
        yield
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


class _ShardWriter:
    """Writes one shard under a temporary name (`<shard>.tmp-<tag>`, default tag: the process id);
    `commit` renames it into place and writes its sidecar."""

    def __init__(self, out: str, name: str, mel_bins: int, tag: str | None = None):
        import tensorflow as tf

        self.out, self.name = out, name
        self.tmp = fileio.join(out, f"{name}.tmp-{tag or os.getpid()}")
        self.writer = tf.io.TFRecordWriter(self.tmp)
        self.stats = stats_lib.MelStats.zeros(mel_bins)
        self.num_examples = 0
        self.skipped: list[dict] = []

    def add(self, clip: sources.Clip, result) -> None:
        if result[0] == "skip":
            self.skipped.append({"input": clip.path, "reason": result[1]})
            return
        _, serialized, clip_stats = result
        self.writer.write(serialized)
        self.stats = self.stats.merge(clip_stats)
        self.num_examples += 1

    def discard(self) -> None:
        self.writer.close()
        with contextlib.suppress(Exception):
            fileio.remove(self.tmp)

    def commit(self, fingerprint: str) -> dict:
        self.writer.close()
        path = fileio.join(self.out, self.name)
        done = {
            "file": self.name,
            "fingerprint": fingerprint,
            "num_examples": self.num_examples,
            "num_bytes": fileio.getsize(self.tmp),
            "stats": self.stats.to_json(),
            "skipped": self.skipped,
        }
        fileio.rename(self.tmp, path)
        manifest_lib.write_json_atomic(path + ".done.json", done)
        return done


def default_split_name(out: str) -> str:
    name = os.path.basename(os.path.normpath(out))
    return name if name.isidentifier() else "data"


@dataclasses.dataclass(frozen=True)
class Plan:
    """What a run writes: the listing, the options, and each shard's name and clips (clip i of the
    listing -> shard i % num_shards)."""

    listing: sources.Listing
    split: str
    opts: ClipOptions
    names: list[str]
    shard_clips: list[list[sources.Clip]]

    @property
    def num_shards(self) -> int:
        return len(self.names)

    def fingerprint(self, k: int) -> str:
        """Shard k's inputs and options; a finished shard with another fingerprint is redone."""
        return _fingerprint(self.shard_clips[k], self.opts, self.listing.class_names)


def plan(
    input_path: str,
    out: str,
    *,
    frontend: frontends.Frontend,
    class_names: list[str] | None = None,
    num_shards: int | None = None,
    max_seconds: float | None = None,
    min_seconds: float = 0.0,
    split: str | None = None,
    folder_labels: str = "none",
    class_index: str | None = None,
    audio_dir: str | None = None,
    log=print,
    strict: bool = False,
) -> Plan:
    """Lists the inputs and fixes the shards (`prepare`'s arguments); writes nothing."""
    if max_seconds is not None and max_seconds <= 0:
        raise ValueError(f"max_seconds must be positive, got {max_seconds}")
    if min_seconds < 0:
        raise ValueError(f"min_seconds must be >= 0, got {min_seconds}")
    listing = sources.list_inputs(
        input_path, class_names=class_names, folder_labels=folder_labels, class_index=class_index, audio_dir=audio_dir
    )
    split = split or default_split_name(out)
    if not split.isidentifier():
        raise ValueError(f"split name {split!r} must be an identifier (letters, digits, _)")
    for note in listing.notes:
        log(f"prep: {note}")
    if strict and listing.skipped:
        raise StrictError(listing.skipped)
    clips = listing.clips
    if num_shards is None:
        num_shards = default_num_shards(len(clips))
    if num_shards < 1:
        raise ValueError(f"--shards must be >= 1, got {num_shards}")
    num_shards = max(1, min(num_shards, len(clips)))
    opts = ClipOptions(frontend, {n: i for i, n in enumerate(listing.class_names)}, max_seconds, float(min_seconds))
    return Plan(
        listing,
        split,
        opts,
        [records.shard_name(split, k, num_shards) for k in range(num_shards)],
        [clips[k::num_shards] for k in range(num_shards)],
    )


def clear_temporaries(out: str) -> None:
    """Creates `out` and deletes leftovers of an interrupted run (never complete, never read)."""
    fileio.makedirs(out)
    for stale in fileio.glob(fileio.join(_escape(out), "*.tmp-*")):
        fileio.remove(stale)


def _escape(path: str) -> str:
    return path if fileio.is_remote(path) else glob.escape(path)


def prepare(
    input_path: str,
    out: str,
    *,
    frontend: frontends.Frontend,
    class_names: list[str] | None = None,
    num_shards: int | None = None,
    workers: int | None = None,
    max_seconds: float | None = None,
    min_seconds: float = 0.0,
    split: str | None = None,
    folder_labels: str = "none",
    class_index: str | None = None,
    audio_dir: str | None = None,
    progress: bool = True,
    log=print,
    strict: bool = False,
) -> dict:
    """Prepares `input_path` into `out`; returns the manifest (also written to out/manifest.json).

    `strict`: the first input that would be skipped raises StrictError before any new shard or the
    manifest is written (the new shards' temporary files are removed; complete shards of an earlier
    run are kept)."""
    from tqdm import tqdm

    p = plan(
        input_path,
        out,
        frontend=frontend,
        class_names=class_names,
        num_shards=num_shards,
        max_seconds=max_seconds,
        min_seconds=min_seconds,
        split=split,
        folder_labels=folder_labels,
        class_index=class_index,
        audio_dir=audio_dir,
        log=log,
        strict=strict,
    )
    num_shards, names, shard_clips, opts, split = p.num_shards, p.names, p.shard_clips, p.opts, p.split
    workers = workers or len(os.sched_getaffinity(0))
    clear_temporaries(out)

    prints = [p.fingerprint(k) for k in range(num_shards)]
    done: dict[int, dict] = {}
    for k in range(num_shards):
        record = _done_record(out, names[k], prints[k])
        if record is not None:
            done[k] = record
    todo = [(k, clip) for k in range(num_shards) if k not in done for clip in shard_clips[k]]
    already = len(done)
    if done:
        log(f"prep: {len(done)}/{num_shards} shards already complete, skipping them")

    remaining = {k: len(shard_clips[k]) for k in range(num_shards) if k not in done}
    writers: dict[int, _ShardWriter] = {}
    positions = {k: 0 for k in remaining}
    for k in [k for k, n in remaining.items() if n == 0]:
        done[k] = _ShardWriter(out, names[k], frontend.num_mel_bins).commit(prints[k])
    bar = tqdm(total=len(todo), unit="clip", desc=f"prep {split}", disable=not progress, file=sys.stderr)
    finished: dict[int, _ShardWriter] = {}  # strict: complete shards wait here until every clip is in
    try:
        for k, result in _results(todo, opts, workers):
            clip = shard_clips[k][positions[k]]
            if strict and result[0] == "skip":
                raise StrictError([sources.Skipped(clip.path, result[1])])
            if k not in writers:
                writers[k] = _ShardWriter(out, names[k], frontend.num_mel_bins)
            writers[k].add(clip, result)
            positions[k] += 1
            if positions[k] == remaining[k]:
                if strict:
                    finished[k] = writers.pop(k)
                else:
                    done[k] = writers.pop(k).commit(prints[k])
            bar.update(1)
    except BaseException:
        for writer in list(writers.values()) + list(finished.values()):
            writer.discard()
        raise
    finally:
        bar.close()
    for k, writer in finished.items():
        done[k] = writer.commit(prints[k])
    return finish(p, out, [done[k] for k in range(num_shards)], log, reused=already == num_shards)


def finish(p: Plan, out: str, shards: list[dict], log=print, reused: bool = False) -> dict:
    """Deletes shards of another shard count, then writes the manifest (the shards' sidecar records
    combined in shard order) and the TFDS metadata; returns the manifest."""
    for path in fileio.glob(fileio.join(_escape(out), f"{p.split}-*-of-*.tfrecord*")):
        if os.path.basename(path).removesuffix(".done.json") not in p.names:
            fileio.remove(path)  # shards of an earlier run with another shard count
    opts = p.opts
    manifest = _manifest(p.listing, p.split, opts.frontend, shards, opts.max_seconds, opts.min_seconds)
    manifest_lib.write_json_atomic(fileio.join(out, manifest_lib.MANIFEST), manifest)
    if manifest["num_examples"] > 0:
        from audiossl_jax.data import tfds_metadata

        tfds_metadata.write(out, manifest)
    _print_summary(manifest, out, log, reused=reused)
    return manifest


class StrictError(ValueError):
    """`strict=True` and an input would be skipped: nothing new was written."""

    def __init__(self, skipped: list):
        self.skipped = list(skipped)
        first = self.skipped[0]
        more = f" (and {len(self.skipped) - 1} more)" if len(self.skipped) > 1 else ""
        super().__init__(
            f"--strict: {first.input} would be skipped: {first.reason}{more}; no shard or manifest was written"
        )


def _manifest(
    listing: sources.Listing, split: str, frontend: frontends.Frontend, shards: list[dict], max_seconds, min_seconds
) -> dict:
    stats = stats_lib.MelStats.zeros(frontend.num_mel_bins)
    for shard in shards:
        stats = stats.merge(stats_lib.MelStats.from_json(shard["stats"]))
    skipped = [dataclasses.asdict(s) for s in listing.skipped]
    skipped += [s for shard in shards for s in shard["skipped"]]
    num_examples = sum(s["num_examples"] for s in shards)
    if stats.count:
        mean, std = stats.mean_std()
        global_mean, global_std = stats.global_mean_std()
        mean, std = mean.tolist(), std.tolist()
    else:
        mean = std = global_mean = global_std = None
    return {
        "format_version": manifest_lib.FORMAT_VERSION,
        "split": split,
        "source": listing.source,
        "frontend": frontend.params,
        "frame_rate": frontend.frame_rate,
        "feature_dtype": np.dtype(records.FEATURE_DTYPE).name,
        "mel_bins": frontend.num_mel_bins,
        "class_names": listing.class_names,
        "num_classes": len(listing.class_names),
        "num_inputs": num_examples + len(skipped),
        "num_examples": num_examples,
        "num_skipped": len(skipped),
        "num_frames": stats.count,
        "pad_crop": {
            "max_seconds": max_seconds,
            "min_seconds": min_seconds,
            "crop": "keep the first max_seconds",
            "pad": "zeros at the end up to min_seconds",
        },
        "shards": [{"file": s["file"], "num_examples": s["num_examples"], "num_bytes": s["num_bytes"]} for s in shards],
        "mean": mean,
        "std": std,
        "global_mean": global_mean,
        "global_std": global_std,
        "skipped": skipped,
    }


def _print_summary(manifest: dict, out: str, log, reused: bool = False) -> None:
    if reused:
        log(
            f"prep: every shard was already complete; nothing new written: {manifest['num_examples']} examples "
            f"from {manifest['num_inputs']} inputs, {manifest['num_skipped']} skipped; "
            f"{len(manifest['shards'])} shard(s) in {out}"
        )
    else:
        log(
            f"prep: {manifest['num_inputs']} inputs -> {manifest['num_examples']} examples written, "
            f"{manifest['num_skipped']} skipped; {len(manifest['shards'])} shard(s) in {out}"
        )
    reasons: dict[str, int] = {}
    for s in manifest["skipped"]:
        key = s["reason"].split(" (")[0]
        reasons[key] = reasons.get(key, 0) + 1
    for reason, count in sorted(reasons.items(), key=lambda kv: -kv[1]):
        log(f"  skipped {count:6d}: {reason}")
    if manifest["skipped"]:
        log(f"  (every skipped file and its full reason: {os.path.join(out, manifest_lib.MANIFEST)} 'skipped')")

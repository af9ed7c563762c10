"""`audiossl prep --runner direct|dataflow|flink|spark`: prep as an Apache Beam pipeline.

The driver lists the inputs and fixes the shards exactly as `prep.plan` does (clip i -> shard
i % N), writes that plan next to the output as JSON lines, one per shard, in files of
PLAN_SHARDS_PER_FILE shards (`<split>.plan.tmp-*`, removed at the end; read through tf.io.gfile, so
any gfile path works, not only Beam's file systems), and runs:

    plan files -> read -> Reshuffle -> shard status ---- complete shards (sidecar fingerprint matches) -> skipped
                                          |-> one element per clip -> Reshuffle -> decode + resample + features
                                          |-> (shard, fingerprint) --------------------------|
                                                                      CoGroupByKey(shard) -> write + commit

Features come from `prep._clip_to_example`, shards from `prep._ShardWriter` (temporary name, then
rename + `.done.json` sidecar with the shard's counts, per-bin sums and skipped inputs), so a shard
is byte-identical to the single-machine one. Back on the driver, `prep.finish` combines the
sidecars in shard order into manifest.json (per-bin mean/std from the summed statistics, every
skipped input with its reason): the same bytes as `prep.prepare`. A rerun skips shards whose
sidecar matches. Beam is an optional extra (`pip install -e '.[beam]'`); nothing else imports it.
"""

from __future__ import annotations

import json
import os
import uuid

from audiossl_jax.data import fileio, prep, sources
from audiossl_jax.features import frontends

RUNNERS = {"direct": "DirectRunner", "dataflow": "DataflowRunner", "flink": "FlinkRunner", "spark": "SparkRunner"}
COMPLETE_COUNTER = "shards_already_complete"
PLAN_SHARDS_PER_FILE = 64


def pipeline_options(runner: str, beam_args: list[str], workers: int, in_process: bool):
    """Beam options: the runner, the direct runner's worker processes (threads when `in_process`,
    which `ram://` paths need: that file system lives in one process), then `beam_args` verbatim."""
    from apache_beam.options.pipeline_options import PipelineOptions

    if runner not in RUNNERS:
        raise ValueError(f"--runner {runner!r} is not one of {sorted(RUNNERS)}")
    flags = [f"--runner={RUNNERS[runner]}"]
    if runner == "direct":
        mode = "multi_threading" if in_process else "multi_processing"
        flags += [f"--direct_num_workers={workers}", f"--direct_running_mode={mode}"]
    return PipelineOptions(flags + list(beam_args))


def _write_plan(p: prep.Plan, out: str) -> list[str]:
    """The plan files: JSON lines {"shard": k, "clips": [[clip_id, path, labels], ...]}."""
    import tensorflow as tf

    run = uuid.uuid4().hex
    paths = []
    for first in range(0, p.num_shards, PLAN_SHARDS_PER_FILE):
        paths.append(fileio.join(out, f"{p.split}.plan.tmp-beam-{run}-{first:05d}"))
        with tf.io.gfile.GFile(paths[-1], "w") as f:
            for k in range(first, min(first + PLAN_SHARDS_PER_FILE, p.num_shards)):
                clips = [[c.clip_id, c.path, list(c.labels)] for c in p.shard_clips[k]]
                f.write(json.dumps({"shard": k, "clips": clips}) + "\n")
    return paths


def _read_lines(path: str):
    import tensorflow as tf

    with tf.io.gfile.GFile(path) as f:
        yield from (line for line in f if line.strip())


class _ShardStatus:
    """A planned shard -> nothing if it is complete; else ('todo', (k, fingerprint, n)) and one
    ('clip', (k, position, clip)) per clip."""

    def __init__(self, out: str, p: prep.Plan):
        self.out, self.opts, self.names = out, p.opts, p.names
        self.class_names = p.listing.class_names

    def __call__(self, line: str):
        shard = json.loads(line)
        k = shard["shard"]
        clips = [sources.Clip(clip_id, path, tuple(labels)) for clip_id, path, labels in shard["clips"]]
        fingerprint = prep._fingerprint(clips, self.opts, self.class_names)
        if prep._done_record(self.out, self.names[k], fingerprint) is not None:
            from apache_beam.metrics import Metrics

            Metrics.counter("prep", COMPLETE_COUNTER).inc()
            return
        yield "todo", (k, fingerprint, len(clips))
        for position, clip in enumerate(clips):
            yield "clip", (k, position, clip)


class _Featurize:
    """(k, position, clip) -> (k, (position, clip, result)): `prep._clip_to_example`, never raising."""

    def __init__(self, opts: prep.ClipOptions):
        self.opts = opts

    def __call__(self, element):
        k, position, clip = element
        return k, (position, clip, prep._clip_to_example(clip, self.opts))


class _WriteShard:
    """(k, {'todo': [(fingerprint, n)], 'clips': [...]}) -> the committed shard's sidecar record."""

    def __init__(self, out: str, p: prep.Plan):
        self.out, self.names, self.mel_bins = out, p.names, p.opts.frontend.num_mel_bins

    def __call__(self, element):
        k, grouped = element
        ((fingerprint, expected),) = grouped["todo"]
        results = sorted(grouped["clips"], key=lambda r: r[0])
        if [r[0] for r in results] != list(range(expected)):
            raise RuntimeError(
                f"shard {self.names[k]}: got clip positions "
                f"{[r[0] for r in results][:10]}..., expected 0..{expected - 1}"
            )
        writer = prep._ShardWriter(self.out, self.names[k], self.mel_bins, tag=f"beam-{uuid.uuid4().hex}")
        try:
            for _, clip, result in results:
                writer.add(clip, result)
        except BaseException:
            writer.discard()
            raise
        return writer.commit(fingerprint)


def build(pipeline, plan_paths: list[str], out: str, p: prep.Plan):
    """Adds the prep transforms to `pipeline`; returns the PCollection of newly written sidecar records."""
    import apache_beam as beam

    tagged = (
        pipeline
        | "PlanFiles" >> beam.Create(plan_paths)
        | "ReadPlan" >> beam.FlatMap(_read_lines)
        | "SpreadShards" >> beam.Reshuffle()
        | "ShardStatus" >> beam.FlatMap(_ShardStatus(out, p))
    )
    todo = (
        tagged
        | "Todo" >> beam.Filter(lambda kv: kv[0] == "todo")
        | "TodoByShard" >> beam.Map(lambda kv: (kv[1][0], kv[1][1:]))
    )
    results = (
        tagged
        | "Clips" >> beam.Filter(lambda kv: kv[0] == "clip")
        | "ClipOf" >> beam.Map(lambda kv: kv[1])
        | "SpreadClips" >> beam.Reshuffle()
        | "Features" >> beam.Map(_Featurize(p.opts))
    )
    return (
        {"todo": todo, "clips": results}
        | "ByShard" >> beam.CoGroupByKey()
        | "WriteShards" >> beam.Map(_WriteShard(out, p))
    )


def prepare(
    input_path: str,
    out: str,
    *,
    frontend: frontends.Frontend,
    runner: str = "direct",
    beam_args: list[str] = (),
    workers: int | None = None,
    class_names: list[str] | None = None,
    num_shards: int | None = None,
    max_seconds: float | None = None,
    min_seconds: float = 0.0,
    split: str | None = None,
    folder_labels: str = "none",
    class_index: str | None = None,
    audio_dir: str | None = None,
    log=print,
) -> dict:
    """`prep.prepare` on a Beam runner; returns the manifest (also written to out/manifest.json).
    The runner's options beyond the runner itself come verbatim from `beam_args`."""
    import apache_beam as beam

    p = prep.plan(
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
    )
    prep.clear_temporaries(out)
    plan_paths = _write_plan(p, out)
    in_process = any(path.startswith("ram://") for path in (input_path, out))
    options = pipeline_options(runner, beam_args, workers or len(os.sched_getaffinity(0)), in_process)
    log(f"prep: {len(p.listing.clips)} clips -> {p.num_shards} shard(s) on Beam's {RUNNERS[runner]}")
    try:
        with prep._environment(prep._ONE_THREAD):
            pipeline = beam.Pipeline(options=options)
            build(pipeline, plan_paths, out, p)
            result = pipeline.run()
            result.wait_until_finish()
    finally:
        for path in plan_paths:
            fileio.remove(path)
    complete = _counter(result, COMPLETE_COUNTER)
    if complete:
        log(f"prep: {complete}/{p.num_shards} shards already complete, skipped them")
    return prep.finish(p, out, _read_sidecars(out, p), log, reused=complete == p.num_shards)


def _counter(result, name: str) -> int:
    from apache_beam.metrics.metric import MetricsFilter

    counters = result.metrics().query(MetricsFilter().with_name(name))["counters"]
    return sum(c.committed if c.committed is not None else c.attempted for c in counters)


def _read_sidecars(out: str, p: prep.Plan) -> list[dict]:
    """Every shard's sidecar record, in shard order (32 reads at a time on an object store)."""
    from concurrent.futures import ThreadPoolExecutor

    def read(name: str) -> dict:
        path = fileio.join(out, name + ".done.json")
        if not fileio.exists(path):
            raise FileNotFoundError(
                f"{path} is missing after the Beam pipeline finished: the shard was "
                "not written; run the same command again"
            )
        return json.loads(fileio.read_bytes(path))

    with ThreadPoolExecutor(32) as pool:
        return list(pool.map(read, p.names))

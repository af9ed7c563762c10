"""Scalar metrics to TensorBoard event files (`<workdir>/tb`) and `<workdir>/metrics.jsonl`.

The workdir may be any path `tf.io.gfile` opens (local, gs://, ram://): the JSON lines go through
gfile, and so do the event files of a `scheme://` workdir (tensorboardX itself writes local files with
`open`, and gs:// only with google-cloud-storage installed).
"""

from __future__ import annotations

import json
import os


class _GFileRecordWriterFactory:
    """tensorboardX writer factory (`record_writer.register_writer_factory`) backed by tf.io.gfile."""

    def open(self, path: str):
        import tensorflow as tf

        return tf.io.gfile.GFile(path, "wb")

    def directory_check(self, path: str) -> None:
        import tensorflow as tf

        tf.io.gfile.makedirs(path)


def _scheme(path: str) -> str | None:
    """'gs' for gs://bucket/dir, None for a local path."""
    scheme, sep, _ = path.partition("://")
    return scheme if sep and "/" not in scheme else None


METRICS_FILE = "metrics.jsonl"


def read_records(workdir: str) -> list[dict]:
    """The JSON lines of `<workdir>/metrics.jsonl` (empty if there is none); a torn last line (a
    crash mid-write) is dropped."""
    import tensorflow as tf

    path = os.path.join(workdir, METRICS_FILE)
    if not tf.io.gfile.exists(path):
        return []
    records = []
    with tf.io.gfile.GFile(path) as f:
        for line in f:
            try:
                records.append(json.loads(line))
            except ValueError:
                continue
    return records


def _truncate(workdir: str, resume_step: int) -> None:
    """Drops the lines logged after `resume_step` (the steps a resumed run will redo), atomically."""
    import tensorflow as tf

    path = os.path.join(workdir, METRICS_FILE)
    records = read_records(workdir)
    kept = [r for r in records if int(r.get("step", 0)) <= resume_step]
    if len(kept) == len(records):
        return
    tmp = path + ".tmp"
    with tf.io.gfile.GFile(tmp, "w") as f:
        f.write("".join(json.dumps(r) + "\n" for r in kept))
    tf.io.gfile.rename(tmp, path, overwrite=True)


class MetricsWriter:
    """`resume_step`: the step a run resumes from; metrics.jsonl lines of later steps (logged by the
    interrupted run after its last checkpoint) are dropped and TensorBoard purges them, so every
    step appears once."""

    def __init__(self, workdir: str, enabled: bool = True, resume_step: int = 0):
        self.enabled = enabled
        if not enabled:
            return
        import tensorflow as tf
        from tensorboardX import SummaryWriter, record_writer

        tf.io.gfile.makedirs(workdir)
        _truncate(workdir, resume_step)
        scheme = _scheme(workdir)
        if scheme is not None:  # tensorboardX picks its file opener by the path's scheme
            record_writer.register_writer_factory(scheme, _GFileRecordWriterFactory())
        self._tb = SummaryWriter(
            logdir=os.path.join(workdir, "tb"), purge_step=resume_step + 1 if resume_step else None
        )
        self._jsonl = tf.io.gfile.GFile(os.path.join(workdir, METRICS_FILE), "a")

    def write(self, step: int, scalars: dict[str, float]) -> None:
        if not self.enabled:
            return
        for name, value in scalars.items():
            self._tb.add_scalar(name, value, step)
        self._jsonl.write(json.dumps({"step": step, **scalars}) + "\n")
        self._jsonl.flush()

    def close(self) -> None:
        if self.enabled:
            self._tb.close()
            self._jsonl.close()

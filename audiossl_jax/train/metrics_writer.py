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


class MetricsWriter:
    def __init__(self, workdir: str, enabled: bool = True):
        self.enabled = enabled
        if not enabled:
            return
        import tensorflow as tf
        from tensorboardX import SummaryWriter, record_writer

        tf.io.gfile.makedirs(workdir)
        scheme = _scheme(workdir)
        if scheme is not None:  # tensorboardX picks its file opener by the path's scheme
            record_writer.register_writer_factory(scheme, _GFileRecordWriterFactory())
        self._tb = SummaryWriter(logdir=os.path.join(workdir, "tb"))
        self._jsonl = tf.io.gfile.GFile(os.path.join(workdir, "metrics.jsonl"), "a")

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

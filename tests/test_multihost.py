"""Two processes on 127.0.0.1 (4 fake CPU devices each, gloo collectives) pre-train through the real
CLI, launched by launch/local_multihost.sh: checkpoint, stop, restart, resume.

Checks: one global mesh of 8 devices; host 0 alone writes metrics / TensorBoard / the progress bar;
every process writes its own checkpoint shards (orbax `ocdbt.process_<i>`); the restarted run resumes
from the checkpoint (steps continue, none repeated) and finishes.
"""
from __future__ import annotations

import json
import os
import subprocess

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
LOCAL = os.path.join(REPO, "launch", "local_multihost.sh")
FAST_COMPILE = ("--xla_backend_optimization_level=0 --xla_llvm_disable_expensive_passes=true "
                "--xla_cpu_use_fusion_emitters=false")
TIMEOUT_S = 240  # per launch; ~40 s CPU time each on 2 cores, more when the machine is shared


def _launch(workdir, train_dir, log_dir, extra=()):
    cmd = [LOCAL, "-n", "2", "-d", "4", "--quiet", "--timeout", str(TIMEOUT_S), "--grace", "10",
           "--log-dir", str(log_dir), "--",
           "pretrain", "--config", "configs/wav2vec2_conformer.py:tiny", "--workdir", str(workdir),
           f"--config.data.train_dir={train_dir}", "--config.data.batch_size=8",
           "--config.model.num_layers=1", "--config.train.steps=3", "--config.train.log_every=1",
           "--config.train.ckpt_every=2", *extra]
    env = dict(os.environ, XLA_FLAGS=FAST_COMPILE)
    env.pop("JAX_PLATFORMS", None)
    out = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=TIMEOUT_S + 60)
    logs = [(log_dir / f"process_{i}.log").read_text() for i in range(2)]
    assert out.returncode == 0, f"exit {out.returncode}\n{out.stderr[-3000:]}\n--- process 0 ---\n{logs[0][-3000:]}"
    return logs


def _metric_steps(workdir):
    with open(os.path.join(workdir, "metrics.jsonl")) as f:
        return [json.loads(line)["step"] for line in f]


@pytest.mark.slow
def test_two_processes_train_checkpoint_and_resume(prepared_demo, tmp_path):
    workdir = tmp_path / "run"
    logs = _launch(workdir, prepared_demo["train"], tmp_path / "logs1", extra=["--max_steps", "2"])
    assert "stopped at step 2" in logs[0] and "stopped at step 2" in logs[1]
    assert "pretrain wav2vec2" in logs[0] and "pretrain wav2vec2" not in logs[1]  # host 0's progress bar
    assert _metric_steps(workdir) == [1, 2]  # written once (host 0), not once per host
    state_dir = workdir / "checkpoints" / "2" / "state"
    assert (state_dir / "ocdbt.process_0").is_dir() and (state_dir / "ocdbt.process_1").is_dir()

    logs = _launch(workdir, prepared_demo["train"], tmp_path / "logs2")
    assert "stopped at step 3" in logs[0] and "stopped at step 3" in logs[1]
    assert _metric_steps(workdir) == [1, 2, 3]  # resumed at 2: step 3 only, nothing repeated
    assert sorted(os.listdir(workdir / "checkpoints")) == ["2", "3"]
    assert len(list((workdir / "tb").glob("events.out.tfevents.*"))) == 2  # one per run: host 0 only

"""End to end: demo data -> prep -> pretrain (save, stop, resume) -> probe, with the tiny wav2vec2 config."""

import json
import os
import signal
import subprocess
import sys
import time

import jax
import numpy as np
import pytest

from audiossl_jax import cli, config_loader
from audiossl_jax.evaluate import embed, probe
from audiossl_jax.train import loop

# what users run: XLA's default optimisation level (tests/conftest.py)
pytestmark = pytest.mark.xla_default

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CONFIG = os.path.join(REPO, "configs", "wav2vec2_conformer.py")


@pytest.fixture(scope="module")
def data_dirs(prepare_demo_splits):
    return prepare_demo_splits("librosa_mel", num_mel_bins=64)


def tiny_config(data_dirs, **train):
    config = config_loader.load_config(CONFIG + ":tiny")
    config.data.train_dir, config.data.eval_dir = data_dirs
    config.data.crop_frames = 64
    config.train.update(train)
    config.probe.epochs = 20
    return config


def latest_params(workdir):
    from audiossl_jax.train import checkpointing

    ckpt = checkpointing.Checkpointer(os.path.join(workdir, loop.CHECKPOINT_DIR), async_save=False)
    step = ckpt.latest_step()
    state, data = ckpt.read(step)
    ckpt.close()
    return step, state["params"], data


def read_metrics(workdir):
    with open(os.path.join(workdir, "metrics.jsonl")) as f:
        return {row["step"]: row for row in map(json.loads, f)}


def test_stop_and_resume_equals_uninterrupted_run(data_dirs, tmp_path):
    config = tiny_config(data_dirs, steps=6, ckpt_every=3, log_every=1)
    straight, resumed = str(tmp_path / "straight"), str(tmp_path / "resumed")
    summary = loop.pretrain(config, straight)
    assert summary["step"] == 6
    assert not os.path.exists(os.path.join(straight, "profile"))  # config.train.profile_start 0: none
    first = loop.pretrain(config, resumed, max_steps=4)  # "killed" after step 4 (last checkpoint: step 4)
    assert first["step"] == 4
    second = loop.pretrain(config, resumed)
    assert second["step"] == 6

    step_a, params_a, data_a = latest_params(straight)
    step_b, params_b, data_b = latest_params(resumed)
    assert step_a == step_b == 6
    assert data_a == data_b  # the data iterator position is checkpointed
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-6), params_a, params_b)
    m_a, m_b = read_metrics(straight), read_metrics(resumed)
    for step in (5, 6):  # the steps after the resume saw the same batches and randomness
        assert m_a[step]["loss"] == pytest.approx(m_b[step]["loss"], rel=1e-5)
    for key in ("loss", "grad_norm", "lr", "contrastive_accuracy"):
        assert np.isfinite(m_a[6][key]), key
    assert os.listdir(os.path.join(straight, "tb")), "TensorBoard event file written"


def test_probe_reports_pretrained_and_random(data_dirs, tmp_path, monkeypatch):
    config = tiny_config(data_dirs, steps=2, ckpt_every=2, log_every=1)
    workdir = str(tmp_path / "run")
    loop.pretrain(config, workdir)
    results = probe.run(workdir, compare_random=True)
    assert [r["encoder"] for r in results] == ["pre-trained (step 2)", "random-init"]
    for r in results:
        assert 0.0 < r["mAP"] <= 1.0
        assert r["eval_clips"] == 10 and r["train_clips"] == 12
    saved = json.load(open(os.path.join(workdir, probe.RESULTS_FILE)))
    assert [r["mAP"] for r in saved["results"]] == [r["mAP"] for r in results]
    table = probe.format_table(results)
    assert "random-init" in table and "pre-trained (step 2)" in table
    assert [r["crop_frames"] for r in results] == [64, 64]  # default window: the pre-training crop

    # `--crop-frames` / config.probe.crop_frames set the frames embedded per clip, not the pre-training crop
    seen = []
    extract = embed.extract
    monkeypatch.setattr(embed, "extract", lambda *a, **kw: seen.append(kw["crop_frames"]) or extract(*a, **kw))
    assert cli.main(["probe", "--workdir", workdir, "--random-init", "--epochs", "2", "--crop-frames", "100"]) == 0
    assert seen == [100, 100]  # train and eval splits
    saved = json.load(open(os.path.join(workdir, probe.RESULTS_FILE)))
    assert saved["results"][0]["crop_frames"] == 100
    with pytest.raises(ValueError, match="config.probe.crop_frames"):
        probe.run(workdir, compare_random=False, random_init=True, overrides={"crop_frames": 0})


def test_load_config_file_and_variant(tmp_path):
    assert config_loader.load_config(CONFIG + ":tiny").method == "wav2vec2"
    assert (
        config_loader.load_config(CONFIG).model.num_layers == config_loader.load_config(CONFIG + ":S").model.num_layers
    )
    with pytest.raises(FileNotFoundError, match="nope.py"):
        config_loader.load_config(str(tmp_path / "nope.py") + ":tiny")


def test_config_errors_name_the_field(data_dirs, tmp_path):
    config = tiny_config(data_dirs)
    config.method = "nope"
    with pytest.raises(ValueError, match="config.method='nope'"):
        loop.pretrain(config, str(tmp_path / "a"))
    config = tiny_config(data_dirs)
    config.mesh.shape = (len(jax.devices()) + 1, 1, 1)
    with pytest.raises(ValueError, match="config.mesh.shape"):
        loop.pretrain(config, str(tmp_path / "b"))
    with pytest.raises(SystemExit, match="--config and --workdir are required"):
        cli.main(["pretrain", f"--config={CONFIG}:tiny"])
    with pytest.raises(SystemExit, match="lrr"):  # locked config: a misspelt field is an error
        cli.main(["pretrain", f"--config={CONFIG}:tiny", "--workdir", str(tmp_path / "c"), "--config.optimizer.lrr=1"])


@pytest.mark.slow
def test_cli_sigterm_checkpoints_and_resumes(data_dirs, tmp_path):
    """A real process killed with SIGTERM (preemption) leaves a checkpoint that the rerun resumes."""
    workdir = str(tmp_path / "run")
    args = [
        sys.executable,
        "-m",
        "audiossl_jax.cli",
        "pretrain",
        f"--config={CONFIG}:tiny",
        "--workdir",
        workdir,
        f"--config.data.train_dir={data_dirs[0]}",
        f"--config.data.eval_dir={data_dirs[1]}",
        "--config.train.steps=100000",
        "--config.train.ckpt_every=100000",
        "--config.train.log_every=1",
    ]
    proc = subprocess.Popen(args, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    metrics_file = os.path.join(workdir, "metrics.jsonl")
    deadline = time.time() + 240
    while not (os.path.exists(metrics_file) and os.path.getsize(metrics_file) > 0):
        assert proc.poll() is None, proc.stdout.read()
        assert time.time() < deadline, "no training step within 240 s"
        time.sleep(0.5)
    proc.send_signal(signal.SIGTERM)
    output, _ = proc.communicate(timeout=120)
    assert proc.returncode == cli.EXIT_PREEMPTED, output  # checkpointed; distinct from a finished run (0)
    assert "SIGTERM received" in output
    step, _, _ = latest_params(workdir)
    assert step >= 1
    rerun = subprocess.run(args + ["--max_steps=2"], cwd=REPO, capture_output=True, text=True, timeout=240)
    assert rerun.returncode == 0, rerun.stdout + rerun.stderr
    assert latest_params(workdir)[0] == step + 2


def test_profile_window_writes_trace_and_op_tables(data_dirs, tmp_path):
    """config.train.profile_start / profile_steps: steps 2-3 traced into <workdir>/profile with
    op_profile.json / .txt (op time by category and module). (A run without it writes none:
    test_stop_and_resume_equals_uninterrupted_run.)"""
    config = tiny_config(data_dirs, steps=4, ckpt_every=4, log_every=1, profile_start=2, profile_steps=2)
    workdir = str(tmp_path / "profiled")
    assert loop.pretrain(config, workdir)["step"] == 4
    with open(os.path.join(workdir, "profile", "op_profile.json")) as f:
        table = json.load(f)
    assert (table["first_step"], table["last_step"], table["steps"]) == (2, 3, 2)
    assert table["total_ms"] > 0 and "matmul" in table["by_category"]
    assert table["cpu_ms"] > 0 and table["unattributed_ms"] >= 0
    assert any(r["pass"] == "bwd" and r["scope"].startswith("Wav2Vec2Model/encoder") for r in table["by_scope"])
    assert os.path.exists(os.path.join(workdir, "profile", "op_profile.txt"))
    assert sorted(read_metrics(workdir)) == [1, 2, 3, 4]  # the traced steps are ordinary steps

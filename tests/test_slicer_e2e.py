"""SLICER end to end: tiny pre-training on demo log-mel that stops and resumes with the queue, the
teacher, the k-mix bank and the BatchNorm statistics in the checkpoint, then `audiossl probe`."""

import json
import os

import jax
import numpy as np
import pytest

from audiossl_jax import cli, config_loader
from audiossl_jax.evaluate import probe
from audiossl_jax.train import checkpointing, loop

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
STEPS = 3  # tiny: batch 4 -> 8 keys per step into a queue of 32; the bank (12) is fitted at step 2


@pytest.fixture(scope="module")
def runs(tmp_path_factory, prepare_demo_splits):
    """The same tiny run twice: straight to STEPS, and stopped at step 2 then resumed."""
    root = tmp_path_factory.mktemp("slicer_e2e")
    config = config_loader.load_config(os.path.join(REPO, "configs", "slicer.py:tiny"))
    config.data.train_dir, config.data.eval_dir = prepare_demo_splits("librosa_mel", num_mel_bins=64)
    config.train.update(steps=STEPS, log_every=1, ckpt_every=STEPS)
    config.probe.epochs = 5
    straight, resumed = str(root / "straight"), str(root / "resumed")
    loop.pretrain(config, straight)
    stopped = loop.pretrain(config, resumed, max_steps=2)
    finished = loop.pretrain(config, resumed)
    return straight, resumed, stopped, finished


def latest_state(workdir):
    ckpt = checkpointing.Checkpointer(os.path.join(workdir, loop.CHECKPOINT_DIR), async_save=False)
    step = ckpt.latest_step()
    state, _ = ckpt.read(step)
    ckpt.close()
    return step, state


def test_resumed_run_equals_the_straight_run_with_queue_teacher_and_bank(runs):
    straight, resumed, stopped, finished = runs
    assert (stopped["step"], finished["step"]) == (2, STEPS)
    step_a, a = latest_state(straight)
    step_b, b = latest_state(resumed)
    assert step_a == step_b == STEPS
    aux = b["aux"]
    assert set(aux) >= {"teacher", "queue", "bank", "batch_stats"}
    assert int(np.asarray(aux["queue"]["ptr"])) == (2 * 4 * STEPS) % 32  # FIFO pointer after 3 pushes of 8
    assert bool(np.asarray(aux["bank"]["fitted"]))  # the k-means centroids are part of the checkpoint
    teacher_gap = max(
        float(np.abs(np.asarray(s) - np.asarray(t)).max())
        for s, t in zip(jax.tree.leaves(b["params"]), jax.tree.leaves(aux["teacher"]))
    )
    assert teacher_gap > 0  # an EMA of the student, not a copy
    for name, tree_a, tree_b in (("params", a["params"], b["params"]), ("aux", a["aux"], b["aux"])):
        assert jax.tree.structure(tree_a) == jax.tree.structure(tree_b), name
        for x, y in zip(jax.tree.leaves(tree_a), jax.tree.leaves(tree_b)):
            np.testing.assert_allclose(np.asarray(x), np.asarray(y), rtol=1e-5, atol=1e-6, err_msg=name)
    with open(os.path.join(resumed, "metrics.jsonl")) as f:
        assert [json.loads(line)["step"] for line in f] == list(range(1, STEPS + 1))


def test_probe_cli_scores_the_pretrained_and_the_random_encoder(runs, capsys):
    _, resumed, _, _ = runs
    assert cli.main(["probe", "--workdir", resumed, "--compare-random"]) == 0
    assert "pre-trained (step 3)" in capsys.readouterr().out
    with open(os.path.join(resumed, probe.RESULTS_FILE)) as f:
        rows = json.load(f)["results"]
    assert [r["encoder"] for r in rows] == ["pre-trained (step 3)", "random-init"]
    for r in rows:
        assert 0.0 < r["mAP"] <= 1.0 and r["eval_clips"] == 10 and r["train_clips"] == 12
        assert r["embedding_dim"] == 32 and r["crop_frames"] == 32  # tiny: max + mean of a 32-d encoder

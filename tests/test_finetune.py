"""Fine-tuning run by the training loop (objectives/finetune.py): the three encoders on tiny configs,
multi-label (mAP) and multi-class (top-1), a killed and restarted fine-tuning that resumes, and the
probe's partial restore of a run's params (no optimizer, no training data)."""

import csv
import json
import os
import random
import shutil
import subprocess
import sys
import time

import jax
import numpy as np
import pytest

from audiossl_jax import config_loader
from audiossl_jax.data import pipeline, prep
from audiossl_jax.evaluate import finetune, probe
from audiossl_jax.features import frontends
from audiossl_jax.objectives import registry as objectives
from audiossl_jax.parallel import mesh as mesh_lib
from audiossl_jax.parallel import sharding as sharding_lib
from audiossl_jax.train import checkpointing, loop, optimizer, run_files
from audiossl_jax.train import step as step_lib

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
METHODS = {
    "wav2vec2": ("wav2vec2_conformer.py:tiny", "librosa_mel"),
    "eat": ("eat.py:tiny", "kaldi_fbank"),
    "slicer": ("slicer.py:tiny", "librosa_mel"),
}


def _single_label_split(train_dir: str, out: str, frontend_name: str) -> str:
    """The demo train clips again, each with only its first label: a multi-class split."""
    audio = os.path.join(os.path.dirname(os.path.dirname(train_dir)), "audio")
    rows = list(csv.DictReader(open(os.path.join(audio, "train.csv"))))
    single = os.path.join(out, "single.csv")
    with open(single, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["path", "labels"])
        for r in rows:
            writer.writerow([os.path.join(audio, r["path"]), r["labels"].split(";")[0]])
    data_dir = os.path.join(out, "single")
    prep.prepare(
        single,
        data_dir,
        frontend=frontends.make_frontend(frontend_name, num_mel_bins=64),
        workers=1,
        progress=False,
        log=lambda *a: None,
        class_names=pipeline.class_names(train_dir),
    )
    return data_dir


@pytest.fixture(scope="module", params=list(METHODS))
def pretrained(request, tmp_path_factory, prepare_demo_splits):
    """(method, workdir, single-label split) of a 2-step tiny pre-training of each method."""
    method = request.param
    spec, frontend_name = METHODS[method]
    root = tmp_path_factory.mktemp(f"ft_{method}")
    config = config_loader.load_config(os.path.join(REPO, "configs", spec))
    config.data.train_dir, config.data.eval_dir = prepare_demo_splits(frontend_name, num_mel_bins=64)
    config.train.steps = 2
    workdir = str(root / "run")
    loop.pretrain(config, workdir)
    return method, workdir, _single_label_split(config.data.train_dir, str(root), frontend_name)


def test_finetune_multilabel_from_pretrained_and_multiclass_from_random(pretrained, tmp_path, capsys):
    method, workdir, single = pretrained
    rows = finetune.run(workdir, out=str(tmp_path / "ml"), overrides={"steps": 3})
    progress = capsys.readouterr().err
    assert f"finetune {method}" in progress and "pretrain finetune" not in progress  # the progress bar's label
    assert [r["encoder"] for r in rows] == ["pre-trained (step 2)"]
    assert rows[0]["step"] == 3 and [e["step"] for e in rows[0]["evals"]] == [2, 3]
    assert 0.0 <= rows[0]["mAP"] <= 1.0 and np.isfinite(rows[0]["mean_AUC"]) and np.isfinite(rows[0]["last_loss"])
    saved = run_files.load_run_config(rows[0]["workdir"])  # the loop's config.json of the fine-tuning
    assert saved.method == "finetune" and saved.finetune.base_method == method
    assert saved.finetune.init_from == workdir

    rows = finetune.run(
        workdir,
        out=str(tmp_path / "mc"),
        random_init=True,
        train_dir=single,
        eval_dir=single,
        overrides={"steps": 3, "multilabel": False, "label_smoothing": 0.1},
    )
    assert [r["encoder"] for r in rows] == ["random-init"]
    assert 0.0 <= rows[0]["top1"] <= 1.0 and "mAP" not in rows[0]
    with open(tmp_path / "mc" / finetune.RESULTS_FILE) as f:
        assert json.load(f)["finetune"]["multilabel"] is False


def test_killed_finetuning_resumes_without_duplicate_rows(pretrained, tmp_path):
    """Killed after logging and evaluating step 3, before its checkpoint was saved: the restart
    resumes from step 2, and every step and evaluation appears once in metrics.jsonl."""
    method, workdir, _ = pretrained
    if method != "eat":
        pytest.skip("one encoder is enough for the loop's resume")
    out = str(tmp_path / "ft")
    first = finetune.run(workdir, out=out, overrides={"steps": 4}, max_steps=3)
    run_dir = first[0]["workdir"]
    assert first[0]["step"] == 3 and "mAP" not in first[0]  # not finished: no final scores
    shutil.rmtree(os.path.join(run_dir, loop.CHECKPOINT_DIR, "3"))  # killed before step 3 was saved
    second = finetune.run(workdir, out=out, overrides={"steps": 4})
    assert second[0]["step"] == 4 and 0.0 <= second[0]["mAP"] <= 1.0
    with open(os.path.join(run_dir, "metrics.jsonl")) as f:
        records = [json.loads(line) for line in f]
    assert [r["step"] for r in records if "loss" in r] == [1, 2, 3, 4]
    assert [r["step"] for r in records if "eval/eval/mAP" in r] == [2, 4]
    assert [e["step"] for e in second[0]["evals"]] == [2, 4]


def _final_state(run_dir):
    ckpt = checkpointing.Checkpointer(os.path.join(run_dir, loop.CHECKPOINT_DIR), async_save=False)
    try:
        return ckpt.read(ckpt.latest_step())[0]
    finally:
        ckpt.close()


@pytest.mark.slow
def test_kill_9_during_finetuning_then_the_same_command_resumes(pretrained, tmp_path):
    """`audiossl finetune` killed with SIGKILL mid-run; the same command again continues from the
    last checkpoint to the same final state as an uninterrupted fine-tuning, each step logged once."""
    method, workdir, _ = pretrained
    if method != "eat":
        pytest.skip("one encoder is enough for the loop's resume")
    straight = finetune.run(workdir, out=str(tmp_path / "straight"), overrides={"steps": 6})[0]
    out = str(tmp_path / "killed")
    args = [sys.executable, "-m", "audiossl_jax.cli", "finetune", "--workdir", workdir, "--out", out, "--steps", "6"]
    metrics = os.path.join(out, "pre-trained", "metrics.jsonl")
    proc = subprocess.Popen(
        args,
        cwd=REPO,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env={**os.environ, "PYTHONPATH": REPO},
    )
    try:
        lines, deadline = random.Random(os.getpid()).randint(1, 5), time.time() + 300
        while not (os.path.exists(metrics) and len(open(metrics).readlines()) >= lines):
            assert proc.poll() is None, proc.stdout.read()
            assert time.time() < deadline, "no fine-tuning metrics within 300 s"
            time.sleep(0.1)
    finally:
        proc.kill()  # SIGKILL: no handler, no cleanup; its workdir lock is left behind
        proc.wait()
    resumed = finetune.run(workdir, out=out, overrides={"steps": 6})[0]  # takes over the stale lock
    assert resumed["step"] == 6 and resumed["mAP"] == straight["mAP"]
    records = [json.loads(line) for line in open(metrics)]
    assert [r["step"] for r in records if "loss" in r] == list(range(1, 7))
    assert [e["step"] for e in resumed["evals"]] == [2, 4, 6]
    jax.tree.map(
        np.testing.assert_array_equal,
        _final_state(straight["workdir"])["params"],
        _final_state(resumed["workdir"])["params"],
    )


def test_probe_restores_exactly_the_checkpointed_params(pretrained):
    """`probe.encoder_variables` (orbax partial restore, no optimizer, no data iterator) gives the
    params and aux of the checkpoint bit for bit; its random init equals the pre-training init."""
    _, workdir, _ = pretrained
    config = run_files.load_run_config(workdir)
    mesh = mesh_lib.make_mesh(config.mesh.shape, config.mesh.axes)
    ckpt = checkpointing.Checkpointer(os.path.join(workdir, loop.CHECKPOINT_DIR), async_save=False)
    saved, _ = ckpt.read(ckpt.latest_step())
    ckpt.close()
    with jax.set_mesh(mesh):
        _, params, aux, step = probe.encoder_variables(config, workdir, random_init=False, mesh=mesh)
        _, init_params, init_aux, init_step = probe.encoder_variables(config, workdir, random_init=True, mesh=mesh)
    assert step == 2 and init_step == 0
    for got, want in ((params, saved["params"]), (aux, saved["aux"])):
        assert jax.tree.structure(got) == jax.tree.structure(want)
        for a, b in zip(jax.tree.leaves(got), jax.tree.leaves(want)):
            np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    # the pre-training loop's own initialisation (a real first batch, the optimizer built)
    objective = objectives.build(config)
    tx, _ = optimizer.make_optimizer(config.optimizer, int(config.train.steps))
    data = pipeline.train_iterator(
        config.data.train_dir,
        batch_size=config.data.batch_size,
        crop_frames=config.data.crop_frames,
        seed=config.seed,
        **pipeline.normalization_kwargs(config.data),
    )
    batch = sharding_lib.global_batch(next(data), sharding_lib.batch_sharding(mesh, config.rules))
    with jax.set_mesh(mesh):
        state, _ = step_lib.init_train_state(
            objective, tx, jax.random.split(jax.random.key(config.seed))[0], batch, mesh, config.rules
        )
    for a, b in zip(jax.tree.leaves(init_params), jax.tree.leaves(state["params"])):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


def test_evaluation_builds_no_optimizer_and_opens_no_training_iterator(pretrained, monkeypatch):
    """The probe's and the frozen encoder's restore (`audiossl probe / embed / label-efficiency`, HEAR)
    build no optimizer, no train state and open no training iterator: each of those raises here."""
    from audiossl_jax.evaluate import encoder

    _, workdir, _ = pretrained

    def refuse(*args, **kwargs):
        raise AssertionError("evaluation built an optimizer / train state or opened a training iterator")

    for module, name in (
        (optimizer, "make_optimizer"),
        (pipeline, "train_iterator"),
        (step_lib, "init_train_state"),
        (step_lib, "abstract_train_state"),
    ):
        monkeypatch.setattr(module, name, refuse)
    config = run_files.load_run_config(workdir)
    mesh = mesh_lib.make_mesh(config.mesh.shape, config.mesh.axes)
    with jax.set_mesh(mesh):
        assert probe.encoder_variables(config, workdir, random_init=False, mesh=mesh)[3] == 2
        assert probe.encoder_variables(config, workdir, random_init=True, mesh=mesh)[3] == 0
    assert encoder.FrozenEncoder.load(workdir).step == 2


def test_evaluation_modules_do_not_import_the_training_loop():
    """In a fresh interpreter, the evaluation entry points import neither the loop, nor the train step,
    nor the optimizer module (only the partial restore, `train/restore.py`)."""
    code = (
        "import sys\n"
        "import audiossl_jax.evaluate.probe, audiossl_jax.evaluate.encoder, audiossl_jax.evaluate.embed_audio\n"
        "import audiossl_jax.evaluate.label_efficiency, audiossl_jax.hear\n"
        "print(sorted(m for m in sys.modules if m.startswith('audiossl_jax.train.')))\n"
    )
    env = dict(os.environ, PYTHONPATH=REPO + os.pathsep + os.environ.get("PYTHONPATH", ""), JAX_PLATFORMS="cpu")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, cwd=REPO, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    loaded = out.stdout.strip().splitlines()[-1]
    assert "audiossl_jax.train.restore" in loaded
    for module in ("audiossl_jax.train.loop", "audiossl_jax.train.step", "audiossl_jax.train.optimizer"):
        assert f"'{module}'" not in loaded, loaded

"""EAT end to end: tiny pre-training that stops and resumes (teacher in the checkpoint), then
`audiossl finetune` of the pre-trained and the random-init encoder."""

import json
import os

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from audiossl_jax import cli, config_loader
from audiossl_jax.evaluate import finetune
from audiossl_jax.objectives import finetune_recipe as recipe
from audiossl_jax.objectives import registry as objectives
from audiossl_jax.parallel import mesh as mesh_lib
from audiossl_jax.parallel import sharding as sharding_lib
from audiossl_jax.train import checkpointing, loop, optimizer, run_files
from audiossl_jax.train import step as step_lib

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def eat_config(variant):
    return config_loader.load_config(os.path.join(REPO, "configs", f"eat.py:{variant}"))


@pytest.fixture(scope="module")
def pretrained(tmp_path_factory, prepare_demo_splits):
    """EAT tiny pre-trained for 4 steps on 64-bin demo data: stopped at 2, resumed to 4."""
    root = tmp_path_factory.mktemp("eat_e2e")
    config = eat_config("tiny")
    config.data.train_dir, config.data.eval_dir = prepare_demo_splits("kaldi_fbank", num_mel_bins=64)
    workdir = str(root / "run")
    first = loop.pretrain(config, workdir, max_steps=2)
    second = loop.pretrain(config, workdir)
    return workdir, first, second


def test_pretraining_stops_resumes_and_checkpoints_the_teacher(pretrained):
    workdir, first, second = pretrained
    assert first["step"] == 2 and second["step"] == 4
    with open(os.path.join(workdir, "metrics.jsonl")) as f:
        steps = [json.loads(line)["step"] for line in f]
    assert steps == [1, 2, 3, 4]
    ckpt = checkpointing.Checkpointer(os.path.join(workdir, loop.CHECKPOINT_DIR), async_save=False)
    state, _ = ckpt.read(ckpt.latest_step())
    ckpt.close()
    student, teacher = state["params"]["encoder"], state["aux"]["teacher"]
    assert jax.tree.structure(student) == jax.tree.structure(teacher)
    gaps = [
        float(np.abs(np.asarray(s) - np.asarray(t)).max())
        for s, t in zip(jax.tree.leaves(student), jax.tree.leaves(teacher))
    ]
    assert max(gaps) > 0  # the teacher is an EMA of the student, not a copy


def test_finetune_cli_trains_both_encoders_and_scores_them(pretrained, tmp_path, capsys):
    workdir, _, _ = pretrained
    out = str(tmp_path / "ft")
    assert (
        cli.main(
            ["finetune", "--workdir", workdir, "--compare-random", "--out", out, "--steps", "3", "--warmup-steps", "1"]
        )
        == 0
    )
    printed = capsys.readouterr().out
    assert "pre-trained (step 4)" in printed and "random-init" in printed and "mAP" in printed
    with open(os.path.join(out, finetune.RESULTS_FILE)) as f:
        saved = json.load(f)
    rows = saved["results"]
    assert [r["encoder"] for r in rows] == ["pre-trained (step 4)", "random-init"]
    assert saved["finetune"]["steps"] == 3 and saved["finetune"]["drop_path"] == 0.1
    for r in rows:
        assert 0.0 <= r["mAP"] <= 1.0 and np.isfinite(r["last_loss"])
        assert [e["step"] for e in r["evals"]] == [2, 3]  # tiny: eval_every 2, and at the end
        ckpt_dir = os.path.join(out, r["encoder"].split(" (")[0], loop.CHECKPOINT_DIR)
        assert sorted(int(s) for s in os.listdir(ckpt_dir) if s.isdigit()) == [2, 3]  # the loop's orbax steps
    assert rows[0]["first_loss"] != rows[1]["first_loss"]  # different encoders were fine-tuned


def test_finetune_starts_from_the_pretrained_encoder_params_only(pretrained, tmp_path):
    """Step 0 of a fine-tuning from the pre-training run: its encoder params are exactly the
    checkpoint's student encoder (partial restore: no optimizer, no teacher, no decoder); from random
    init they are the random init."""
    workdir, _, _ = pretrained
    config = run_files.load_run_config(workdir)
    ft = finetune.settings(config, {"steps": 3, "warmup_steps": 1})
    ckpt = checkpointing.Checkpointer(os.path.join(workdir, loop.CHECKPOINT_DIR), async_save=False)
    saved, _ = ckpt.read(ckpt.latest_step())
    ckpt.close()
    for random_init in (False, True):
        c = finetune.finetune_config(
            config, workdir, ft, random_init=random_init, train_dir=config.data.train_dir, eval_dir=config.data.eval_dir
        )
        objective = objectives.build(c)
        mesh = mesh_lib.make_mesh(c.mesh.shape, c.mesh.axes)
        batch = {
            "features": jnp.zeros((2, c.data.crop_frames, c.finetune.mel_bins), jnp.float32),
            "valid": jnp.ones((2, c.data.crop_frames), bool),
            "labels": jnp.zeros((2, c.finetune.num_classes), jnp.float32),
        }
        batch = sharding_lib.global_batch(jax.device_get(batch), sharding_lib.batch_sharding(mesh, c.rules))
        tx, _ = optimizer.make_optimizer(c.optimizer, 3, lr_scales=objective.lr_scales)
        with jax.set_mesh(mesh):
            state, shardings = step_lib.init_train_state(objective, tx, jax.random.key(0), batch, mesh, c.rules)
            started = objective.warm_start(state, shardings, mesh)
        assert set(started["params"]) == {"encoder", "fc_norm", "head"}
        same = [
            np.array_equal(np.asarray(a), np.asarray(b))
            for a, b in zip(jax.tree.leaves(started["params"]["encoder"]), jax.tree.leaves(saved["params"]["encoder"]))
        ]
        assert all(same) if not random_init else not any(same[:1])


def test_finetune_settings_errors_name_the_field(pretrained, tmp_path):
    workdir, _, _ = pretrained
    with pytest.raises(ValueError, match="warmup_steps"):
        finetune.run(workdir, out=str(tmp_path / "a"), overrides={"steps": 3, "warmup_steps": 3})
    with pytest.raises(ValueError, match="unknown fine-tuning setting 'epochs'"):
        finetune.run(workdir, out=str(tmp_path / "b"), overrides={"epochs": 3})
    config = ml_collections.ConfigDict({"method": "eat", "finetune": {"class_balanced": True}})
    with pytest.raises(ValueError, match="class_balanced"):
        finetune.settings(config)
    with pytest.raises(ValueError, match="pooling"):
        finetune.run(workdir, out=str(tmp_path / "c"), overrides={"pooling": "max"})


def test_finetune_loss_is_the_recipe_loss_and_the_step_an_optimizer_update(pretrained):
    """With mixup, SpecAugment and drop path off, the loop's step on the fine-tuning objective has the
    recipe's loss of the classifier's logits, and the parameters move by the optimizer's update."""
    workdir, _, _ = pretrained
    config = run_files.load_run_config(workdir)
    ft = finetune.settings(
        config,
        {"mixup_prob": 0.0, "specaug_freq": 0.0, "specaug_time": 0.0, "drop_path": 0.0, "steps": 10, "warmup_steps": 1},
    )
    c = finetune.finetune_config(
        config, workdir, ft, random_init=True, train_dir=config.data.train_dir, eval_dir=config.data.eval_dir
    )
    objective = objectives.build(c)
    rng = np.random.default_rng(0)
    batch = {
        "features": jnp.asarray(rng.normal(size=(2, 64, 64)), jnp.float32),
        "valid": jnp.ones((2, 64), bool),
        "labels": jnp.zeros((2, c.finetune.num_classes), jnp.float32).at[0, 1].set(1).at[1, 0].set(1),
    }
    import flax.linen as nn

    variables = nn.unbox(objective.init(jax.random.key(0), batch))
    params, aux = variables["params"], variables["aux"]
    tx, schedule = optimizer.make_optimizer(c.optimizer, 10, lr_scales=objective.lr_scales)
    state = {"step": jnp.zeros((), jnp.int32), "params": params, "aux": aux, "opt_state": tx.init(params)}
    mesh = mesh_lib.make_mesh(c.mesh.shape, c.mesh.axes)
    step = step_lib.make_train_step(objective, tx, schedule, mesh=mesh, rules=c.rules)
    with jax.set_mesh(mesh):
        new, m = jax.jit(step)(state, batch, jax.random.key(1))

    def loss(p):
        logits = objective.logits(p, aux, batch["features"], batch["valid"])
        return recipe.classification_loss(logits, batch["labels"], multilabel=True)

    @jax.jit
    def reference(p):
        value, grads = jax.value_and_grad(loss)(p)
        return value, tx.update(grads, tx.init(p), p)[0]

    expected, updates = reference(params)
    np.testing.assert_allclose(float(m["loss"]), float(expected), rtol=1e-5)
    for a, b, u in zip(jax.tree.leaves(new["params"]), jax.tree.leaves(params), jax.tree.leaves(updates)):
        np.testing.assert_allclose(np.asarray(a) - np.asarray(b), np.asarray(u), atol=1e-6)


def test_a_run_without_a_finetuning_recipe_is_refused_naming_the_fields():
    config = ml_collections.ConfigDict({"method": "wav2vec2"})
    with pytest.raises(ValueError, match="config.finetune.batch_size/steps/lr/warmup_steps not set"):
        finetune.settings(config)
    ft = finetune.settings(config, {"batch_size": 2, "steps": 3, "lr": 1e-4, "warmup_steps": 1})
    assert ft.layer_decay == 1.0 and ft.mixup_prob == 0.0 and ft.drop_path == 0.0  # neutral defaults

"""EAT end to end: tiny pre-training that stops and resumes (teacher in the checkpoint), then
`audiossl finetune` of the pre-trained and the random-init encoder."""
import json
import os

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from audiossl_jax import cli
from audiossl_jax.evaluate import finetune
from audiossl_jax.evaluate import finetune_recipe as recipe
from audiossl_jax.models.vit import AudioViT
from audiossl_jax.train import checkpointing, config_defaults, loop

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def eat_config(variant):
    return config_defaults.load_config(os.path.join(REPO, "configs", f"eat.py:{variant}"))


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
    gaps = [float(np.abs(np.asarray(s) - np.asarray(t)).max()) for s, t in
            zip(jax.tree.leaves(student), jax.tree.leaves(teacher))]
    assert max(gaps) > 0  # the teacher is an EMA of the student, not a copy


def test_finetune_cli_trains_both_encoders_and_scores_them(pretrained, tmp_path, capsys):
    workdir, _, _ = pretrained
    out = str(tmp_path / "ft")
    assert cli.main(["finetune", "--workdir", workdir, "--compare-random", "--out", out, "--steps", "3",
                     "--warmup-steps", "1"]) == 0
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
        assert os.path.isdir(os.path.join(out, r["encoder"].split(" (")[0], "params"))
    assert rows[0]["first_loss"] != rows[1]["first_loss"]  # different encoders were fine-tuned


def test_finetune_settings_errors_name_the_field(pretrained, tmp_path):
    workdir, _, _ = pretrained
    with pytest.raises(ValueError, match="warmup_steps"):
        finetune.run(workdir, out=str(tmp_path / "a"), overrides={"steps": 3, "warmup_steps": 3})
    with pytest.raises(ValueError, match="unknown fine-tuning setting 'epochs'"):
        finetune.run(workdir, out=str(tmp_path / "b"), overrides={"epochs": 3})
    config = ml_collections.ConfigDict({"method": "eat", "finetune": {"class_balanced": True}})
    with pytest.raises(ValueError, match="class_balanced"):
        finetune.settings(config)
    other = tmp_path / "w2v"
    other.mkdir()
    (other / loop.CONFIG_FILE).write_text(json.dumps({"method": "wav2vec2"}))
    with pytest.raises(ValueError, match="wav2vec2"):
        finetune.run(str(other))


def test_finetune_step_is_the_recipe_loss_and_an_optimizer_update():
    """With mixup, SpecAugment and drop path off, the step's loss is the recipe's loss of the
    classifier's logits, and the parameters move by the optimizer's update."""
    config = eat_config("tiny")
    ft = finetune.settings(config, {"mixup_prob": 0.0, "specaug_freq": 0.0, "specaug_time": 0.0,
                                    "drop_path": 0.0, "steps": 10, "warmup_steps": 1})
    encoder = AudioViT(dim=32, depth=2, num_heads=2, patch_size=16)
    model = recipe.EATClassifier(encoder=encoder, num_classes=5)
    rng = np.random.default_rng(0)
    batch = {"features": jnp.asarray(rng.normal(size=(2, 64, 64)), jnp.float32),
             "valid": jnp.ones((2, 64), bool),
             "labels": jnp.asarray([[1, 0, 0, 1, 0], [0, 1, 0, 0, 0]], jnp.float32)}
    import flax.linen as nn

    params = nn.unbox(model.init(jax.random.key(0), batch["features"], batch["valid"])["params"])
    tx, _ = recipe.finetune_optimizer(ft, params, 2)
    opt_state = tx.init(params)
    new, _, m = jax.jit(finetune.make_step(model, tx, ft))(params, opt_state, batch, jax.random.key(1))

    def loss(p):
        logits = model.apply({"params": p}, batch["features"], batch["valid"])
        return recipe.classification_loss(logits, batch["labels"], multilabel=True)

    @jax.jit
    def reference(p):
        value, grads = jax.value_and_grad(loss)(p)
        return value, tx.update(grads, tx.init(p), p)[0]

    expected, updates = reference(params)
    np.testing.assert_allclose(float(m["loss"]), float(expected), rtol=1e-5)
    for a, b, u in zip(jax.tree.leaves(new), jax.tree.leaves(params), jax.tree.leaves(updates)):
        np.testing.assert_allclose(np.asarray(a) - np.asarray(b), np.asarray(u), atol=1e-6)

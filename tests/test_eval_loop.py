"""Evaluation inside pre-training: the random-init baseline, the eval series, equality with
`audiossl probe`, stop/resume without duplicates, best steps, the learning-curve PNG, suite files."""

import json
import os
import shutil

import numpy as np
import pytest
from test_pretrain_e2e import data_dirs, tiny_config  # noqa: F401 - the module fixture and config

from audiossl_jax import cli
from audiossl_jax.evaluate import curves, evaluator, probe, scoring
from audiossl_jax.train import loop, metrics_writer

STEPS = 4


def eval_config(data_dirs, **overrides):
    config = tiny_config(data_dirs, steps=STEPS, ckpt_every=2, log_every=1)  # the e2e test's tiny run
    config.eval.update(every=2, **overrides)
    return config


def eval_rows(workdir, prefix):
    return [
        (r["step"], {k: v for k, v in r.items() if k.startswith(prefix)})
        for r in metrics_writer.read_records(workdir)
        if any(k.startswith(prefix) for k in r)
    ]


@pytest.fixture(scope="module")
def straight(data_dirs, tmp_path_factory):
    workdir = str(tmp_path_factory.mktemp("eval_run"))
    summary = loop.pretrain(eval_config(data_dirs), workdir)
    return workdir, summary


def test_baseline_once_at_step_0_and_the_series_every_n_steps(straight):
    workdir, summary = straight
    baseline = eval_rows(workdir, "random_init/")
    assert [s for s, _ in baseline] == [0]
    assert set(baseline[0][1]) >= {"random_init/eval/mAP", "random_init/eval/knn_mAP", "random_init/seconds"}
    model_free = eval_rows(workdir, "logmel_stats/")
    assert [s for s, _ in model_free] == [0] and 0.0 < model_free[0][1]["logmel_stats/eval/mAP"] <= 1.0
    series = eval_rows(workdir, "eval/")
    assert [s for s, _ in series] == [2, 4]
    for _, row in series:
        assert 0.0 < row["eval/eval/mAP"] <= 1.0 and 0.0 < row["eval/eval/knn_mAP"] <= 1.0
    assert summary["eval_seconds"] > 0
    best = json.load(open(os.path.join(workdir, loop.EVAL_BEST_FILE)))
    values = {s: r["eval/eval/mAP"] for s, r in series}
    top = max(values, key=values.get)
    assert best["best"]["eval/eval/mAP"] == {"value": values[top], "step": top}
    assert best["random_init"]["random_init/eval/mAP"] == baseline[0][1]["random_init/eval/mAP"]
    assert best["logmel_stats"]["logmel_stats/eval/mAP"] == model_free[0][1]["logmel_stats/eval/mAP"]
    last = json.load(open(os.path.join(workdir, loop.EVAL_LAST_FILE)))  # full results of each series' latest
    assert {k: v["step"] for k, v in last.items()} == {"eval": 4, "random_init": 0, "logmel_stats": 0}
    assert last["eval"]["results"]["eval"]["mAP"] == values[4]
    assert np.mean(list(last["eval"]["results"]["eval"]["per_class_AP"].values())) == pytest.approx(values[4])
    png = os.path.join(workdir, loop.CURVES_FILE)
    assert summary["curves"] == png and open(png, "rb").read(8) == b"\x89PNG\r\n\x1a\n"


def test_in_loop_probe_equals_audiossl_probe_on_the_same_checkpoint(straight, capsys):
    workdir, _ = straight
    out = os.path.join(workdir, "probe_here.json")
    assert cli.main(["probe", "--workdir", workdir, "--compare-random", "--logmel-baseline", "--out", out]) == 0
    assert "kNN mAP" in capsys.readouterr().out
    assert not os.path.exists(os.path.join(workdir, probe.RESULTS_FILE))  # --out, not the default
    rows = {r["encoder"]: r for r in json.load(open(out))["results"]}
    last = dict(eval_rows(workdir, "eval/"))[STEPS]
    base = eval_rows(workdir, "random_init/")[0][1]
    assert rows[f"pre-trained (step {STEPS})"]["mAP"] == last["eval/eval/mAP"]
    assert rows[f"pre-trained (step {STEPS})"]["knn_mAP"] == last["eval/eval/knn_mAP"]
    assert rows["random-init"]["mAP"] == base["random_init/eval/mAP"]
    model_free = eval_rows(workdir, "logmel_stats/")[0][1]
    assert rows[probe.LOGMEL_STATS_NAME]["mAP"] == model_free["logmel_stats/eval/mAP"]


def test_resume_continues_the_series_without_duplicates(straight, data_dirs, tmp_path, capsys):
    workdir = str(tmp_path / "resumed")
    config = eval_config(data_dirs)
    assert loop.pretrain(config, workdir, max_steps=3)["step"] == 3
    shutil.rmtree(os.path.join(workdir, loop.CHECKPOINT_DIR, "3"))  # killed after logging step 3, before its save
    capsys.readouterr()
    assert loop.pretrain(config, workdir)["step"] == STEPS
    assert f"resuming from step 2 of {STEPS}" in capsys.readouterr().out
    records = metrics_writer.read_records(workdir)
    train_steps = [r["step"] for r in records if "loss" in r]
    assert train_steps == list(range(1, STEPS + 1))
    assert [s for s, _ in eval_rows(workdir, "random_init/")] == [0]
    assert [s for s, _ in eval_rows(workdir, "logmel_stats/")] == [0]
    assert [s for s, _ in eval_rows(workdir, "eval/")] == [2, 4]
    # the resumed run reproduces the uninterrupted run's evaluations
    for (s_a, a), (s_b, b) in zip(eval_rows(straight[0], "eval/"), eval_rows(workdir, "eval/")):
        assert s_a == s_b and a["eval/eval/mAP"] == pytest.approx(b["eval/eval/mAP"], abs=1e-6)


def test_suite_file_tasks_relative_paths_and_errors(data_dirs, tmp_path):
    train, test = data_dirs
    suite = tmp_path / "suite.json"
    suite.write_text(
        json.dumps({"tasks": [{"name": "demo", "train_dir": train, "test_dir": test, "type": "multilabel"}]})
    )
    config = eval_config(data_dirs, suite=str(suite))
    assert evaluator.tasks_from_config(config) == [evaluator.Task("demo", train, test, "multilabel")]
    rel = tmp_path / "rel"
    rel.mkdir()
    os.symlink(train, rel / "tr")
    os.symlink(test, rel / "te")
    (rel / "suite.json").write_text(json.dumps({"tasks": [{"name": "r", "train_dir": "tr", "test_dir": "te"}]}))
    assert evaluator.load_suite(str(rel / "suite.json"))[0].train_dir == str(rel / "tr")
    bad = tmp_path / "bad.json"
    for text, message in (
        (json.dumps({"tasks": [{"name": "x", "train_dir": train}]}), "lacks \\['test_dir'\\]"),
        (json.dumps({"tasks": []}), "no 'tasks' list"),
        (
            json.dumps({"tasks": [{"name": "x", "train_dir": train, "test_dir": test, "type": "regression"}]}),
            "type='regression'",
        ),
        ("{", "not valid JSON"),
    ):
        bad.write_text(text)
        with pytest.raises(ValueError, match=message):
            evaluator.load_suite(str(bad))
    config.eval.suite = str(tmp_path / "missing.json")
    workdir = tmp_path / "never"
    with pytest.raises(FileNotFoundError, match="config.eval.suite"):
        loop.pretrain(config, str(workdir))
    assert not workdir.exists()  # checked before anything is written
    with pytest.raises(FileNotFoundError, match="make real-audio"):  # the `cpu` configs' default suite
        evaluator.load_suite(str(tmp_path / "runs/real_audio/data/librosa_mel/suite.json"))


def test_plot_needs_evaluations(tmp_path):
    assert curves.plot_eval_curves(str(tmp_path), str(tmp_path / "x.png")) is None


def test_knn_and_task_type():
    import numpy as np

    x_train = np.array([[1.0, 0.0], [0.9, 0.1], [0.0, 1.0], [0.1, 0.9]], np.float32)
    y_train = np.array([[1, 0], [1, 0], [0, 1], [0, 1]], np.float32)
    x_test = np.array([[1.0, 0.05], [0.05, 1.0]], np.float32)
    scores = scoring.knn_scores(x_train, y_train, x_test, k=2)
    assert scores.argmax(1).tolist() == [0, 1] and np.allclose(scores.sum(1), 1.0)
    assert scoring.infer_task_type(y_train) == "multiclass"
    assert scoring.infer_task_type(np.array([[1, 1], [0, 1]], np.float32)) == "multilabel"

"""Reliability of `audiossl pretrain` (issue 12): the workdir lock, config checks before anything is
written, the non-finite guard (stop / skip), corrupt-checkpoint fallback, SIGTERM exit code, kill -9."""

import glob
import json
import os
import random
import shutil
import signal
import socket
import subprocess
import sys
import time

import jax
import numpy as np
import pytest
from test_pretrain_e2e import CONFIG, REPO, data_dirs, read_metrics, tiny_config  # noqa: F401 - module fixture

from audiossl_jax import cli, config_loader
from audiossl_jax.train import checkpointing, loop, workdir_lock


def _saved_steps(workdir):
    ckpt = checkpointing.Checkpointer(os.path.join(workdir, loop.CHECKPOINT_DIR), async_save=False)
    states = {step: ckpt.read(step) for step in ckpt._manager.all_steps()}
    ckpt.close()
    return states


def _no_tmp_left(workdir):
    return not glob.glob(os.path.join(workdir, loop.CHECKPOINT_DIR, "*tmp*"))


def _write_lock(workdir, host, pid):
    os.makedirs(workdir, exist_ok=True)
    with open(os.path.join(workdir, workdir_lock.LOCK_FILE), "w") as f:
        json.dump({"host": host, "pid": pid, "started": time.time()}, f)


def _dead_pid():
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


# ---- the workdir lock ----


def _lock_holder(workdir):
    """A process holding the workdir lock (as a trainer does) until killed."""
    code = (
        "import sys, time\nfrom audiossl_jax.train.workdir_lock import WorkdirLock\n"
        "WorkdirLock(sys.argv[1]).acquire()\nprint('locked', flush=True)\ntime.sleep(300)"
    )
    proc = subprocess.Popen([sys.executable, "-c", code, workdir], cwd=REPO, stdout=subprocess.PIPE, text=True)
    assert proc.stdout.readline().strip() == "locked"
    return proc


def test_second_trainer_refuses_naming_the_first_before_writing_anything(data_dirs, tmp_path, capsys):
    workdir = str(tmp_path / "run")
    owner = _lock_holder(workdir)
    try:
        with pytest.raises(workdir_lock.WorkdirLocked, match=f"pid {owner.pid}") as e:
            loop.pretrain(tiny_config(data_dirs), workdir)
        assert socket.gethostname() in str(e.value)
        assert os.listdir(workdir) == [workdir_lock.LOCK_FILE]  # no config.json, checkpoints, metrics
        code = cli.main(
            [
                "pretrain",
                f"--config={CONFIG}:tiny",
                "--workdir",
                workdir,
                f"--config.data.train_dir={data_dirs[0]}",
                f"--config.data.eval_dir={data_dirs[1]}",
            ]
        )
        assert code == cli.EXIT_LOCKED
        assert f"pid {owner.pid}" in capsys.readouterr().err
        assert os.listdir(workdir) == [workdir_lock.LOCK_FILE]
    finally:
        owner.kill()
        owner.wait()
    # its holder killed (-9: no release), the lock is free: taken over with a warning naming it
    said = []
    lock = workdir_lock.WorkdirLock(workdir, log=said.append).acquire()
    assert len(said) == 1 and "stale" in said[0] and f"pid {owner.pid}" in said[0]
    lock.release()
    assert not os.path.exists(os.path.join(workdir, workdir_lock.LOCK_FILE))


def test_stale_lock_files_are_taken_over_and_live_ones_refused(tmp_path):
    # local: a lock file nobody holds (its writer died) is taken over whatever pid/host it names
    stale = str(tmp_path / "stale")
    dead = _dead_pid()
    _write_lock(stale, socket.gethostname(), dead)
    said = []
    lock = workdir_lock.WorkdirLock(stale, log=said.append).acquire()
    assert len(said) == 1 and "stale" in said[0] and f"pid {dead}" in said[0]
    owner = json.load(open(os.path.join(stale, workdir_lock.LOCK_FILE)))
    assert owner["pid"] == os.getpid() and owner["host"] == socket.gethostname()
    with pytest.raises(workdir_lock.WorkdirLocked, match=f"pid {os.getpid()}"):  # held: refused, also here
        workdir_lock.WorkdirLock(stale).acquire()
    lock.release()
    assert not os.path.exists(os.path.join(stale, workdir_lock.LOCK_FILE))

    # remote (no flock): the file is the lock; another host's is refused, a dead pid of this host taken over
    import tensorflow as tf

    remote = f"ram://locks{os.getpid()}/run"
    tf.io.gfile.makedirs(remote)
    path = f"{remote}/{workdir_lock.LOCK_FILE}"
    with tf.io.gfile.GFile(path, "w") as f:
        f.write(json.dumps({"host": "some-other-host", "pid": dead, "started": time.time()}))
    with pytest.raises(workdir_lock.WorkdirLocked, match="some-other-host.*delete the lock file"):
        workdir_lock.WorkdirLock(remote).acquire()
    tf.io.gfile.remove(path)  # (ram:// appends on "w")
    with tf.io.gfile.GFile(path, "w") as f:
        f.write(json.dumps({"host": socket.gethostname(), "pid": dead, "started": time.time()}))
    said = []
    lock = workdir_lock.WorkdirLock(remote, log=said.append).acquire()
    assert len(said) == 1 and f"pid {dead}" in said[0]
    with pytest.raises(workdir_lock.WorkdirLocked, match=f"pid {os.getpid()}"):
        workdir_lock.WorkdirLock(remote).acquire()
    lock.release()
    assert not tf.io.gfile.exists(path)


# ---- config checks: before any directory is created or anything compiled ----


@pytest.mark.parametrize(
    "field,value",
    [
        ("train.steps", 0),
        ("train.steps", -1),
        ("train.ckpt_every", 0),
        ("train.log_every", 0),
        ("eval.every", -1),
        ("train.on_nonfinite", "ignore"),
        ("data.crop_frames", 0),
        ("train.profile_start", -1),
        ("train.profile_steps", 0),
    ],
)
def test_bad_config_values_name_the_field_and_leave_no_workdir(data_dirs, tmp_path, field, value):
    config = tiny_config(data_dirs)
    section, name = field.split(".")
    config[section][name] = value
    workdir = str(tmp_path / "run")
    with pytest.raises(ValueError, match=f"config.{field}="):
        loop.pretrain(config, workdir)
    assert not os.path.exists(workdir)


def test_crop_too_short_for_the_masking(data_dirs, tmp_path):
    config = tiny_config(data_dirs)
    config.data.crop_frames = 3  # wav2vec2: 0 encoder frames, mask_span 3
    with pytest.raises(ValueError, match="config.data.crop_frames=3.*config.objective.mask_span=3"):
        loop.pretrain(config, str(tmp_path / "a"))
    config.data.crop_frames = 4 * 4  # 4 encoder frames > mask_span 3: fine for the check
    from audiossl_jax.train import config_checks

    config_checks.validate_config(config)

    eat = config_loader.load_config(os.path.join(REPO, "configs", "eat.py") + ":tiny")
    eat.data.crop_frames = 8
    with pytest.raises(ValueError, match="config.data.crop_frames=8.*config.model.patch_size=16"):
        loop.pretrain(eat, str(tmp_path / "b"))
    slicer = config_loader.load_config(os.path.join(REPO, "configs", "slicer.py") + ":tiny")
    slicer.data.crop_frames = 4
    with pytest.raises(ValueError, match="config.data.crop_frames=4.*config.model.blocks"):
        loop.pretrain(slicer, str(tmp_path / "c"))
    assert os.listdir(tmp_path) == []


def test_data_errors_before_the_workdir_exists(data_dirs, tmp_path):
    config = tiny_config(data_dirs)
    config.data.train_dir = str(tmp_path / "no_such_data")
    workdir = str(tmp_path / "run")
    with pytest.raises(FileNotFoundError, match="no_such_data"):
        loop.pretrain(config, workdir)
    assert not os.path.exists(workdir)


def test_misspelt_override_reads_cleanly(tmp_path):
    with pytest.raises(SystemExit) as e:
        cli.main(["pretrain", f"--config={CONFIG}:tiny", "--workdir", str(tmp_path / "c"), "--config.optimizer.lrr=1"])
    message = str(e.value.code)
    assert "--config.optimizer.lrr" in message and "'lrr'" in message and 'did you mean "lr"' in message
    assert "\\n" not in message and "\\'" not in message and "\n" not in message
    assert not os.path.exists(tmp_path / "c")


def test_pretrain_help_lists_its_options_and_exit_codes(capsys):
    with pytest.raises(SystemExit) as e:
        cli.main(["pretrain", "--help"])
    assert e.value.code == 0
    text = capsys.readouterr().out
    for option in (
        "--config PATH[:VARIANT]",
        "--config.FIELD=VALUE",
        "--workdir DIR",
        "--max_steps N",
        "--distributed",
        "75 preempted",
        "3 workdir locked",
    ):
        assert option in text, option
    assert f"{cli.EXIT_PREEMPTED} preempted" in text and f"{cli.EXIT_LOCKED} workdir locked" in text
    assert "data_stats.json" in text and "--max-steps" in text


@pytest.mark.parametrize("spelling", [["--max-steps", "7"], ["--max-steps=7"], ["--max_steps", "7"]])
def test_pretrain_takes_max_steps_with_a_dash_or_an_underscore(spelling, tmp_path):
    workdir = str(tmp_path / "w")
    config, got_workdir, max_steps = cli._parse_pretrain_flags(
        [f"--config={CONFIG}:tiny", "--workdir", workdir, "--config.train.steps=9", *spelling], "audiossl pretrain"
    )
    assert (max_steps, got_workdir, config.train.steps) == (7, workdir, 9)
    with pytest.raises(SystemExit, match="max-stepz"):
        cli._parse_pretrain_flags([f"--config={CONFIG}:tiny", "--workdir", workdir, "--max-stepz=7"], "p")


# ---- the non-finite guard ----


def _assert_all_saved_states_finite(workdir):
    states = _saved_steps(workdir)
    assert states, "at least one checkpoint"
    for step, (state, _) in states.items():
        for leaf in jax.tree.leaves(state):
            leaf = np.asarray(leaf)
            if np.issubdtype(leaf.dtype, np.floating):
                assert np.all(np.isfinite(leaf)) and np.max(np.abs(leaf), initial=0) < 1e19, step
    return states


def test_diverging_run_stops_naming_the_step_and_never_saves_the_bad_state(data_dirs, tmp_path):
    config = tiny_config(data_dirs, steps=6, ckpt_every=1, log_every=1)
    config.optimizer.lr = 1e30  # warm-up: step 1 has lr 0, step 2 explodes the params
    workdir = str(tmp_path / "run")
    with pytest.raises(FloatingPointError, match=r"at step (\d+) \(numbered as in metrics.jsonl\)") as e:
        loop.pretrain(config, workdir)
    bad_step = int(str(e.value).split("at step ")[1].split(" ")[0])
    states = _assert_all_saved_states_finite(workdir)
    assert max(states) == bad_step - 1  # every step before it was checkpointed (ckpt_every=1), not it
    assert max(read_metrics(workdir)) < bad_step
    assert _no_tmp_left(workdir)
    assert not os.path.exists(os.path.join(workdir, workdir_lock.LOCK_FILE))  # released on the error


def test_skip_mode_discards_nonfinite_steps_and_continues(data_dirs, tmp_path, capsys):
    config = tiny_config(data_dirs, steps=5, ckpt_every=1, log_every=1, on_nonfinite="skip")
    config.optimizer.lr = 1e30
    workdir = str(tmp_path / "run")
    summary = loop.pretrain(config, workdir)
    assert summary["step"] == 5 and summary["nonfinite_skipped"] >= 1
    states = _assert_all_saved_states_finite(workdir)
    assert sorted(states)[-1] == 5
    metrics = read_metrics(workdir)
    assert sorted(metrics) == [1, 2, 3, 4, 5]
    assert metrics[5]["nonfinite_skipped"] == summary["nonfinite_skipped"]
    assert sum(m["nonfinite"] for m in metrics.values()) == summary["nonfinite_skipped"]
    assert "update discarded" in "".join(capsys.readouterr())


# ---- corrupt latest checkpoint: fall back to the newest step that restores ----


@pytest.fixture(scope="module")
def runs(data_dirs, tmp_path_factory):
    """A straight 6-step run and one stopped after step 4 (checkpoints 2, 3, 4), same config."""
    root = tmp_path_factory.mktemp("ckpt_runs")
    config = tiny_config(data_dirs, steps=6, ckpt_every=1, log_every=1)
    straight, stopped = str(root / "straight"), str(root / "stopped")
    loop.pretrain(config, straight)
    loop.pretrain(config, stopped, max_steps=4)
    return config, straight, stopped


def _largest_array_file(step_dir):
    files = [f for f in glob.glob(os.path.join(step_dir, "state", "**", "d", "*"), recursive=True) if os.path.isfile(f)]
    return max(files, key=os.path.getsize)


def _truncate(path, size):
    with open(path, "r+b") as f:
        f.truncate(size)


CORRUPTIONS = {
    "truncated_array": lambda d: _truncate(_largest_array_file(d), os.path.getsize(_largest_array_file(d)) // 2),
    "deleted_array": lambda d: os.remove(_largest_array_file(d)),
    "deleted_METADATA": lambda d: os.remove(os.path.join(d, "state", "_METADATA")),
    "truncated_data_metadata": lambda d: _truncate(os.path.join(d, "data", "metadata"), 5),
    "missing_state": lambda d: shutil.rmtree(os.path.join(d, "state")),
}


@pytest.mark.parametrize("corruption", sorted(CORRUPTIONS))
def test_corrupt_latest_falls_back_and_is_moved_aside(runs, tmp_path, corruption):
    _, _, stopped = runs
    ckpt_dir = str(tmp_path / "checkpoints")
    shutil.copytree(os.path.join(stopped, loop.CHECKPOINT_DIR), ckpt_dir)
    good = checkpointing.Checkpointer(os.path.join(stopped, loop.CHECKPOINT_DIR), async_save=False)
    template, _ = good.read(4)
    expected = {step: good.read(step) for step in (3, 4)}
    good.close()
    CORRUPTIONS[corruption](os.path.join(ckpt_dir, "4"))

    said = []
    ckpt = checkpointing.Checkpointer(ckpt_dir, async_save=False)
    step, state, data_state = ckpt.restore_latest_good(
        template, jax.tree.map(lambda x: x.sharding, template), log=said.append
    )
    ckpt.close()
    # Whatever restores is exactly what was saved at that step (a deleted _METADATA is not needed
    # when the target structure is given: step 4 then restores whole).
    jax.tree.map(np.testing.assert_array_equal, state, expected[step][0])
    assert data_state == expected[step][1]
    entries = sorted(os.listdir(ckpt_dir))
    if step == 3:
        moved = [e for e in entries if e.startswith("4.corrupt-")]
        assert len(said) == 1 and len(moved) == 1, (said, entries)
        assert os.path.join(ckpt_dir, "4") in said[0] and os.path.join(ckpt_dir, moved[0]) in said[0]
        assert entries == ["2", "3", moved[0]]  # moved aside, nothing deleted
    else:
        assert corruption == "deleted_METADATA" and step == 4 and not said


def test_no_step_restores_raises_and_moves_nothing(runs, tmp_path):
    _, _, stopped = runs
    ckpt_dir = str(tmp_path / "checkpoints")
    os.makedirs(ckpt_dir)
    shutil.copytree(os.path.join(stopped, loop.CHECKPOINT_DIR, "4"), os.path.join(ckpt_dir, "4"))
    good = checkpointing.Checkpointer(os.path.join(stopped, loop.CHECKPOINT_DIR), async_save=False)
    template, _ = good.read(4)
    good.close()
    CORRUPTIONS["missing_state"](os.path.join(ckpt_dir, "4"))
    ckpt = checkpointing.Checkpointer(ckpt_dir, async_save=False)
    with pytest.raises(RuntimeError, match="no checkpoint .* restores.*step 4.*Nothing was moved"):
        ckpt.restore_latest_good(template, jax.tree.map(lambda x: x.sharding, template))
    ckpt.close()
    assert os.listdir(ckpt_dir) == ["4"]


def test_resume_past_a_corrupt_latest_equals_the_straight_run(runs, tmp_path, capsys):
    config, straight, stopped = runs
    workdir = str(tmp_path / "resumed")
    shutil.copytree(stopped, workdir)
    CORRUPTIONS["truncated_array"](os.path.join(workdir, loop.CHECKPOINT_DIR, "4"))
    summary = loop.pretrain(config, workdir)
    assert summary["step"] == 6
    said = "".join(capsys.readouterr())  # tqdm.write: stdout
    assert "checkpoint step 4 does not restore" in said and "resuming from step 3 of 6" in said
    a, b = _saved_steps(straight)[6], _saved_steps(workdir)[6]
    jax.tree.map(np.testing.assert_array_equal, a[0], b[0])  # bitwise: the resume redid step 4
    assert a[1] == b[1]
    assert sorted(read_metrics(workdir)) == [1, 2, 3, 4, 5, 6]
    assert len(open(os.path.join(workdir, "metrics.jsonl")).readlines()) == 6
    assert [e for e in os.listdir(os.path.join(workdir, loop.CHECKPOINT_DIR)) if e.startswith("4.corrupt-")]


# ---- real processes: a concurrent trainer, SIGTERM, kill -9 ----


def _cli_args(data_dirs, workdir, **train):
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
        "--config.probe.epochs=20",
    ]
    return args + [f"--config.train.{k}={v}" for k, v in train.items()]


def _wait_for_metrics(proc, workdir, lines=1, timeout=240):
    path = os.path.join(workdir, "metrics.jsonl")
    deadline = time.time() + timeout
    while not (os.path.exists(path) and len(open(path).readlines()) >= lines):
        assert proc.poll() is None, proc.stdout.read()
        assert time.time() < deadline, f"fewer than {lines} metrics lines within {timeout} s"
        time.sleep(0.1)


@pytest.mark.slow
def test_concurrent_trainer_refused_then_sigterm_exits_preempted(data_dirs, tmp_path, capsys):
    workdir = str(tmp_path / "run")
    args = _cli_args(data_dirs, workdir, steps=100000, ckpt_every=100000, log_every=1)
    proc = subprocess.Popen(args, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        _wait_for_metrics(proc, workdir)
        assert cli.main(args[3:]) == cli.EXIT_LOCKED  # the second trainer, same workdir
        assert f"pid {proc.pid}" in capsys.readouterr().err
        t0 = time.time()
        proc.send_signal(signal.SIGTERM)
        output, _ = proc.communicate(timeout=120)
        elapsed = time.time() - t0
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == cli.EXIT_PREEMPTED, output
    assert "SIGTERM received: checkpointed step" in output and "Traceback" not in output
    assert elapsed < 30, f"exit took {elapsed:.1f} s after SIGTERM"
    assert not os.path.exists(os.path.join(workdir, workdir_lock.LOCK_FILE))
    assert _no_tmp_left(workdir) and _saved_steps(workdir)


@pytest.mark.slow
def test_kill_9_then_restart_equals_the_uninterrupted_run(data_dirs, tmp_path):
    train = dict(steps=8, ckpt_every=2, log_every=1)
    straight = str(tmp_path / "straight")
    loop.pretrain(tiny_config(data_dirs, **train), straight)
    killed = str(tmp_path / "killed")
    proc = subprocess.Popen(
        _cli_args(data_dirs, killed, **train), cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    )
    try:
        _wait_for_metrics(proc, killed, lines=random.Random(os.getpid()).randint(1, 6))
        time.sleep(random.Random(os.getpid()).uniform(0.0, 0.5))
    finally:
        proc.kill()  # SIGKILL: no handler, no cleanup; its lock is left behind
        proc.wait()
    summary = loop.pretrain(tiny_config(data_dirs, **train), killed)  # takes over the stale lock
    assert summary["step"] == 8
    a, b = _saved_steps(straight)[8], _saved_steps(killed)[8]
    jax.tree.map(np.testing.assert_array_equal, a[0], b[0])
    assert a[1] == b[1]
    steps = [json.loads(line)["step"] for line in open(os.path.join(killed, "metrics.jsonl"))]
    assert steps == list(range(1, 9))
    assert not os.path.exists(os.path.join(killed, workdir_lock.LOCK_FILE))


# ---- probe / finetune load only built-in methods from a saved run, unless opted in ----


@pytest.mark.parametrize("command", ["probe", "finetune"])
def test_saved_run_with_a_custom_method_needs_the_opt_in(tmp_path, monkeypatch, command):
    from audiossl_jax.evaluate import finetune, probe

    workdir = tmp_path / "run"
    workdir.mkdir()
    (workdir / "config.json").write_text(json.dumps({"method": "somebody.elses.module"}))
    calls = []
    module = probe if command == "probe" else finetune
    monkeypatch.setattr(module, "run", lambda *a, **kw: calls.append(a) or [])
    monkeypatch.setattr(module, "format_table", lambda results: "")
    with pytest.raises(SystemExit, match="config.method='somebody.elses.module'.*--allow-custom-method"):
        cli.main([command, "--workdir", str(workdir)])
    assert calls == []  # refused before anything was imported or run
    assert cli.main([command, "--workdir", str(workdir), "--allow-custom-method"]) == 0
    assert len(calls) == 1
    (workdir / "config.json").write_text(json.dumps({"method": "wav2vec2"}))
    assert cli.main([command, "--workdir", str(workdir)]) == 0  # built-in: no flag needed


@pytest.mark.slow
def test_cli_divergence_exits_1_with_no_save_in_flight_left_behind(data_dirs, tmp_path):
    """A crash right after an async save started (step 1 saved, step 2 diverges): the save commits,
    no `*.orbax-checkpoint-tmp*` stays, no TimeoutError / shutdown tracebacks, the lock is released."""
    workdir = str(tmp_path / "run")
    out = subprocess.run(
        _cli_args(data_dirs, workdir, steps=6, ckpt_every=1, log_every=1) + ["--config.optimizer.lr=1e30"],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=300,
    )
    text = out.stdout + out.stderr
    assert out.returncode == cli.EXIT_ERROR, text
    assert "FloatingPointError: non-finite loss, gradient or parameters at step 2" in text
    for noise in ("TimeoutError", "cannot schedule new futures", "Exception ignored"):
        assert noise not in text, noise
    assert _no_tmp_left(workdir)
    assert sorted(_saved_steps(workdir)) == [1]
    _assert_all_saved_states_finite(workdir)
    assert not os.path.exists(os.path.join(workdir, workdir_lock.LOCK_FILE))

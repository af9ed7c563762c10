"""launch/*.sh: the exact commands they print (--dry-run) and run, with fake gcloud / python on PATH."""

from __future__ import annotations

import json
import os
import shlex
import subprocess
import sys
import tarfile
import textwrap
import time

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TPU_VM = os.path.join(REPO, "launch", "tpu_vm.sh")
GPU = os.path.join(REPO, "launch", "gpu.sh")
LOCAL = os.path.join(REPO, "launch", "local_multihost.sh")
TRICKY = "--config.data.train_dir=gs://b/dir with space/it's"

# Records its argv as one JSON line; fails when an argument equals $FAKE_FAIL_ARG.
RECORDER = textwrap.dedent(f"""\
    #!{sys.executable}
    import json, os, sys
    with open(os.environ["FAKE_RECORD"], "a") as f:
        f.write(json.dumps(sys.argv[1:]) + "\\n")
    sys.exit(1 if os.environ.get("FAKE_FAIL_ARG") in sys.argv[1:] else 0)
    """)


def _write_exe(path, text):
    with open(path, "w") as f:
        f.write(text)
    os.chmod(path, 0o755)
    return str(path)


@pytest.fixture
def fake_gcloud(tmp_path):
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    _write_exe(bin_dir / "gcloud", RECORDER)
    env = dict(
        os.environ,
        PATH=f"{bin_dir}{os.pathsep}{os.environ['PATH']}",
        FAKE_RECORD=str(tmp_path / "calls.jsonl"),
        TMPDIR=str(tmp_path),
    )
    env.pop("GCLOUD", None)
    return env, tmp_path / "calls.jsonl"


def _calls(record):
    if not record.exists():
        return []
    return [json.loads(line) for line in record.read_text().splitlines()]


TPU_ARGS = [
    "--name",
    "ssl-v4",
    "--zone",
    "us-central2-b",
    "--accelerator-type",
    "v4-32",
    "--spot",
    "--config",
    "configs/eat.py:base",
    "--workdir",
    "gs://bucket/eat-base",
]


def _run(cmd, env, timeout=60, **kw):
    return subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=timeout, **kw)


def _gcloud_lines(stdout):
    return [shlex.split(line) for line in stdout.splitlines() if line.startswith("gcloud ")]


def _command_of(argv):
    return next(a.split("=", 1)[1] for a in argv if a.startswith("--command="))


def test_tpu_dry_run_prints_gcloud_commands_and_runs_nothing(fake_gcloud):
    env, record = fake_gcloud
    out = _run([TPU_VM, *TPU_ARGS, "--dry-run", "all", "--", TRICKY], env)
    assert out.returncode == 0, out.stderr
    assert _calls(record) == [], "--dry-run must not call gcloud"
    lines = _gcloud_lines(out.stdout)
    verbs = [tuple(argv[1:5]) for argv in lines]
    assert verbs == [("compute", "tpus", "tpu-vm", v) for v in ("create", "scp", "ssh", "ssh", "ssh", "ssh", "delete")]
    create, scp, unpack, setup, run, logs, delete = lines
    assert create == [
        "gcloud",
        "compute",
        "tpus",
        "tpu-vm",
        "create",
        "ssl-v4",
        "--zone=us-central2-b",
        "--accelerator-type=v4-32",
        "--version=tpu-ubuntu2204-base",
        "--spot",
    ]
    assert scp[5:] == [
        "/".join([str(env["TMPDIR"]), "audiossl-jax-ssl-v4.tar.gz"]),
        "ssl-v4:audiossl-jax.tar.gz",
        "--zone=us-central2-b",
        "--worker=all",
    ]
    for argv in (unpack, setup, run):
        assert argv[5:8] == ["ssl-v4", "--zone=us-central2-b", "--worker=all"]
    assert "tar -xzf ~/audiossl-jax.tar.gz -C ~/audiossl-jax" in _command_of(unpack)
    setup_cmd = _command_of(setup)
    assert "pip install -q -c constraints.txt -e . 'jax[tpu]==0.10.2'" in setup_cmd
    assert "python3.11 -m venv .venv" in setup_cmd
    run_cmd = _command_of(run)
    assert run_cmd.startswith("cd ~/audiossl-jax || exit 1; ")
    assert (
        ".venv/bin/audiossl pretrain --distributed --config configs/eat.py:base --workdir gs://bucket/eat-base"
    ) in run_cmd
    assert "nohup bash -c" in run_cmd and run_cmd.endswith("&")
    assert logs[5:7] == ["ssl-v4", "--zone=us-central2-b"] and "--worker=0" in logs
    assert "tail -n +1 -F" in _command_of(logs)
    assert delete == ["gcloud", "compute", "tpus", "tpu-vm", "delete", "ssl-v4", "--zone=us-central2-b", "--quiet"]


def test_tpu_versions_project_and_clone(fake_gcloud):
    env, _ = fake_gcloud
    for accel, version in [
        ("v5litepod-16", "v2-alpha-tpuv5-lite"),
        ("v6e-8", "v2-alpha-tpuv6e"),
        ("v5p-8", "v2-alpha-tpuv5"),
    ]:
        out = _run(
            [
                TPU_VM,
                "--name",
                "n",
                "--zone",
                "z",
                "--accelerator-type",
                accel,
                "--preemptible",
                "--project",
                "proj",
                "--dry-run",
                "create",
            ],
            env,
        )
        assert _gcloud_lines(out.stdout) == [
            [
                "gcloud",
                "compute",
                "tpus",
                "tpu-vm",
                "create",
                "n",
                "--zone=z",
                "--project=proj",
                f"--accelerator-type={accel}",
                f"--version={version}",
                "--preemptible",
            ]
        ]
    out = _run(
        [
            TPU_VM,
            "--name",
            "n",
            "--zone",
            "z",
            "--repo",
            "https://github.com/x/audiossl-jax.git",
            "--ref",
            "v0.1",
            "--dry-run",
            "setup",
        ],
        env,
    )
    first = _command_of(_gcloud_lines(out.stdout)[0])
    assert "git clone --depth 1 --branch v0.1 https://github.com/x/audiossl-jax.git ~/audiossl-jax" in first
    assert "scp" not in out.stdout


def test_tpu_real_mode_runs_exactly_the_dry_run_commands(fake_gcloud):
    env, record = fake_gcloud
    dry = _run([TPU_VM, *TPU_ARGS, "--dry-run", "all", "--", TRICKY], env)
    real = _run([TPU_VM, *TPU_ARGS, "all", "--", TRICKY], env, timeout=120)
    assert real.returncode == 0, real.stderr
    assert [["gcloud"] + argv for argv in _calls(record)] == _gcloud_lines(dry.stdout)
    # The checkout was packed for the workers: sources in, virtualenv and caches out.
    with tarfile.open(os.path.join(env["TMPDIR"], "audiossl-jax-ssl-v4.tar.gz")) as tar:
        names = set(tar.getnames())
    assert {"setup.py", "launch/tpu_vm.sh", "audiossl_jax/cli.py"} <= names
    assert not any(n.startswith(".venv/") or "__pycache__" in n for n in names)


def test_tpu_failed_run_keeps_the_vm(fake_gcloud):
    env, record = fake_gcloud
    env = dict(env, FAKE_FAIL_ARG="--worker=0")  # `logs` (worker 0) reports the run's failure
    out = _run([TPU_VM, *TPU_ARGS, "all"], env, timeout=120)
    assert out.returncode == 1
    assert "kept ssl-v4 for debugging" in out.stderr
    assert not any("delete" in argv for argv in _calls(record))


@pytest.mark.parametrize(
    "args, message",
    [
        (["--zone", "z", "create"], "--name"),
        (["--name", "n", "create"], "--zone"),
        (["--name", "n", "--zone", "z", "--config", "c.py", "--workdir", "runs/local", "run"], "gs://"),
        (["--name", "n", "--zone", "z", "run"], "--config"),
        (["--name", "n", "--zone", "z", "explode"], "unknown argument"),
        (["--name", "n", "--zone", "z"], "give a command"),
    ],
)
def test_tpu_bad_arguments(fake_gcloud, args, message):
    env, record = fake_gcloud
    out = _run([TPU_VM, *args], env)
    assert out.returncode == 2 and message in out.stderr
    assert _calls(record) == []


def test_tpu_remote_run_logs_stop_commands_work_in_a_shell(fake_gcloud, tmp_path):
    """Executes the `run`, `logs` and `stop` remote commands in a local bash with a fake worker home:
    the trainer gets exactly the given flags, `stop` delivers SIGTERM, `logs` returns its status."""
    env, _ = fake_gcloud
    home = tmp_path / "home"
    venv_bin = home / "audiossl-jax" / ".venv" / "bin"
    venv_bin.mkdir(parents=True)
    argv_file = tmp_path / "trainer_argv.json"
    _write_exe(
        venv_bin / "audiossl",
        textwrap.dedent(f"""\
        #!{sys.executable}
        import json, signal, sys, time
        json.dump(sys.argv[1:], open({str(argv_file)!r}, "w"))
        def stop(*_):
            print("SIGTERM: checkpointed", flush=True)
            sys.exit(0)
        signal.signal(signal.SIGTERM, stop)
        print("training", flush=True)
        time.sleep(60)
        sys.exit(5)
        """),
    )
    commands = {}
    for verb in ("run", "logs", "stop"):
        out = _run([TPU_VM, *TPU_ARGS, "--dry-run", verb, "--", TRICKY], env)
        commands[verb] = _command_of(_gcloud_lines(out.stdout)[0])
    shell_env = dict(os.environ, HOME=str(home))
    assert _run(["bash", "-c", commands["run"]], shell_env, timeout=30).returncode == 0
    logs = subprocess.Popen(["bash", "-c", commands["logs"]], env=shell_env, stdout=subprocess.PIPE, text=True)
    deadline = time.time() + 30
    while not argv_file.exists() and time.time() < deadline:
        time.sleep(0.1)
    assert json.loads(argv_file.read_text()) == [
        "pretrain",
        "--distributed",
        "--config",
        "configs/eat.py:base",
        "--workdir",
        "gs://bucket/eat-base",
        TRICKY,
    ]
    assert _run(["bash", "-c", commands["stop"]], shell_env, timeout=30).returncode == 0
    out, _ = logs.communicate(timeout=60)
    assert logs.returncode == 0
    assert "training" in out and "SIGTERM: checkpointed" in out
    assert (home / "audiossl-run.rc").read_text().strip() == "0"


# ------------------------------------------------------------------------------------------ gpu.sh


def test_gpu_dry_run_and_real_run(tmp_path):
    record = tmp_path / "calls.jsonl"
    fake_python = _write_exe(
        tmp_path / "python",
        textwrap.dedent(f"""\
        #!{sys.executable}
        import json, os, sys
        keys = ("JAX_PLATFORMS", "CUDA_VISIBLE_DEVICES", "XLA_PYTHON_CLIENT_MEM_FRACTION")
        with open({str(record)!r}, "a") as f:
            f.write(json.dumps({{"argv": sys.argv[1:], "env": {{k: os.environ.get(k) for k in keys}}}}) + "\\n")
        """),
    )
    env = dict(os.environ, PYTHON=fake_python)
    args = ["--config", "configs/wav2vec2_conformer.py:S", "--workdir", "runs/w2v2", "--gpus", "0,1", "--", TRICKY]
    dry = _run([GPU, "--dry-run", *args], env)
    assert dry.returncode == 0, dry.stderr
    assert not record.exists()
    argv = shlex.split(dry.stdout.strip())
    assert argv[:5] == [
        "env",
        "JAX_PLATFORMS=cuda",
        "XLA_PYTHON_CLIENT_MEM_FRACTION=0.9",
        "TF_CPP_MIN_LOG_LEVEL=2",
        "CUDA_VISIBLE_DEVICES=0,1",
    ]
    assert argv[5:] == [
        fake_python,
        "-m",
        "audiossl_jax.cli",
        "pretrain",
        "--config",
        "configs/wav2vec2_conformer.py:S",
        "--workdir",
        "runs/w2v2",
        "--config.mesh.shape=(-1,1,1)",
        "--config.train.compute_dtype=bfloat16",
        TRICKY,
    ]
    real = _run([GPU, *args], env)
    assert real.returncode == 0, real.stderr
    [call] = [json.loads(line) for line in record.read_text().splitlines()]
    assert call["argv"] == argv[6:]
    assert call["env"] == {
        "JAX_PLATFORMS": "cuda",
        "CUDA_VISIBLE_DEVICES": "0,1",
        "XLA_PYTHON_CLIENT_MEM_FRACTION": "0.9",
    }

    f32 = _run([GPU, "--dry-run", "--dtype", "float32", "--mesh", "(2,4,1)", "--config", "c.py", "--workdir", "w"], env)
    assert "--config.train.compute_dtype=float32" in f32.stdout and "'--config.mesh.shape=(2,4,1)'" in f32.stdout
    bad = _run([GPU, "--dtype", "float16", "--config", "c.py", "--workdir", "w"], env)
    assert bad.returncode == 2 and "--dtype must be bfloat16 or float32" in bad.stderr


# ------------------------------------------------------------------------------- local_multihost.sh

FAKE_WORKER = textwrap.dedent(f"""\
    #!{sys.executable}
    # Stands in for `python -m audiossl_jax.cli ...`: records how it was started, then behaves as
    # $FAKE_BEHAVIOUR says for its --process_id: "ok", "fail" (exit 3) or "hang" (until SIGTERM).
    import json, os, signal, sys, time
    argv = sys.argv[1:]
    pid = int(argv[argv.index("--process_id") + 1])
    out = os.path.join(os.environ["FAKE_DIR"], f"process_{{pid}}.json")
    info = {{"argv": argv, "xla_flags": os.environ.get("XLA_FLAGS"), "platforms": os.environ.get("JAX_PLATFORMS")}}
    json.dump(info, open(out, "w"))
    def on_term(*_):
        info["terminated"] = True
        json.dump(info, open(out, "w"))
        sys.exit(143)
    signal.signal(signal.SIGTERM, on_term)
    behaviour = os.environ["FAKE_BEHAVIOUR"].split(",")[pid]
    print(f"process {{pid}}: {{behaviour}}", flush=True)
    if behaviour == "fail":
        time.sleep(0.3)
        sys.exit(3)
    if behaviour == "hang":
        time.sleep(120)
    """)


@pytest.fixture
def fake_workers(tmp_path):
    python = _write_exe(tmp_path / "python", FAKE_WORKER)
    env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}  # the launcher's own flags only
    return dict(env, PYTHON=python, FAKE_DIR=str(tmp_path)), tmp_path


def _worker_records(tmp_path, n):
    return [json.loads((tmp_path / f"process_{i}.json").read_text()) for i in range(n)]


def test_local_multihost_dry_run(fake_workers):
    env, tmp = fake_workers
    out = _run(
        [
            LOCAL,
            "-n",
            "3",
            "-d",
            "2",
            "--port",
            "12999",
            "--dry-run",
            "--",
            "pretrain",
            "--config",
            "c.py:tiny",
            "--workdir",
            "w",
        ],
        env,
    )
    assert out.returncode == 0, out.stderr
    lines = [shlex.split(line) for line in out.stdout.splitlines()]
    assert len(lines) == 3
    for i, argv in enumerate(lines):
        assert argv == [
            "env",
            "XLA_FLAGS=--xla_force_host_platform_device_count=2",
            "JAX_PLATFORMS=cpu",
            "TF_CPP_MIN_LOG_LEVEL=2",
            env["PYTHON"],
            "-m",
            "audiossl_jax.cli",
            "pretrain",
            "--config",
            "c.py:tiny",
            "--workdir",
            "w",
            "--coordinator_address",
            "127.0.0.1:12999",
            "--num_processes",
            "3",
            "--process_id",
            str(i),
        ]
    assert not list(tmp.glob("process_*.json"))


def test_local_multihost_waits_for_all(fake_workers):
    env, tmp = fake_workers
    env["FAKE_BEHAVIOUR"] = "ok,ok"
    out = _run([LOCAL, "--port", "12998", "--log-dir", str(tmp / "logs"), "--", "pretrain", "--workdir", "w"], env)
    assert out.returncode == 0, out.stderr
    records = _worker_records(tmp, 2)
    assert [r["argv"][-6:] for r in records] == [
        ["--coordinator_address", "127.0.0.1:12998", "--num_processes", "2", "--process_id", str(i)] for i in range(2)
    ]
    assert all(r["xla_flags"] == "--xla_force_host_platform_device_count=4" for r in records)
    assert all(r["platforms"] == "cpu" for r in records)
    assert "process 0: ok" in out.stdout  # process 0's log is streamed
    assert (tmp / "logs" / "process_1.log").read_text().strip() == "process 1: ok"


def test_local_multihost_failure_stops_the_others(fake_workers):
    env, tmp = fake_workers
    env["FAKE_BEHAVIOUR"] = "hang,fail,hang"
    start = time.time()
    out = _run([LOCAL, "-n", "3", "--port", "12997", "--grace", "5", "--quiet", "--", "pretrain"], env)
    assert time.time() - start < 30
    assert out.returncode == 3
    assert "process 1 exited with status 3" in out.stderr
    records = _worker_records(tmp, 3)
    assert records[0].get("terminated") and records[2].get("terminated")


def test_local_multihost_timeout(fake_workers):
    env, tmp = fake_workers
    env["FAKE_BEHAVIOUR"] = "hang,hang"
    out = _run([LOCAL, "--port", "12996", "--timeout", "2", "--grace", "5", "--quiet", "--", "pretrain"], env)
    assert out.returncode == 124 and "timeout after 2s" in out.stderr
    assert all(r.get("terminated") for r in _worker_records(tmp, 2))

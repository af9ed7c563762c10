"""launch/as2m_plan.py: the AudioSet-2M recipe's numbers follow from the configs, and every launch
command it prints is accepted by its script in --dry-run mode."""

import importlib.util
import os
import shlex
import subprocess

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _plan_module():
    spec = importlib.util.spec_from_file_location("as2m_plan", os.path.join(REPO, "launch", "as2m_plan.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_plan_numbers_and_launch_commands(capsys):
    assert _plan_module().main(["--bucket", "gs://b", "--step-seconds", "configs/eat.py:base=0.5"]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[0] == "AudioSet-2M: 2,000,000 clips -> 2048 shards (prep's default)"
    text = "\n".join(out)
    assert "41,666 steps per epoch; 400,000 steps = 9.60 epochs; wall time: 55.6 h" in text  # EAT base, 48 clips
    assert "3,906 steps per epoch; 19,531 steps = 5.00 epochs; wall time: 6.4 min" in text  # SLICER, H100
    assert "wall time: not measured" in text  # wav2vec2 and EAT large: no measured step time
    launches = [line for line in out if line.startswith("launch/")]
    assert len(launches) == 5
    for line in launches:
        result = subprocess.run(shlex.split(line), cwd=REPO, capture_output=True, text=True, timeout=60)
        assert result.returncode == 0, (line, result.stderr)
        assert "audiossl_jax.cli pretrain" in result.stdout or "audiossl pretrain" in result.stdout, line

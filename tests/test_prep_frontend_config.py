"""`audiossl prep --config`: the front end comes from the method's config (`config.data.frontend`)."""

import os

import pytest
from helpers_pretrained import REPO

from audiossl_jax import cli, config_loader
from audiossl_jax.data import demo
from audiossl_jax.data import manifest as manifest_lib
from audiossl_jax.features import frontends

CONFIGS = {
    "eat.py:base": {"name": "kaldi_fbank", "window_type": "hanning", "num_mel_bins": 128},
    "wav2vec2_conformer.py:local": {"name": "librosa_mel", "num_mel_bins": 64},
    "slicer.py:cpu": {"name": "librosa_mel", "num_mel_bins": 64},
}


@pytest.mark.parametrize("spec", sorted(CONFIGS))
def test_each_method_declares_its_front_end(spec):
    frontend = frontends.frontend_from_config(
        config_loader.load_config(os.path.join(REPO, "configs", spec)).data.frontend
    )
    params = frontend.params
    assert {k: params[k] for k in CONFIGS[spec]} == CONFIGS[spec]


def test_prep_takes_the_front_end_of_the_config_and_refuses_a_disagreeing_flag(tmp_path):
    paths = demo.write_demo_data(str(tmp_path / "audio"), num_train=2, num_eval=1, seconds=1.0)
    eat = os.path.join(REPO, "configs", "eat.py") + ":base"
    out = str(tmp_path / "eat")
    assert (
        cli.main(["prep", "--input", paths["train"], "--out", out, "--config", eat, "--no-progress", "--workers", "1"])
        == 0
    )
    got = manifest_lib.load_manifest(out)["frontend"]
    assert got == frontends.make_frontend("kaldi_fbank", window_type="hanning", num_mel_bins=128).params
    assert got["window_type"] == "hanning" != frontends.make_frontend("kaldi_fbank").params["window_type"]

    with pytest.raises(SystemExit, match=r"--num-mel-bins 64 disagrees with config.data.frontend.num_mel_bins=128"):
        cli.main(
            ["prep", "--input", paths["train"], "--out", str(tmp_path / "x"), "--config", eat, "--num-mel-bins", "64"]
        )
    with pytest.raises(SystemExit, match=r"--frontend librosa_mel disagrees with config.data.frontend.name"):
        cli.main(
            [
                "prep",
                "--input",
                paths["train"],
                "--out",
                str(tmp_path / "x"),
                "--config",
                eat,
                "--frontend",
                "librosa_mel",
            ]
        )
    assert not os.path.exists(tmp_path / "x")
    same = ["--config", eat, "--frontend", "kaldi_fbank", "--window-type", "hanning", "--no-progress", "--workers", "1"]
    assert cli.main(["prep", "--input", paths["train"], "--out", str(tmp_path / "same"), *same]) == 0  # agreeing flags

    with pytest.raises(ValueError, match="config.data.frontend: unknown option 'hop_length'"):
        frontends.frontend_from_config({"name": "kaldi_fbank", "hop_length": 100})
    with pytest.raises(ValueError, match="declares no front end"):
        frontends.frontend_from_config(None)

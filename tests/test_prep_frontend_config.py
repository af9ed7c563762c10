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


def test_pretrain_refuses_data_of_another_front_end_before_writing_anything(prepare_demo_splits, tmp_path):
    from audiossl_jax.train import loop

    mel_dirs = prepare_demo_splits("librosa_mel", num_mel_bins=64)
    fbank_dirs = prepare_demo_splits("kaldi_fbank", num_mel_bins=64)
    config = config_loader.load_config(os.path.join(REPO, "configs", "wav2vec2_conformer.py:tiny"))
    config.data.train_dir, config.data.eval_dir = fbank_dirs  # wav2vec2 declares librosa_mel
    workdir = str(tmp_path / "run")
    with pytest.raises(ValueError, match=r"config.data.frontend.name='librosa_mel'") as e:
        loop.pretrain(config, workdir)
    assert fbank_dirs[0] in str(e.value) and "name='kaldi_fbank'" in str(e.value)
    assert not os.path.exists(workdir)
    config.data.train_dir = mel_dirs[0]
    config.data.frontend.num_mel_bins = 128  # the bins disagree
    with pytest.raises(ValueError, match=r"config.data.frontend.num_mel_bins=128"):
        loop.pretrain(config, workdir)
    config.data.frontend.num_mel_bins = 64  # the in-training probe's splits are checked too
    config.eval.every, config.data.eval_dir = 2, fbank_dirs[1]
    with pytest.raises(ValueError, match=r"config.eval task 'eval': test_dir .* config.data.frontend.name"):
        loop.pretrain(config, workdir)
    assert not os.path.exists(workdir)
    config.eval.every = 0
    config.data.frontend.window_type = "hanning"  # read as prep reads it: librosa_mel has no such option
    with pytest.raises(ValueError, match=r"config.data.frontend: .*unknown option 'window_type'"):
        loop.pretrain(config, workdir)
    assert not os.path.exists(workdir)
    config.data.frontend = None  # a config that declares no front end is not checked
    config.train.steps = 1
    assert loop.pretrain(config, workdir)["step"] == 1

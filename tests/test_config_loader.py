"""audiossl_jax/config_loader.py: `path:variant,key=value` specs, typed `--config.a.b=value` overrides, the
errors that name the field, `parse_arg`, and every config file in configs/ through them."""

import glob
import importlib.util
import os

import ml_collections
import pytest

from audiossl_jax import cli, config_loader

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SLICER = os.path.join(REPO, "configs", "slicer.py")
CONFIG_FILES = sorted(glob.glob(os.path.join(REPO, "configs", "*.py")))


# ----------------------------------------------------------------------------- load_config + overrides
def test_spec_with_variant_options_and_typed_overrides():
    config = config_loader.load_config(
        f"{SLICER}:tiny,encoder=vit",
        [
            "--config.train.steps=7",
            "optimizer.lr=1",
            "eval.plot=FALSE",
            "mesh.shape=(2,2,1)",
            "objective.augment.rrc_time_scale=1,1",
            "objective.clean_bn_momentum=0.5",
            "data.train_dir=a b=c",
        ],
    )
    assert config.method == "slicer" and config.model.encoder == "vit"
    assert config.data.crop_frames == 32  # the tiny variant
    assert config.train.steps == 7 and type(config.train.steps) is int
    assert config.optimizer.lr == 1.0 and type(config.optimizer.lr) is float
    assert config.eval.plot is False
    assert config.mesh.shape == (2, 2, 1)
    assert config.objective.augment.rrc_time_scale == (1.0, 1.0)
    assert all(type(x) is float for x in config.objective.augment.rrc_time_scale)
    assert config.objective.clean_bn_momentum == 0.5  # a typed placeholder (None by default)
    assert config.data.train_dir == "a b=c"
    config.brand_new_field = 1  # unlocked by default
    locked = config_loader.load_config(f"{SLICER}:tiny", lock=True)
    with pytest.raises(AttributeError):
        locked.brand_new_field = 1


def test_no_arg_is_the_default_variant():
    assert config_loader.load_config(SLICER).objective.queue_size == 65536  # paper
    assert config_loader.load_config(f"{SLICER}:").objective.queue_size == 65536


@pytest.mark.parametrize(
    "override, message",
    [
        ("optimizer.lrr=1", "--config.optimizer.lrr=1: config.optimizer has no field 'lrr'; did you mean \"lr\"?"),
        ("--config.nope.x=1", "--config.nope.x=1: config has no field 'nope'; its fields: data, eval,"),
        (
            "objective.augment.mixupratio=0",
            "config.objective.augment has no field 'mixupratio'; did you mean \"mixup_ratio\"",
        ),
    ],
)
def test_unknown_field_is_named(override, message):
    with pytest.raises(ValueError) as e:
        config_loader.load_config(f"{SLICER}:tiny", [override])
    assert message in str(e.value)


@pytest.mark.parametrize(
    "override, message",
    [
        ("train.steps=1.5", "--config.train.steps=1.5: config.train.steps (int): expected an int, got '1.5'"),
        ("optimizer.lr=fast", "config.optimizer.lr (float): expected a float, got 'fast'"),
        ("eval.plot=yes", "config.eval.plot (bool): expected a bool (true/false), got 'yes'"),
        ("mesh.shape=(1.5,1,1)", "config.mesh.shape (tuple): expected a tuple of int"),
        ("mesh.shape=4", "config.mesh.shape (tuple): expected a tuple such as (1, 2), got '4'"),
        ("probe.crop_frames=all", "config.probe.crop_frames (int): expected an int"),  # placeholder(int)
        ("model=3", "config.model is a group of fields"),
        ("train.steps.x=1", "config.train.steps is a value, not a group of fields"),
        ("train.steps", "expected --config.FIELD=VALUE"),
    ],
)
def test_bad_value_names_the_field_and_its_type(override, message):
    with pytest.raises(ValueError) as e:
        config_loader.load_config(f"{SLICER}:tiny", [override])
    assert message in str(e.value)


def test_a_field_without_type_cannot_be_overridden():
    config = ml_collections.ConfigDict({"a": None, "b": ml_collections.config_dict.placeholder(float)})
    with pytest.raises(ValueError, match="config.a is None with no declared type.*placeholder"):
        config_loader.apply_overrides(config, ["a=1"])
    assert config_loader.apply_overrides(config, ["b=2"]).b == 2.0


def test_missing_file_and_missing_get_config(tmp_path):
    with pytest.raises(FileNotFoundError, match="nope.py"):
        config_loader.load_config(str(tmp_path / "nope.py") + ":tiny")
    (tmp_path / "empty.py").write_text("X = 1\n")
    with pytest.raises(ValueError, match="defines no get_config"):
        config_loader.load_config(str(tmp_path / "empty.py"))


def test_split_overrides_takes_both_forms_and_leaves_the_rest():
    overrides, rest = config_loader.split_overrides(
        [
            "--config",
            "c.py:tiny",
            "--config.train.steps",
            "7",
            "--workdir=w",
            "--config.eval.plot=true",
            "--config.mesh.shape",
            "-1,2,1",
        ]
    )
    assert overrides == ["train.steps=7", "eval.plot=true", "mesh.shape=-1,2,1"]
    assert rest == ["--config", "c.py:tiny", "--workdir=w"]
    with pytest.raises(ValueError, match="--config.train.steps=VALUE"):
        config_loader.split_overrides(["--config.train.steps", "--workdir", "w"])


def test_cli_loads_through_the_loader_locked(tmp_path):
    config, workdir, max_steps = cli._parse_pretrain_flags(
        [
            "--config",
            f"{SLICER}:tiny,encoder=conformer",
            "--config.train.steps",
            "9",
            "--workdir",
            str(tmp_path),
            "--max_steps=2",
        ],
        "audiossl pretrain",
    )
    assert (config.model.encoder, config.train.steps, workdir, max_steps) == ("conformer", 9, str(tmp_path), 2)
    with pytest.raises(AttributeError):
        config.brand_new_field = 1
    for spec, override, message in (
        (f"{SLICER}:tiny", ["--config.train.steps=ten"], "config.train.steps (int): expected an int, got 'ten'"),
        (f"{SLICER}:huge", [], "unknown variant 'huge'; choose one of ('paper', 'local', 'cpu', 'tiny')"),
    ):
        with pytest.raises(SystemExit) as e:
            cli.main(["pretrain", f"--config={spec}", "--workdir", str(tmp_path / "run"), *override])
        text = str(e.value.code)
        assert text.startswith("audiossl pretrain: ") and message in text and "\n" not in text
    assert not os.path.exists(tmp_path / "run")


# ----------------------------------------------------------------------------- parse_arg
def test_parse_arg_converts_by_the_defaults_types():
    def parse(arg):
        return config_loader.parse_arg(
            arg, name="configs/x.py", variant="base", steps=0, lr=0.5, runlocal=False, encoder="cnn"
        )

    assert parse(None).to_dict() == {"variant": "base", "steps": 0, "lr": 0.5, "runlocal": False, "encoder": "cnn"}
    args = parse(" local , steps=10,lr=1,runlocal=True,encoder=vit")
    assert args.to_dict() == {"variant": "local", "steps": 10, "lr": 1.0, "runlocal": True, "encoder": "vit"}
    assert type(args.lr) is float
    assert parse("variant=tiny,runlocal=0").to_dict()["variant"] == "tiny"
    assert parse("steps=3").variant == "base"  # no bare first item: the default variant
    assert parse(" ,local,").variant == "local"  # empty items are skipped


@pytest.mark.parametrize(
    "arg, message",
    [
        (
            "local,epochs=3",
            "configs/x.py: unknown option 'epochs' in 'local,epochs=3'; options: ('variant', 'steps', 'runlocal')",
        ),
        ("local,steps=ten", "configs/x.py: steps in 'local,steps=ten': expected an int, got 'ten'"),
        ("local,runlocal=yes", "expected a bool (true/false), got 'yes'"),  # strict booleans
        ("local,steps=1,steps=2", "configs/x.py: steps is given twice"),
        ("steps=1,local", "'local' in 'steps=1,local' is not key=value (only the first item, the variant"),
        ("huge", "configs/x.py: unknown variant 'huge'; choose one of ('base', 'local')"),
    ],
)
def test_parse_arg_errors_name_the_config_and_the_key(arg, message):
    with pytest.raises(ValueError) as e:
        config_loader.parse_arg(
            arg, name="configs/x.py", choices={"variant": ("base", "local")}, variant="base", steps=0, runlocal=False
        )
    assert message in str(e.value)


def test_parse_arg_needs_typed_defaults():
    with pytest.raises(TypeError, match="'crop'"):
        config_loader.parse_arg("a", name="x", variant="base", crop=None)


# ----------------------------------------------------------------------------- every config file
def _module(path):
    spec = importlib.util.spec_from_file_location("config_under_test", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _leaves(node, path="config"):
    for key in node.keys():
        if node.get_type(key) is ml_collections.ConfigDict:
            yield from _leaves(node[key], f"{path}.{key}")
        else:
            yield f"{path}.{key}"[len("config.") :], node[key]


def _as_text(value) -> str:
    return str(value).lower() if isinstance(value, bool) else value if isinstance(value, str) else repr(value)


def test_there_are_config_files():
    assert {os.path.basename(p) for p in CONFIG_FILES} >= {"eat.py", "slicer.py", "wav2vec2_conformer.py"}


@pytest.mark.parametrize("path", CONFIG_FILES, ids=os.path.basename)
def test_every_config_rejects_an_unknown_variant_or_key_naming_the_file(path):
    name = f"configs/{os.path.basename(path)}"
    variants = _module(path).VARIANTS
    with pytest.raises(ValueError) as e:
        config_loader.load_config(f"{path}:no_such_variant")
    assert str(e.value).startswith(f"{name}: unknown variant 'no_such_variant'; choose one of {variants}")
    with pytest.raises(ValueError) as e:
        config_loader.load_config(f"{path}:{variants[-1]},no_such_key=1")
    assert str(e.value).startswith(f"{name}: unknown option 'no_such_key'")
    with pytest.raises(ValueError, match=f"{name}: 'x' in "):
        config_loader.load_config(f"{path}:{variants[-1]},x")


@pytest.mark.parametrize("path", CONFIG_FILES, ids=os.path.basename)
def test_every_variant_loads_and_every_field_takes_an_override(path):
    """Each variant's `get_config` (as `--config path:variant` gives it) and, field by field, an override
    with the field's own value written as text gives the same config: every field has a type the
    loader can parse (an untyped None would not)."""
    for variant in _module(path).VARIANTS:
        config = config_loader.load_config(f"{path}:{variant}")
        assert config.method
        leaves = [(key, value) for key, value in _leaves(config) if value is not None]
        again = config_loader.load_config(f"{path}:{variant}", [f"{k}={_as_text(v)}" for k, v in leaves])
        assert again.to_dict() == config.to_dict(), variant

"""Shared pytest fixtures: a tiny demo data set, written and prepared once per session.

XLA's optimisation level: tests run with XLA:CPU's fast-compile flags (`FAST_XLA_FLAGS`; the suite
is mostly compiling tiny models, and they halve its time), set here before JAX starts a backend and
inherited by the tests' subprocesses. Tests marked `xla_default` (the bf16-matmul steps, the
benchmarks' FLOP and memory figures, the end-to-end CLI runs) check what users run: they need the
default level, get it with `AUDIOSSL_TEST_XLA=default` in the environment, and are skipped without
it. `make test` runs both passes.
"""

import os

import pytest

FAST_XLA_FLAGS = (
    "--xla_backend_optimization_level=0",
    "--xla_llvm_disable_expensive_passes=true",
    "--xla_cpu_use_fusion_emitters=false",
)
DEFAULT_XLA = os.environ.get("AUDIOSSL_TEST_XLA", "fast") == "default"
if not DEFAULT_XLA:  # (xdist workers inherit the controller's environment: add each flag once)
    _flags = os.environ.get("XLA_FLAGS", "").split()
    os.environ["XLA_FLAGS"] = " ".join(_flags + [f for f in FAST_XLA_FLAGS if f not in _flags])


def pytest_collection_modifyitems(config, items):
    if DEFAULT_XLA:
        return
    skip = pytest.mark.skip(reason="needs XLA's default optimisation level: AUDIOSSL_TEST_XLA=default (make test)")
    for item in items:
        if "xla_default" in item.keywords:
            item.add_marker(skip)


@pytest.fixture(scope="session", autouse=True)
def jax_compilation_cache(tmp_path_factory):
    """One persistent XLA compilation cache per test session: a train step compiled by one test (or
    one `pretrain` call of a stop/resume test) is loaded, not recompiled, by the next. The same
    settings go into the environment, so the CLI subprocesses of the end-to-end tests share it."""
    import os

    import jax

    settings = {
        "jax_compilation_cache_dir": str(tmp_path_factory.mktemp("xla_cache")),
        "jax_persistent_cache_min_compile_time_secs": 0.0,
        "jax_persistent_cache_min_entry_size_bytes": 0,
    }
    saved = {name.upper(): os.environ.get(name.upper()) for name in settings}
    for name, value in settings.items():
        jax.config.update(name, value)
        os.environ[name.upper()] = str(value)
    yield
    for name, value in saved.items():
        if value is None:
            os.environ.pop(name, None)
        else:
            os.environ[name] = value


@pytest.fixture(scope="session")
def demo_data_dir(tmp_path_factory):
    """Tiny built-in demo data (wav + train.csv/eval.csv + classes.txt): 24 train, 10 eval, 1 s."""
    from audiossl_jax.data import demo

    out = str(tmp_path_factory.mktemp("demo_data"))
    demo.write_demo_data(out, num_train=24, num_eval=10, seed=0, seconds=1.0)
    return out


@pytest.fixture(scope="session")
def prepared_demo(demo_data_dir, tmp_path_factory):
    """The demo data prepared with 128-bin Kaldi fbank: {'train': dir (3 shards), 'eval': dir}."""
    import os

    from audiossl_jax.data import prep, sources
    from audiossl_jax.features import frontends

    out = str(tmp_path_factory.mktemp("prepared"))
    fbank = frontends.make_frontend("kaldi_fbank")
    dirs = {"train": os.path.join(out, "train"), "eval": os.path.join(out, "eval")}
    prep.prepare(
        os.path.join(demo_data_dir, "train.csv"),
        dirs["train"],
        frontend=fbank,
        num_shards=3,
        workers=1,
        progress=False,
        log=lambda *_: None,
    )
    prep.prepare(
        os.path.join(demo_data_dir, "eval.csv"),
        dirs["eval"],
        frontend=fbank,
        class_names=sources.read_class_file(dirs["train"]),
        num_shards=2,
        workers=1,
        progress=False,
        log=lambda *_: None,
    )
    return dirs


@pytest.fixture(scope="session")
def prepare_demo_splits(tmp_path_factory):
    """A function (front end name, **front-end kwargs) -> (train_dir, eval_dir): 12 train / 10 eval
    1 s demo clips prepared with that front end (eval with the train split's classes), once per
    session and front end."""
    from audiossl_jax.data import demo, prep
    from audiossl_jax.features import frontends

    prepared = {}

    def prepare(frontend_name: str, **frontend_kwargs) -> tuple[str, str]:
        key = (frontend_name, tuple(sorted(frontend_kwargs.items())))
        if key not in prepared:
            root = tmp_path_factory.mktemp("demo_" + frontend_name)
            paths = demo.write_demo_data(str(root / "audio"), num_train=12, num_eval=10, seconds=1.0)
            frontend = frontends.make_frontend(frontend_name, **frontend_kwargs)
            dirs = (str(root / "data" / "train"), str(root / "data" / "eval"))
            manifest = prep.prepare(
                paths["train"], dirs[0], frontend=frontend, workers=1, progress=False, log=lambda *a: None
            )
            prep.prepare(
                paths["eval"],
                dirs[1],
                frontend=frontend,
                workers=1,
                progress=False,
                log=lambda *a: None,
                class_names=manifest["class_names"],
            )
            prepared[key] = dirs
        return prepared[key]

    return prepare

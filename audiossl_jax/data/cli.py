"""argparse sub-commands `audiossl prep` and `audiossl demo-data` (wired up by audiossl_jax/cli.py).

Each `add_*_parser(subparsers)` registers its sub-command and sets `func(args) -> exit code`.
"""

from __future__ import annotations

import argparse

from audiossl_jax.features import frontends, kaldi_fbank


def add_demo_data_parser(subparsers) -> argparse.ArgumentParser:
    from audiossl_jax.data import demo

    p = subparsers.add_parser(
        "demo-data",
        help="write the built-in synthetic demo data set (wav + labels CSV)",
        description="Writes seeded synthetic clips of 10 sound-event classes as 16 kHz wav files, "
        "train.csv / eval.csv (path,labels) and classes.txt under --out.",
    )
    p.add_argument("--out", required=True, help="output folder")
    p.add_argument("--train", type=int, default=demo.DEFAULT_TRAIN, help="number of train clips")
    p.add_argument("--eval", type=int, default=demo.DEFAULT_EVAL, help="number of eval clips")
    p.add_argument("--seconds", type=float, default=demo.DEFAULT_SECONDS, help="clip length")
    p.add_argument("--seed", type=int, default=0)
    p.set_defaults(func=run_demo_data)
    return p


def run_demo_data(args) -> int:
    from audiossl_jax.data import demo

    paths = demo.write_demo_data(
        args.out, num_train=args.train, num_eval=args.eval, seed=args.seed, seconds=args.seconds
    )
    print(
        f"demo-data: {args.train} train + {args.eval} eval clips of {args.seconds:g} s, "
        f"{len(demo.CLASS_NAMES)} classes -> {paths['train']}, {paths['eval']}, {paths['classes']}"
    )
    return 0


def add_prep_parser(subparsers) -> argparse.ArgumentParser:
    p = subparsers.add_parser(
        "prep",
        help="audio files + labels -> TFRecord shards of log-mel + manifest.json",
        description="Input: an audio folder, a CSV/TSV manifest (path,labels with labels joined by "
        "';'), or an AudioSet segments CSV (+ class_labels_indices.csv). Output: "
        "<split>-NNNNN-of-NNNNN.tfrecord shards and manifest.json in --out. Bad inputs "
        "are skipped and listed in the manifest; reruns skip finished shards.",
    )
    p.add_argument("--input", required=True, help="audio folder, CSV/TSV manifest or AudioSet CSV")
    p.add_argument("--out", required=True, help="output folder (one split)")
    p.add_argument(
        "--split", default=None, help="split name used in shard file names (default: the --out folder's name)"
    )
    p.add_argument(
        "--config",
        default=None,
        help="take the front end the method's config declares (config.data.frontend), e.g. "
        "configs/eat.py:base (kaldi_fbank, hanning, 128 bins) or configs/slicer.py:cpu (librosa_mel, 64)",
    )
    p.add_argument("--frontend", choices=frontends.FRONTENDS, default=None, help="(default: kaldi_fbank)")
    p.add_argument(
        "--num-mel-bins", type=int, default=None, help="mel bins (default: 128 for kaldi_fbank, 64 for librosa_mel)"
    )
    p.add_argument(
        "--window-type",
        choices=kaldi_fbank.WINDOW_TYPES,
        default=None,
        help="kaldi_fbank window (default: povey, Kaldi's; EAT/AST use hanning)",
    )
    p.add_argument(
        "--classes-from",
        default=None,
        help="take the class list from a prepared folder (its manifest.json), a "
        "classes.txt or a class_labels_indices.csv; clips with other labels are skipped",
    )
    p.add_argument(
        "--folder-labels",
        choices=("none", "subdir"),
        default="none",
        help="folder input: unlabelled, or labelled by the first sub-folder",
    )
    p.add_argument("--class-index", default=None, help="AudioSet: class_labels_indices.csv (default: next to the CSV)")
    p.add_argument(
        "--audio-dir", default=None, help="AudioSet: folder searched for <YTID>.* audio (default: the CSV's folder)"
    )
    p.add_argument(
        "--shards",
        type=int,
        default=None,
        help="number of shards (default: the smallest power of two with <= 1024 clips per shard)",
    )
    p.add_argument("--workers", type=int, default=None, help="processes, also the direct runner's (default: all cores)")
    p.add_argument("--max-seconds", type=float, default=None, help="keep only the first N seconds")
    p.add_argument("--min-seconds", type=float, default=0.0, help="zero-pad shorter clips to N seconds")
    p.add_argument(
        "--strict",
        action="store_true",
        help="exit 1 at the first input that would be skipped, before writing any new shard or the manifest",
    )
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.add_argument(
        "--runner",
        choices=("direct", "dataflow", "flink", "spark"),
        default=None,
        help="run prep as an Apache Beam pipeline on this runner (needs `pip install -e "
        "'.[beam]'`); the same output as without it",
    )
    p.add_argument(
        "--dry-run",
        action="store_true",
        help="list the inputs, print the shards and the expected CPU-hours; write nothing",
    )
    p.add_argument(
        "beam_args",
        nargs="*",
        metavar="-- BEAM_OPTION",
        help="after --: Beam pipeline options, verbatim (e.g. --project=P --region=R "
        "--temp_location=gs://B/tmp --num_workers=40 --machine_type=n2-standard-8 "
        "--setup_file=./setup.py)",
    )
    p.set_defaults(func=run_prep)
    return p


def run_prep(args) -> int:
    from audiossl_jax.data import prep, sources

    frontend = _frontend(args)
    class_names = sources.read_class_file(args.classes_from) if args.classes_from else None
    if args.beam_args and args.runner is None:
        raise SystemExit(f"prep: {args.beam_args} are Beam options; they need --runner")
    if args.dry_run:
        return _dry_run(args, frontend, class_names)
    if args.runner is not None:
        if args.strict:
            raise SystemExit(
                "prep: --strict works without --runner only (a distributed run cannot "
                "stop before every worker has written)"
            )
        try:
            import apache_beam  # noqa: F401
        except ImportError:
            raise SystemExit(
                "prep: --runner needs Apache Beam: pip install -e '.[beam]' "
                "(apache-beam 2.77.0; `make install` installs it)"
            ) from None
        from audiossl_jax.data import beam_prep

        manifest = beam_prep.prepare(
            args.input,
            args.out,
            frontend=frontend,
            runner=args.runner,
            beam_args=args.beam_args,
            workers=args.workers,
            class_names=class_names,
            num_shards=args.shards,
            max_seconds=args.max_seconds,
            min_seconds=args.min_seconds,
            split=args.split,
            folder_labels=args.folder_labels,
            class_index=args.class_index,
            audio_dir=args.audio_dir,
        )
        return 0 if manifest["num_examples"] else _nothing_written()
    try:
        manifest = prep.prepare(
            args.input,
            args.out,
            frontend=frontend,
            class_names=class_names,
            num_shards=args.shards,
            workers=args.workers,
            max_seconds=args.max_seconds,
            min_seconds=args.min_seconds,
            split=args.split,
            folder_labels=args.folder_labels,
            class_index=args.class_index,
            audio_dir=args.audio_dir,
            progress=not args.no_progress,
            strict=args.strict,
        )
    except prep.StrictError as e:
        print(f"prep: {e}")
        return 1
    if manifest["num_examples"] == 0:
        return _nothing_written()
    if args.strict and manifest["num_skipped"]:
        print(f"prep: --strict and {manifest['num_skipped']} input(s) were skipped")
        return 1
    return 0


def _frontend(args) -> frontends.Frontend:
    """The front end of `--config` (its `config.data.frontend`), else of --frontend / --num-mel-bins /
    --window-type; with both, a flag that disagrees with the config is an error naming the field."""
    flags = {"name": args.frontend, "num_mel_bins": args.num_mel_bins, "window_type": args.window_type}
    if args.config is None:
        name = args.frontend or "kaldi_fbank"
        if args.window_type is not None and name != "kaldi_fbank":
            raise SystemExit(f"prep: --window-type applies to --frontend kaldi_fbank, not {name}")
        return frontends.make_frontend(name, num_mel_bins=args.num_mel_bins, window_type=args.window_type)
    from audiossl_jax import config_loader

    try:
        config = config_loader.load_config(args.config)
        frontend = frontends.frontend_from_config(config.data.get("frontend"))
    except (ValueError, FileNotFoundError) as e:
        raise SystemExit(f"prep: --config {args.config}: {e}") from None
    declared = {"name": frontend.name, **dict(frontend.options)}
    for field, value in flags.items():
        if value is not None and value != declared.get(field):
            flag = "--frontend" if field == "name" else "--" + field.replace("_", "-")
            raise SystemExit(
                f"prep: {flag} {value} disagrees with config.data.frontend.{field}={declared.get(field)!r} "
                f"of --config {args.config}; leave {flag} out, or prep without --config"
            )
    return frontend


def _nothing_written() -> int:
    print("prep: no examples were written")
    return 1


def _dry_run(args, frontend, class_names) -> int:
    """Lists the inputs and prints the plan and expected hours (prep_estimate.py)."""
    import os

    from audiossl_jax.data import prep, prep_estimate

    p = prep.plan(
        args.input,
        args.out,
        frontend=frontend,
        class_names=class_names,
        num_shards=args.shards,
        max_seconds=args.max_seconds,
        min_seconds=args.min_seconds,
        split=args.split,
        folder_labels=args.folder_labels,
        class_index=args.class_index,
        audio_dir=args.audio_dir,
    )
    clips = p.listing.clips
    seconds, read, tried = prep_estimate.mean_clip_seconds([c.path for c in clips], args.max_seconds, args.min_seconds)
    cpus, how = prep_estimate.cpus_from_beam_args(
        args.runner or "direct", args.beam_args, args.workers or len(os.sched_getaffinity(0))
    )
    for line in prep_estimate.report(
        len(clips),
        len(p.listing.skipped),
        p.num_shards,
        seconds,
        cpus,
        how,
        prep_estimate.BEAM_X_REALTIME_PER_CPU,
        f" of the {read} readable of {tried} sampled headers",
    ):
        print(line)
    print(f"  shards: {p.names[0]} .. {p.names[-1]} in {args.out}")
    return 0

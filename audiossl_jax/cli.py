"""`audiossl` command line: demo-data | prep | pretrain | probe | finetune | embed | label-efficiency.

    audiossl demo-data --out runs/demo/audio
    audiossl prep --input runs/demo/audio/train.csv --out runs/demo/data/train
    audiossl pretrain --config configs/wav2vec2_conformer.py:local --workdir runs/demo/wav2vec2 \
        [--config.train.steps=200 ...]
    audiossl probe --workdir runs/demo/wav2vec2 --compare-random
    audiossl finetune --workdir runs/demo/eat --compare-random    # wav2vec2, EAT, SLICER encoders
    audiossl embed --workdir runs/demo/wav2vec2 --input runs/demo/audio/eval.csv --out eval.npz
    audiossl label-efficiency --workdir runs/demo/wav2vec2 --fractions 0.1,0.33,1.0 --seeds 3
"""

from __future__ import annotations

import argparse
import json
import os
import sys

# Exit codes of `audiossl pretrain`, for launch scripts (docs/operating.md):
EXIT_OK = 0  # trained to config.train.steps (or --max_steps of this call)
EXIT_ERROR = 1  # an error, a bad --config override or config value (the message names the field),
#                a non-finite step in "stop" mode
EXIT_LOCKED = 3  # the workdir is in use by another live `audiossl pretrain` (nothing was written)
EXIT_PREEMPTED = 75  # SIGTERM: the state was checkpointed; run the same command again to resume
#                      (75 = EX_TEMPFAIL, "try again later"; not 143, which a hard SIGTERM kill also gives)


PRETRAIN_HELP = """Self-supervised pre-training; resumes from the latest checkpoint in --workdir.

options:
  --config PATH[:VARIANT]   config file and its argument, "variant[,key=value...]", e.g.
                            configs/slicer.py:cpu or configs/slicer.py:local,encoder=vit (variants
                            and keys: each file's docstring; README "Configs")
  --config.FIELD=VALUE      override any config field (the value must parse as the field's type),
                            e.g. --config.train.steps=1800 --config.data.train_dir=data/mine/train
  --workdir DIR             checkpoints, metrics.jsonl, TensorBoard, config.json, eval_curves.png,
                            data_stats.json (the data's statistics and front end, for evaluation)
  --max_steps N             stop after N steps of this invocation (resumable; also --max-steps)
  --distributed             call jax.distributed.initialize() (Cloud TPU / SLURM / Open MPI)
  --coordinator_address H:P --num_processes N --process_id I   explicit multi-process set-up

exit codes: 0 done, 1 error, 3 workdir locked by another run, 75 preempted (SIGTERM, checkpoint
saved: run the same command again). See docs/training.md and docs/operating.md.
"""


def _parse_pretrain_flags(argv: list[str], prog: str):
    """Parses `--config path:arg --config.a.b=v --workdir d ...`: the config through
    `config_loader.load_config` (locked), the other flags with absl."""
    from absl import flags

    from audiossl_jax import config_loader

    try:
        overrides, rest = config_loader.split_overrides(argv)
    except ValueError as e:
        raise SystemExit(f"{prog}: {e}") from None
    rest = [_underscored(arg) for arg in rest]
    flag_values = flags.FlagValues()
    flags.DEFINE_string(
        "config", None, "config file and its argument, `path[:variant,key=value]`", flag_values=flag_values
    )
    flags.DEFINE_string("workdir", None, "directory for checkpoints, logs and results", flag_values=flag_values)
    flags.DEFINE_integer(
        "max_steps", None, "stop after this many steps of this invocation (resumable)", flag_values=flag_values
    )
    flags.DEFINE_bool(
        "distributed",
        False,
        "call jax.distributed.initialize() (auto-detects Cloud TPU / SLURM / Open MPI; or give the three flags below)",
        flag_values=flag_values,
    )
    flags.DEFINE_string(
        "coordinator_address", None, "host:port of process 0, for multi-process runs", flag_values=flag_values
    )
    flags.DEFINE_integer("num_processes", None, "number of processes", flag_values=flag_values)
    flags.DEFINE_integer("process_id", None, "this process's index", flag_values=flag_values)
    try:
        flag_values([prog] + rest)
    except flags.Error as e:
        raise SystemExit(f"{prog}: {e}") from None
    if flag_values.config is None or flag_values.workdir is None:
        raise SystemExit(
            f"{prog}: --config and --workdir are required, e.g. "
            f"--config configs/wav2vec2_conformer.py:local --workdir runs/demo/wav2vec2"
        )
    try:  # a misspelt or mistyped --config.a.b=v, an unknown variant: one line naming it
        config = config_loader.load_config(flag_values.config, overrides, lock=True)
    except (ValueError, FileNotFoundError) as e:
        raise SystemExit(f"{prog}: {e}") from None
    _maybe_initialize_distributed(flag_values)
    return config, flag_values.workdir, flag_values.max_steps


_DASHED_FLAGS = ("max-steps", "coordinator-address", "num-processes", "process-id")


def _underscored(arg: str) -> str:
    """`--max-steps[=N]` -> `--max_steps[=N]`: the other sub-commands spell their flags with dashes."""
    name, sep, value = arg.partition("=")
    if name.startswith("--") and name[2:] in _DASHED_FLAGS:
        return "--" + name[2:].replace("-", "_") + sep + value
    return arg


def _maybe_initialize_distributed(flag_values) -> None:
    """Multi-host: must run before any other JAX call touches the devices."""
    explicit = flag_values.coordinator_address is not None
    if not (flag_values.distributed or explicit):
        return
    import jax

    if explicit:
        if flag_values.num_processes is None or flag_values.process_id is None:
            raise SystemExit("--coordinator_address needs --num_processes and --process_id")
        jax.distributed.initialize(
            coordinator_address=flag_values.coordinator_address,
            num_processes=flag_values.num_processes,
            process_id=flag_values.process_id,
        )
    else:
        jax.distributed.initialize()


def _run_pretrain(args) -> int:
    from audiossl_jax.train import loop, workdir_lock

    config, workdir, max_steps = _parse_pretrain_flags(args.rest, "audiossl pretrain")
    try:
        summary = loop.pretrain(config, workdir, max_steps=max_steps)
    except workdir_lock.WorkdirLocked as e:
        print(f"audiossl pretrain: {e}", file=sys.stderr)
        return EXIT_LOCKED
    except FileNotFoundError as e:  # a missing data dir / suite: one line, raised before anything is written
        print(f"audiossl pretrain: {e}", file=sys.stderr)
        return 1
    shown = {k: round(v, 4) for k, v in summary["metrics"].items()}
    print(
        f"pre-training stopped at step {summary['step']} after {summary['seconds']:.0f} s; "
        f"checkpoints in {os.path.join(workdir, loop.CHECKPOINT_DIR)}, TensorBoard logs in "
        f"{os.path.join(workdir, 'tb')}\nlast metrics: {json.dumps(shown)}"
    )
    if summary.get("preempted"):
        print(f"preempted: exit code {EXIT_PREEMPTED}; run the same command again to resume", flush=True)
        return EXIT_PREEMPTED
    return EXIT_OK


def _check_saved_method(args) -> None:
    """`probe` / `finetune` build the method named in `<workdir>/config.json`: a built-in one, or any
    importable module only with --allow-custom-method (a workdir is data, not code to run)."""
    import tensorflow as tf

    from audiossl_jax.objectives.registry import OBJECTIVES
    from audiossl_jax.train import run_files

    path = os.path.join(args.workdir, run_files.CONFIG_FILE)
    if not tf.io.gfile.exists(path):
        return  # the command itself reports the missing run
    try:
        with tf.io.gfile.GFile(path) as f:
            method = json.load(f).get("method", "")
    except (ValueError, AttributeError):
        return
    if method not in OBJECTIVES and not args.allow_custom_method:
        raise SystemExit(
            f"audiossl {args.command}: {path} names config.method={method!r}, not a built-in "
            f"method {OBJECTIVES}; loading it imports and runs that module. If you trust "
            "this workdir, pass --allow-custom-method."
        )


def _run_probe(args) -> int:
    from audiossl_jax.evaluate import probe

    _check_saved_method(args)

    overrides = {k: v for k, v in (("epochs", args.epochs), ("crop_frames", args.crop_frames)) if v is not None}
    out = args.out or os.path.join(args.workdir, probe.RESULTS_FILE)
    results = probe.run(
        args.workdir,
        compare_random=args.compare_random,
        random_init=args.random_init,
        train_dir=args.train_dir,
        eval_dir=args.eval_dir,
        overrides=overrides,
        logmel_baseline=args.logmel_baseline,
        out=out,
    )
    print(
        "\nLinear probe and k-NN (frozen encoder, its clip embeddings: objective.embed(...)['clip']), "
        "eval split:\n" + probe.format_table(results)
    )
    print(f"results: {out}")
    return 0


def _run_finetune(args) -> int:
    from audiossl_jax.evaluate import finetune

    _check_saved_method(args)

    overrides = {
        "steps": args.steps,
        "warmup_steps": args.warmup_steps,
        "lr": args.lr,
        "batch_size": args.batch_size,
        "layer_decay": args.layer_decay,
        "multilabel": False if args.multiclass else None,
    }
    out = args.out or os.path.join(args.workdir, "finetune")
    results = finetune.run(
        args.workdir,
        compare_random=args.compare_random,
        random_init=args.random_init,
        out=out,
        train_dir=args.train_dir,
        eval_dir=args.eval_dir,
        overrides=overrides,
        max_steps=args.max_steps,
    )
    print("\nFine-tuned classifier (encoder + head), eval split:\n" + finetune.format_table(results))
    print(f"results: {os.path.join(out, finetune.RESULTS_FILE)}")
    if any(r["preempted"] for r in results):
        print(f"preempted: exit code {EXIT_PREEMPTED}; run the same command again to resume", flush=True)
        return EXIT_PREEMPTED
    return 0


def _run_embed(args) -> int:
    from audiossl_jax.evaluate import embed_audio

    _check_saved_method(args)
    arrays = embed_audio.run(
        args.workdir,
        args.input,
        args.out,
        random_init=args.random_init,
        window_seconds=args.window_seconds,
        batch_size=args.batch_size,
    )
    print(
        f"{len(arrays['clip'])} clip embeddings {arrays['clip'].shape}, {len(arrays['frames'])} frame "
        f"embeddings (one every {float(arrays['frame_hop_seconds']):.3f} s), "
        f"{len(arrays['skipped_paths'])} skipped -> {args.out}"
    )
    return 0


def _run_label_efficiency(args) -> int:
    from audiossl_jax.evaluate import label_efficiency

    _check_saved_method(args)
    for other in args.other_workdir or []:
        _check_saved_method(
            argparse.Namespace(workdir=other, command=args.command, allow_custom_method=args.allow_custom_method)
        )
    fractions = [float(f) for f in args.fractions.split(",") if f.strip()]
    out = args.out or os.path.join(args.workdir, label_efficiency.OUT_DIR)
    report = label_efficiency.run(
        args.workdir,
        other_workdirs=args.other_workdir or [],
        fractions=fractions,
        seeds=args.seeds,
        train_dir=args.train_dir,
        eval_dir=args.eval_dir,
        out=out,
        metric=args.metric,
        random_init=not args.no_random_init,
        epochs=args.epochs,
        mode=args.mode,
        finetune_overrides={
            "steps": args.steps,
            "warmup_steps": args.warmup_steps,
            "lr": args.lr,
            "batch_size": args.batch_size,
            "layer_decay": args.layer_decay,
        },
    )
    if report.get("preempted"):
        print(f"preempted: exit code {EXIT_PREEMPTED}; run the same command again to resume", flush=True)
        return EXIT_PREEMPTED
    print("\n" + label_efficiency.format_table(report))
    print(f"results: {report['paths']['json']}\ncurve: {report['paths']['png']}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    from audiossl_jax.data import cli as data_cli

    parser = argparse.ArgumentParser(
        prog="audiossl", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    sub = parser.add_subparsers(dest="command", required=True)
    data_cli.add_demo_data_parser(sub)
    data_cli.add_prep_parser(sub)

    pretrain = sub.add_parser(
        "pretrain",
        help="self-supervised pre-training from a config",
        usage="audiossl pretrain --config PATH[:VARIANT] --workdir DIR "
        "[--config.FIELD=VALUE ...] [--max_steps N] [multi-host flags]",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        description=PRETRAIN_HELP,
    )
    pretrain.set_defaults(func=_run_pretrain)

    probe = sub.add_parser("probe", help="linear probe of a pre-trained encoder (mAP on the eval split)")
    _add_encoder_arguments(probe, "fit the probe on")
    probe.add_argument("--epochs", type=int, help="probe epochs (default: config.probe.epochs)")
    probe.add_argument(
        "--crop-frames",
        type=int,
        help="frames embedded per clip, the first N (default: config.probe.crop_frames, else config.data.crop_frames)",
    )
    probe.add_argument(
        "--logmel-baseline",
        action="store_true",
        help="also score the model-free baseline: each mel bin's mean and std over the clip",
    )
    probe.add_argument("--out", help="results JSON (default: <workdir>/probe_results.json)")
    probe.set_defaults(func=_run_probe)

    finetune = sub.add_parser(
        "finetune",
        help="fine-tune a pre-trained encoder (wav2vec2, EAT, SLICER) with a classifier head",
        description="Fine-tuning with the recipe of config.finetune of the pre-training "
        "run, by the pre-training loop (checkpoints, resume: run the same "
        "command again), then mAP / top-1 on the eval split.",
    )
    _add_encoder_arguments(finetune, "fine-tune on")
    finetune.add_argument(
        "--from-random",
        dest="random_init",
        action="store_true",
        help="only the encoder from random init (same as --random-init)",
    )
    finetune.add_argument("--out", help="output folder (default: <workdir>/finetune)")
    finetune.add_argument("--steps", type=int, help="fine-tuning steps (default: config.finetune.steps)")
    finetune.add_argument(
        "--warmup-steps", type=int, help="linear warm-up steps (default: config.finetune.warmup_steps)"
    )
    finetune.add_argument("--lr", type=float, help="peak learning rate (default: config.finetune.lr)")
    finetune.add_argument(
        "--layer-decay", type=float, help="layer-wise LR decay (default: config.finetune.layer_decay; 1: none)"
    )
    finetune.add_argument("--batch-size", type=int, help="global batch (default: config.finetune.batch_size)")
    finetune.add_argument(
        "--multiclass",
        action="store_true",
        help="one label per clip: softmax cross-entropy, top-1 accuracy (default: config.finetune.multilabel)",
    )
    finetune.add_argument("--max-steps", type=int, help="stop each fine-tuning after N steps of this call (resumable)")
    finetune.set_defaults(func=_run_finetune)

    emb = sub.add_parser(
        "embed",
        help="clip and frame embeddings (with timestamps) of audio files -> .npz",
        description="Embeds one audio file, every audio file below a folder, or the rows "
        "of a CSV with the run's front end, normalisation and encoder; long "
        "files in windows of the probe window (docs/evaluation.md).",
    )
    emb.add_argument("--workdir", required=True, help="the --workdir of a pretrain run")
    emb.add_argument("--input", required=True, help="an audio file, a folder of audio or a CSV/TSV (path,...)")
    emb.add_argument("--out", required=True, help="output .npz")
    emb.add_argument("--random-init", action="store_true", help="the encoder at its random init")
    emb.add_argument(
        "--window-seconds",
        type=float,
        help="seconds embedded at once (default: the probe window, config.probe.crop_frames "
        "else config.data.crop_frames)",
    )
    emb.add_argument("--batch-size", type=int, help="windows per batch (default: config.probe.embed_batch_size)")
    _add_allow_custom_method(emb)
    emb.set_defaults(func=_run_embed)

    eff = sub.add_parser(
        "label-efficiency",
        help="probe (or fine-tuning) metric vs fraction of the labels, pre-trained vs random init",
        description="Embeds the labelled train and eval splits once per encoder, then fits "
        "the linear probe on stratified, seeded subsets of the train split; with --mode finetune, "
        "fine-tunes each encoder on each subset instead (audiossl finetune's recipe; resumable).",
    )
    eff.add_argument("--workdir", required=True, help="the --workdir of a pretrain run")
    eff.add_argument("--other-workdir", action="append", help="another run to compare (repeatable)")
    eff.add_argument("--fractions", default="0.1,0.33,1.0", help="comma-separated fractions of the train labels")
    eff.add_argument("--seeds", type=int, default=3, help="subsets (and probe seeds) per fraction")
    eff.add_argument("--train-dir", help="labelled split to subsample (default: config.data.train_dir)")
    eff.add_argument("--eval-dir", help="prepared split to score (default: config.data.eval_dir)")
    eff.add_argument(
        "--metric", help="metric of the table and curve (mAP, top1, knn_mAP, ...; default: mAP, else top1)"
    )
    eff.add_argument(
        "--mode",
        choices=["probe", "finetune"],
        default="probe",
        help="probe: linear probe on frozen embeddings (fast); finetune: fine-tune encoder + head per subset",
    )
    eff.add_argument("--epochs", type=int, help="probe epochs (default: config.probe.epochs)")
    eff.add_argument(
        "--steps", type=int, help="--mode finetune: steps per fine-tuning (default: config.finetune.steps)"
    )
    eff.add_argument("--warmup-steps", type=int, help="--mode finetune: warm-up steps")
    eff.add_argument("--lr", type=float, help="--mode finetune: peak learning rate")
    eff.add_argument("--layer-decay", type=float, help="--mode finetune: layer-wise LR decay")
    eff.add_argument("--batch-size", type=int, help="--mode finetune: global batch")
    eff.add_argument("--no-random-init", action="store_true", help="leave the random-init encoder out")
    eff.add_argument("--out", help="output folder (default: <workdir>/label_efficiency)")
    _add_allow_custom_method(eff)
    eff.set_defaults(func=_run_label_efficiency)

    exp = sub.add_parser(
        "export",
        help="write a pre-trained encoder to safetensors in PyTorch names (docs/interop.md)",
        description="The encoder of the latest checkpoint (Conformer: torchaudio's Conformer layout; ViT: "
        "EAT's), the input normalisation and JSON metadata; interop/torch_reference.py loads it in torch.",
    )
    exp.add_argument("--workdir", required=True, help="the --workdir of a pretrain run")
    exp.add_argument("--out", required=True, help="output file, *.safetensors")
    exp.add_argument("--random-init", action="store_true", help="the run's random init instead of its checkpoint")
    _add_allow_custom_method(exp)
    exp.set_defaults(func=_run_export)
    return parser


def _run_export(args) -> int:
    from audiossl_jax.interop import export

    _check_saved_method(args)
    meta = export.export_workdir(args.workdir, args.out, random_init=args.random_init)
    print(f"{meta['method']} {meta['encoder']} encoder (step {meta['step']}) -> {args.out}")
    return 0


def _add_encoder_arguments(p: argparse.ArgumentParser, use: str) -> None:
    p.add_argument("--workdir", required=True, help="the --workdir of a pretrain run")
    p.add_argument(
        "--compare-random", action="store_true", help="also run the same encoder at random init, side by side"
    )
    p.add_argument("--random-init", action="store_true", help="only the random-init encoder")
    p.add_argument("--train-dir", help=f"prepared split to {use} (default: config.data.train_dir)")
    p.add_argument("--eval-dir", help="prepared split to score (default: config.data.eval_dir)")
    _add_allow_custom_method(p)


def _add_allow_custom_method(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--allow-custom-method",
        action="store_true",
        help="allow a workdir whose config.json names a method outside the built-in ones "
        "(its module is imported and run)",
    )


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args, rest = parser.parse_known_args(sys.argv[1:] if argv is None else argv)
    if rest and args.command != "pretrain":
        parser.error(f"unrecognized arguments: {' '.join(rest)}")
    args.rest = rest
    code = int(args.func(args) or 0)
    if argv is None and code == EXIT_PREEMPTED and _single_process():
        # Preempted from the command line: everything is committed and closed (checkpoint, metrics,
        # lock), so skip the interpreter's slow teardown (TensorFlow/JAX threads, several seconds).
        # Not with several processes: jax.distributed's shutdown barrier must still run.
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)
    return code


def _single_process() -> bool:
    import jax

    return jax.process_count() == 1


if __name__ == "__main__":
    sys.exit(main())

"""What the PyTorch peers (`bench/torch_*.py`) share: run flags, the timed step loop, the JSON line.

Each peer builds its model and one training step, then calls `time_steps` and prints `report(...)`,
the one JSON line `bench/bench_train_step.py --torch-python` reads.
"""

import json
import statistics
import time

import torch


def add_run_arguments(parser, *, steps: int, bf16_help: str = "autocast to bfloat16 (cuda)") -> None:
    parser.add_argument("--steps", type=int, default=steps, help="timed steps (the first is dropped)")
    parser.add_argument("--threads", type=int, default=0, help="torch.set_num_threads (0: torch's default)")
    parser.add_argument("--device", default="cpu", help="cpu | cuda")
    parser.add_argument("--bf16", action="store_true", help=bf16_help)
    parser.add_argument("--json", default="", help="also write the result to this file")


def setup(args) -> torch.device:
    """Applies --threads, seeds torch, returns the --device."""
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    return torch.device(args.device)


def synchronizer(device: torch.device):
    """A function that waits for the device's queued work (a no-op on CPU)."""

    def sync():
        if device.type == "cuda":
            torch.cuda.synchronize()

    return sync


def time_steps(step, steps: int, device: torch.device, inputs=lambda: ()):
    """Runs `step(*inputs())` `steps` times; `inputs` (untimed) draws each step's random inputs.

    Returns (wall seconds, process CPU seconds, the last step's output)."""
    sync = synchronizer(device)
    times, cpu, out = [], [], None
    for _ in range(steps):
        args = inputs()
        sync()
        start, cpu_start = time.perf_counter(), time.process_time()
        out = step(*args)
        sync()
        times.append(time.perf_counter() - start)
        cpu.append(time.process_time() - cpu_start)
    return times, cpu, out


def report(args, times, cpu, **fields) -> dict:
    """The result dict (run flags, the peer's `fields`, timings without the first step), printed as
    one JSON line and written to --json."""
    result = {
        "framework": "pytorch",
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "device": args.device,
        "bf16": args.bf16,
        **fields,
        "step_seconds": times[1:],
        "median_step_seconds": statistics.median(times[1:]),
        "cpu_seconds": cpu[1:],
        "median_cpu_seconds": statistics.median(cpu[1:]),
    }
    print(json.dumps(result))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(result, f, indent=2)
    return result

"""Training-start check: are there enough shards for this many data-loading processes?

The training iterator gives shard file i to process i % P (`pipeline.TrainIterator`). With fewer
shards than processes every process reads every shard and drops (P - 1) / P of its records, so the
storage traffic grows P-fold; with a shard count that P does not divide, some processes own one
shard more than others and their epochs see those shards more often. `audiossl prep`'s default (a
power of two with <= 1,024 clips per shard) divides evenly over any power-of-two process count up
to the shard count.
"""

from __future__ import annotations


def warnings(num_shards: int, process_count: int, data_dir: str) -> list[str]:
    """The problems of reading `num_shards` shards with `process_count` processes (empty: none)."""
    fix = (
        f"re-run `audiossl prep ... --out {data_dir} --shards N` with N a multiple of {process_count} "
        "(finished shards of another count are replaced)"
    )
    if num_shards < process_count:
        return [
            f"{data_dir}: {num_shards} shard(s) for {process_count} data-loading processes: every "
            f"process reads all shards and keeps 1/{process_count} of the records; {fix}"
        ]
    if num_shards % process_count:
        return [
            f"{data_dir}: {num_shards} shards do not divide over {process_count} data-loading "
            f"processes: some processes own one shard more and see it more often; {fix}"
        ]
    return []


def warn(manifest: dict, data_dir: str, process_count: int, log=print) -> list[str]:
    """Logs (and returns) `warnings` for the non-empty shards listed in a prepared folder's manifest."""
    found = warnings(sum(1 for s in manifest["shards"] if s["num_examples"] > 0), process_count, data_dir)
    for line in found:
        log(f"warning: {line}")
    return found

"""FIFO queue: pushes vs a numpy reference (contiguous and wrap-around), normalisation, and the same
result when queue and keys are sharded over 8 fake CPU devices (run in a subprocess)."""

import json
import os
import subprocess
import sys
import textwrap

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from audiossl_jax.objectives import queue

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def numpy_fifo(size, dim, batches):
    """Reference ring buffer: item j of all pushes so far lives in row j % size."""
    buf, ptr = np.zeros((size, dim), np.float32), 0
    for items in batches:
        for row in items:
            buf[ptr] = row
            ptr = (ptr + 1) % size
    return buf, ptr


@pytest.mark.parametrize("size, n", [(12, 4), (10, 4), (7, 7)])
def test_push_matches_fifo_reference(size, n):
    rng = np.random.default_rng(size)
    batches = [rng.normal(size=(n, 3)).astype(np.float32) for _ in range(7)]
    push = jax.jit(lambda b, x, p: (queue.push(b, x, p), queue.advance(p, x.shape[0], b.shape[0])))
    buf, ptr = jnp.zeros((size, 3)), jnp.int32(0)
    for i, items in enumerate(batches):
        buf, ptr = push(buf, jnp.asarray(items), ptr)
        ref_buf, ref_ptr = numpy_fifo(size, 3, batches[: i + 1])
        np.testing.assert_array_equal(np.asarray(buf), ref_buf)
        assert int(ptr) == ref_ptr


def test_push_trailing_dims_and_errors():
    buf = jnp.zeros((5, 2, 3))
    out = queue.push(buf, jnp.ones((2, 2, 3)), jnp.int32(4))  # wraps: rows 4 and 0
    np.testing.assert_array_equal(np.asarray(out[:, 0, 0]), [1, 0, 0, 0, 1])
    with pytest.raises(ValueError, match="at least the number of items"):
        queue.push(buf, jnp.ones((6, 2, 3)), 0)
    with pytest.raises(ValueError, match="do not fit"):
        queue.push(buf, jnp.ones((2, 3, 3)), 0)


def test_key_queue_init_and_enqueue_normalise():
    state = queue.init_key_queue(jax.random.key(0), 8, 4)
    keys = state["keys"].value
    assert state["keys"].names == ("queue", None) and int(state["ptr"]) == 0
    np.testing.assert_allclose(np.linalg.norm(keys, axis=1), 1.0, rtol=1e-6)
    new = queue.enqueue({"keys": keys, "ptr": state["ptr"]}, 3.0 * jnp.eye(4)[:2])
    np.testing.assert_allclose(np.asarray(new["keys"][:2]), np.eye(4)[:2], atol=1e-7)
    np.testing.assert_array_equal(np.asarray(new["keys"][2:]), np.asarray(keys[2:]))
    assert int(new["ptr"]) == 2


_SHARDED_SCRIPT = textwrap.dedent("""
    import json
    import jax, jax.numpy as jnp, numpy as np
    from jax.sharding import NamedSharding, PartitionSpec as P
    from audiossl_jax.objectives import queue
    assert len(jax.devices()) == 8
    mesh = jax.make_mesh((8,), ("data",), axis_types=(jax.sharding.AxisType.Auto,))
    q_sharding, k_sharding = NamedSharding(mesh, P("data", None)), NamedSharding(mesh, P("data", None))
    rng = np.random.default_rng(0)
    out = {}
    for size, n in ((32, 8), (40, 16)):  # contiguous pushes; pushes that wrap mid-batch
        init = queue.init_key_queue(jax.random.key(1), size, 4)
        state = {"keys": init["keys"].value, "ptr": init["ptr"]}
        batches = [rng.normal(size=(n, 4)).astype(np.float32) for _ in range(5)]
        plain = jax.jit(queue.enqueue)
        shard_state = {"keys": jax.device_put(state["keys"], q_sharding), "ptr": state["ptr"]}
        sharded = jax.jit(queue.enqueue, out_shardings={"keys": q_sharding, "ptr": NamedSharding(mesh, P())})
        for keys in batches:
            state = plain(state, jnp.asarray(keys))
            shard_state = sharded(shard_state, jax.device_put(keys, k_sharding))
        assert len(shard_state["keys"].sharding.device_set) == 8
        out[f"{size},{n}"] = {
            "max_abs_diff": float(np.max(np.abs(np.asarray(state["keys"]) - np.asarray(shard_state["keys"])))),
            "ptr": [int(state["ptr"]), int(shard_state["ptr"])],
            "shard_rows": shard_state["keys"].addressable_shards[0].data.shape[0],
        }
    print("RESULT " + json.dumps(out))
""")


def test_enqueue_sharded_over_8_devices_equals_unsharded():
    env = dict(
        os.environ,
        XLA_FLAGS="--xla_force_host_platform_device_count=8",
        JAX_PLATFORMS="cpu",
        PYTHONPATH=REPO + os.pathsep + os.environ.get("PYTHONPATH", ""),
    )
    proc = subprocess.run(
        [sys.executable, "-c", _SHARDED_SCRIPT], cwd=REPO, env=env, capture_output=True, text=True, timeout=300
    )
    lines = [line for line in proc.stdout.splitlines() if line.startswith("RESULT ")]
    assert proc.returncode == 0 and lines, proc.stderr[-4000:]
    result = json.loads(lines[-1][len("RESULT ") :])
    for case, (size, n) in (("32,8", (32, 8)), ("40,16", (40, 16))):
        assert result[case]["max_abs_diff"] == 0.0, result
        assert result[case]["ptr"] == [5 * n % size] * 2
        assert result[case]["shard_rows"] == size // 8

"""EMA teacher: decay schedule (fairseq get_annealed_rate) and update vs numpy."""

import jax
import jax.numpy as jnp
import numpy as np

from audiossl_jax.objectives import ema


def np_annealed_rate(start, end, curr_step, total_steps):
    """fairseq data2vec `get_annealed_rate`, as called by EAT's set_num_updates."""
    if curr_step >= total_steps:
        return end
    r = end - start
    pct_remaining = 1 - curr_step / total_steps
    return end - r * pct_remaining


def test_decay_schedule_matches_fairseq():
    steps = np.array([0, 1, 500, 99_999, 100_000, 250_000])
    ours = jax.jit(lambda s: ema.ema_decay(s, 0.9998, 0.99999, 100_000))(jnp.asarray(steps))
    ref = [np_annealed_rate(0.9998, 0.99999, int(s), 100_000) for s in steps]
    np.testing.assert_allclose(ours, ref, rtol=0, atol=1e-7)
    assert float(ema.ema_decay(7, 0.5, 0.9, 0)) == np.float32(0.9)  # no annealing: the end value


def test_update_matches_numpy_and_keeps_dtypes():
    rng = np.random.default_rng(0)
    teacher = {
        "a": jnp.asarray(rng.normal(size=(3, 4)), jnp.float32),
        "b": {"c": jnp.asarray(rng.normal(size=(5,)), jnp.bfloat16)},
    }
    student = jax.tree.map(lambda x: x + 1.0, teacher)
    new = jax.jit(ema.ema_update)(teacher, student, jnp.float32(0.9))
    np.testing.assert_allclose(new["a"], np.asarray(teacher["a"]) * 0.9 + np.asarray(student["a"]) * 0.1, rtol=1e-6)
    assert new["b"]["c"].dtype == jnp.bfloat16
    np.testing.assert_allclose(
        np.asarray(new["b"]["c"], np.float32), np.asarray(teacher["b"]["c"], np.float32) + 0.1, atol=2e-2
    )
    # decay 1: frozen teacher; decay 0: copy of the student
    same = ema.ema_update(teacher, student, 1.0)
    copy = ema.ema_update(teacher, student, 0.0)
    np.testing.assert_array_equal(same["a"], teacher["a"])
    np.testing.assert_array_equal(copy["a"], student["a"])


def test_update_passes_no_gradient_to_the_student():
    teacher, student = {"w": jnp.ones(3)}, {"w": jnp.full(3, 2.0)}
    g = jax.grad(lambda s: ema.ema_update(teacher, s, 0.5)["w"].sum())(student)
    np.testing.assert_array_equal(g["w"], 0.0)

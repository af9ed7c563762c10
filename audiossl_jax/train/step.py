"""The train step: its state (a plain dict pytree) with abstract + sharded initialisation, the step
function (loss, gradients, optimizer, `update_aux`, non-finite guard) and its jit."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import optax

from audiossl_jax.objectives.protocol import Objective
from audiossl_jax.parallel import sharding as sharding_lib

TrainState = dict[str, Any]  # {"step", "params", "aux", "opt_state"}


def _boxed_init(objective: Objective, tx: optax.GradientTransformation, rng, batch) -> TrainState:
    variables = objective.init(rng, batch)
    return {
        "step": jnp.zeros((), jnp.int32),
        "params": variables["params"],
        "aux": variables.get("aux", {}),
        "opt_state": None,
    }


def abstract_train_state(
    objective: Objective, tx: optax.GradientTransformation, rng: jax.Array, batch: dict, mesh: jax.sharding.Mesh, rules
) -> tuple[TrainState, TrainState]:
    """(abstract state of ShapeDtypeStructs, shardings) from the logical axis names; allocates nothing."""
    boxed = jax.eval_shape(lambda r, b: _boxed_init(objective, tx, r, b), rng, batch)
    shardings = sharding_lib.logical_shardings(boxed, mesh, rules)
    abstract = sharding_lib.unbox(boxed)
    abstract["opt_state"] = jax.eval_shape(tx.init, abstract["params"])
    replicated = sharding_lib.replicated(mesh)
    shardings["opt_state"] = optax.tree_map_params(
        tx, lambda _, s: s, abstract["opt_state"], shardings["params"], transform_non_params=lambda _: replicated
    )
    abstract = jax.tree.map(lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s), abstract, shardings)
    return abstract, shardings


def init_train_state(
    objective: Objective, tx: optax.GradientTransformation, rng: jax.Array, batch: dict, mesh: jax.sharding.Mesh, rules
) -> tuple[TrainState, TrainState]:
    """Initialises the state directly into its shardings; returns (state, shardings)."""
    _, shardings = abstract_train_state(objective, tx, rng, batch, mesh, rules)

    def init(r, b):
        with sharding_lib.activation_rules(mesh, rules):
            state = sharding_lib.unbox(_boxed_init(objective, tx, r, b))
        state["opt_state"] = tx.init(state["params"])
        return state

    replicated = sharding_lib.replicated(mesh)
    batch_shardings = jax.tree.map(lambda x: x.sharding, batch)
    state = jax.jit(init, in_shardings=(replicated, batch_shardings), out_shardings=shardings)(rng, batch)
    return state, shardings


def make_train_step(
    objective: Objective,
    tx: optax.GradientTransformation,
    schedule: optax.Schedule,
    *,
    mesh: jax.sharding.Mesh,
    rules,
    on_nonfinite: str = "stop",
) -> Callable[[TrainState, dict, jax.Array], tuple[TrainState, dict]]:
    """The pure train step: loss + grads, optimizer update, objective's aux update (EMA, queue).

    Traced with `rules` and `mesh` bound, so the models' `nn.with_logical_constraint` calls pin the
    activations (and their gradients) to the rules' layout.

    Metric `nonfinite` is 1.0 when the loss, the gradient norm, the update norm or the norm of the
    updated params is not finite (the float32 norm overflows once any |param| passes ~1e19, so an
    exploded state counts too). `on_nonfinite="skip"`: such a step's update is discarded here (params,
    optimizer and method state stay those of the previous step; the step counter still advances, so
    the data and randomness move on). `"stop"`: the state is updated as is and the loop raises.
    """
    if on_nonfinite not in ("stop", "skip"):
        raise ValueError(f"config.train.on_nonfinite={on_nonfinite!r} is not one of ('stop', 'skip')")

    def train_step(state: TrainState, batch: dict, rng: jax.Array):
        step = state["step"]
        rng = jax.random.fold_in(rng, step)
        grad_fn = jax.value_and_grad(objective.loss, has_aux=True)
        (loss, (metrics, aux)), grads = grad_fn(state["params"], state["aux"], batch, rng, step)
        metrics = dict(metrics)
        carry = metrics.pop("_carry", None)
        updates, opt_state = tx.update(grads, state["opt_state"], state["params"])
        params = optax.apply_updates(state["params"], updates)
        aux = objective.update_aux(params, aux, carry, step)
        metrics.update(
            loss=loss,
            grad_norm=optax.global_norm(grads),
            update_norm=optax.global_norm(updates),
            param_norm=optax.global_norm(params),
            lr=schedule(step),
        )
        finite = jnp.all(
            jnp.isfinite(
                jnp.stack(
                    [jnp.asarray(metrics[k], jnp.float32) for k in ("loss", "grad_norm", "update_norm", "param_norm")]
                )
            )
        )
        metrics["nonfinite"] = 1.0 - finite.astype(jnp.float32)
        new = {"params": params, "aux": aux, "opt_state": opt_state}
        if on_nonfinite == "skip":
            old = {k: state[k] for k in new}
            new = jax.tree.map(lambda n, o: jnp.where(finite, n, o), new, old)
        return {"step": step + 1, **new}, metrics

    return sharding_lib.with_activation_rules(train_step, mesh, rules)


def jit_train_step(train_step, state_shardings, batch_shardings, mesh):
    """pjit: explicit in/out shardings, the state donated so it is updated in place."""
    replicated = sharding_lib.replicated(mesh)
    return jax.jit(
        train_step,
        in_shardings=(state_shardings, batch_shardings, replicated),
        out_shardings=(state_shardings, replicated),
        donate_argnums=0,
    )

"""Training state and the jitted train/eval steps.

The state is a plain pytree (step, params, batch_stats, opt_state); the dropout key of step ``t`` is
``fold_in(rng_stream(seed, 'dropout'), t)``, so a run resumed at step ``t`` draws the same masks as an uninterrupted
one.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import flax.struct
import jax
import jax.numpy as jnp
import optax

from jaxnorm import losses as losses_lib
from jaxnorm.lab import rng


@flax.struct.dataclass
class TrainState:
    step: jax.Array
    params: Any
    batch_stats: Any
    opt_state: Any

    def variables(self) -> dict:
        return {"params": self.params, "batch_stats": self.batch_stats} if self.batch_stats else {"params": self.params}


def create_state(model, tx: optax.GradientTransformation, example_x, seed: int) -> TrainState:
    variables = model.init(rng.rng_stream(seed, "params"), example_x, train=False)
    params = variables["params"]
    return TrainState(
        step=jnp.zeros((), jnp.int32),
        params=params,
        batch_stats=variables.get("batch_stats", {}),
        opt_state=tx.init(params),
    )


def dropout_key(seed: int, step) -> jax.Array:
    """The dropout key of a training step: a pure function of (seed, step) (see :mod:`jaxnorm.lab.rng`)."""
    return jax.random.fold_in(rng.rng_stream(seed, "dropout"), step)


def _correct(outputs, y, mask, kind: str):
    if kind == "mse":  # no accuracy for regression
        return jnp.zeros((), jnp.int32)
    return losses_lib.correct_count(outputs, y, mask)


def _psum(x, axis_name):
    return x if axis_name is None else jax.lax.psum(x, axis_name)


def _pmean_floats(tree, axis_name):
    return jax.tree.map(lambda v: jax.lax.pmean(v, axis_name) if jnp.issubdtype(v.dtype, jnp.floating) else v, tree)


def make_train_step(
    model,
    tx: optax.GradientTransformation,
    schedule: Callable,
    seed: int,
    *,
    axis_name: str | None = None,
    sync_bn: bool = True,
    loss: str = "cross_entropy",
    embedding_reg: float = 0.0,
    log_embedding: bool = False,
) -> Callable:
    """``train_step(state, batch[, dropout_base]) -> (state, metrics)``, un-jitted (the caller jits, pmaps or
    shard_maps it). ``dropout_base`` (default ``rng_stream(seed, 'dropout')``) is the key the step's dropout key
    ``fold_in(dropout_base, step)`` derives from; passing it keeps the seed out of the compiled program.

    With ``axis_name`` the step runs per device inside ``pmap``/``shard_map``: the loss is the global mean over the
    valid examples of all devices (per-device sums over the global count, so uneven masks are exact) and its
    gradient is ``psum``'d, metrics likewise; the dropout key is ``fold_in(fold_in(key, step), axis_index)``.
    Batch statistics are synchronized by the model's norms (``axis_name`` on the layers) when ``sync_bn``;
    otherwise each device normalizes with its own ("ghost") statistics and the running statistics are averaged
    over devices after the update, ``r ← m·r + (1−m)·mean_d(stat_d)``.

    ``embedding_reg`` λ > 0 adds Dauphin & Cubuk (2021)'s penalty on the final layer's input h (the model's
    ``return_features``): loss = mean_x ℓ(x) + λ · mean_x ‖h(x)‖², means over the valid examples; the reported
    ``loss`` is the total and ``embedding_norm_sq`` the mean ‖h‖². ``log_embedding`` reports
    ``embedding_norm_sq`` at any λ, also λ = 0 (the loss and its gradient are then unchanged: ‖h‖² is only
    measured), so the growth of ‖h‖² without the penalty is on record for every arm.
    """

    kind = loss  # the name `loss` is the scalar below
    features_on = bool(embedding_reg) or bool(log_embedding)

    def loss_fn(params, state, batch, key):
        variables = {"params": params, "batch_stats": state.batch_stats}
        out, new_vars = model.apply(
            variables,
            batch["x"],
            train=True,
            mutable=["batch_stats"],
            rngs={"dropout": key},
            **({"return_features": True} if features_on else {}),
        )
        logits, features = out if features_on else (out, None)
        losses = losses_lib.per_example_loss(logits, batch["y"], kind)
        w = batch["mask"].astype(losses.dtype)
        count = jnp.maximum(_psum(jnp.sum(w), axis_name), 1.0)
        emb = jnp.zeros((), losses.dtype)
        if features_on:
            sq = jnp.sum(jnp.square(features.reshape(features.shape[0], -1).astype(jnp.float32)), axis=-1)
            emb = jnp.sum(sq * w) / count
            if embedding_reg:
                losses = losses + embedding_reg * sq
        return jnp.sum(losses * w) / count, (logits, new_vars.get("batch_stats", {}), count, emb)

    def train_step(state: TrainState, batch, dropout_base=None) -> tuple[TrainState, dict]:
        # the run's dropout key may come in as an argument (the trainer passes rng_stream(seed, 'dropout')): the
        # compiled step is then the same program for every seed, and a sweep's compilation cache serves them all
        base = rng.rng_stream(seed, "dropout") if dropout_base is None else dropout_base
        key = jax.random.fold_in(base, state.step)
        if axis_name is not None:
            key = jax.random.fold_in(key, jax.lax.axis_index(axis_name))
        (loss, (logits, batch_stats, count, emb)), grads = jax.value_and_grad(loss_fn, has_aux=True)(
            state.params, state, batch, key
        )
        if axis_name is not None:
            grads, loss, emb = _psum((grads, loss, emb), axis_name)
            if not sync_bn:
                batch_stats = _pmean_floats(batch_stats, axis_name)
        updates, opt_state = tx.update(grads, state.opt_state, state.params)
        params = optax.apply_updates(state.params, updates)
        correct = _psum(_correct(logits, batch["y"], batch["mask"], kind), axis_name)
        metrics = {
            "loss": loss,
            "learning_rate": schedule(state.step),
            "grad_norm": optax.global_norm(grads),
            "param_norm": optax.global_norm(params),
        }
        if kind == "cross_entropy":
            metrics["accuracy"] = correct / count
        if features_on:
            metrics["embedding_norm_sq"] = emb
        new = state.replace(step=state.step + 1, params=params, batch_stats=batch_stats, opt_state=opt_state)
        return new, metrics

    return train_step


def make_eval_step(model, loss: str = "cross_entropy") -> Callable:
    """``eval_step(variables, batch) -> sums`` of loss, correct predictions and valid examples (masked padding)."""

    def eval_step(variables, batch):
        logits = model.apply(variables, batch["x"], train=False)
        losses = losses_lib.per_example_loss(logits, batch["y"], loss)
        m = batch["mask"]
        return {
            "loss_sum": jnp.sum(jnp.where(m, losses, 0.0)),
            "correct": _correct(logits, batch["y"], m, loss),
            "count": jnp.sum(m),
        }

    return eval_step

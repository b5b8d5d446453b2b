"""Greedy layer-wise pretraining with tied autoencoders (seed 003), before supervised fine-tuning.

Layer i of a dense stack (``dense_0, dense_1, …``) is learned as a tied autoencoder of the output of the layers
before it, ``Z = f(X W_i + b_i)``, ``X′ = Z W_iᵀ + b′_i`` (squared error against the *clean* X), with masking noise
on X (``kind='denoising'``), the sparsity penalty ``β Σ_j KL(ρ‖ρ̂_j)`` on Z (``'sparse'``, needs a sigmoid
activation) or both. ``W_i``/``b_i`` then initialize the supervised network (a layer followed by batch norm has no
bias: BN's β takes its place), and fine-tuning runs as a normal training run.

Pretraining step ``p`` trains layer ``p // steps`` on the batch ``batch_at(train, p, seed=seed + 3)``; its state (every
layer's autoencoder and optimizer state, a fixed structure) is checkpointed under ``WORKDIR/pretrain``, so a run
stopped mid-pretraining resumes there bit-identically.
"""

from __future__ import annotations

import os
import re

import flax.serialization
import jax
import jax.numpy as jnp
import numpy as np
import optax

from jaxnorm import data as data_lib
from jaxnorm.models import autoencoder as ae_lib
from jaxnorm.models import components
from jaxnorm.train import checkpoint as ckpt_lib

KINDS = ("denoising", "sparse", "both")


def dense_stack(params) -> list[str]:
    """The names ``dense_0, dense_1, …`` of a model's dense layers, in order."""
    names = [n for n in params if re.fullmatch(r"dense_\d+", n)]
    return sorted(names, key=lambda n: int(n.split("_")[1]))


def plan(config, params) -> list[str]:
    """The layers to pretrain, checked against the model: ``pretrain.layers`` are the hidden sizes of the first
    dense layers. Raises before anything is written."""
    p = config.pretrain
    sizes = tuple(int(s) for s in p.layers)
    if not sizes:
        return []
    if p.kind not in KINDS:
        raise ValueError(f"unknown pretrain.kind {p.kind!r}; valid: {', '.join(KINDS)}")
    if p.steps <= 0:
        raise ValueError(f"pretrain.steps must be a positive int (steps per layer), got {p.steps}")
    if p.kind in ("sparse", "both") and config.activation != "sigmoid":
        raise ValueError(f"pretrain.kind={p.kind!r} needs sigmoid codes (ρ̂_j in (0, 1)); set --config.activation="
                         f"sigmoid or pretrain.kind='denoising' (activation is {config.activation!r})")
    ae_lib._check_rho(p.rho, "pretrain.rho")
    ae_lib._check_beta(p.beta, "pretrain.beta")
    ae_lib._check_fraction(p.corruption, "pretrain.corruption")
    names = dense_stack(params)
    if not names:
        raise ValueError(f"pretraining needs dense layers to initialize (dense_0, dense_1, …), and model "
                         f"{config.model!r} has none (its layers: {sorted(params)}); use mlp, ioffe_mlp, "
                         "srivastava_mlp or deep_linear")
    widths = [int(params[n]["kernel"].shape[1]) for n in names]
    if len(sizes) > len(widths) or tuple(widths[: len(sizes)]) != sizes:
        raise ValueError(f"pretrain.layers={list(sizes)} does not match the first dense layers of {config.model!r}, "
                         f"whose sizes are {widths}; use a prefix such as {widths[: max(1, len(sizes))]}")
    return names[: len(sizes)]


def _init_state(params, names, tx):
    aes = {}
    for n in names:
        k = params[n]["kernel"]
        aes[n] = {"kernel": k, "bias": params[n].get("bias", jnp.zeros(k.shape[1], k.dtype)),
                  "bias_out": jnp.zeros(k.shape[0], k.dtype)}
    return {"step": jnp.zeros((), jnp.int32), "aes": aes, "opts": {n: tx.init(aes[n]) for n in names}}


def _make_step(config, tx, act):
    p = config.pretrain

    def loss_fn(ae, x, key):
        xc = ae_lib.masking_noise(x, p.corruption, key=key) if p.kind in ("denoising", "both") else x
        z = act(xc @ ae["kernel"] + ae["bias"])
        x_hat = z @ ae["kernel"].T + ae["bias_out"]
        loss = ae_lib.reconstruction_loss(x_hat, x, kind="squared")
        if p.kind in ("sparse", "both"):
            loss = loss + ae_lib.sparsity_penalty(z, rho=p.rho, beta=p.beta)
        return loss

    @jax.jit
    def step(ae, opt, x, key):
        loss, g = jax.value_and_grad(loss_fn)(ae, x, key)
        upd, opt = tx.update(g, opt, ae)
        return optax.apply_updates(ae, upd), opt, loss

    return step


def pretrain(exp, params, workdir: str, writer, primary: bool) -> dict:
    """Run (or resume) the pretraining stage and return ``params`` with the pretrained layers filled in."""
    c = exp.config
    names = plan(c, params)
    if not names:
        return params
    p = c.pretrain
    tx = optax.adam(p.learning_rate)
    act = components.get_activation(c.activation)
    step_fn = _make_step(c, tx, act)
    state = _init_state(params, names, tx)
    ckpt = ckpt_lib.Checkpointer(os.path.join(workdir, "pretrain"), 2)
    if ckpt.steps():
        state = flax.serialization.from_state_dict(state, ckpt.restore(flax.serialization.to_state_dict(state)))
    total = len(names) * p.steps
    start = int(state["step"])

    def save():
        if primary:
            ckpt.save(int(state["step"]), flax.serialization.to_state_dict(state))

    try:
        for s in range(start, total):
            i = s // p.steps
            x = data_lib.batch_at(exp.dataset.train, s, c.batch_size, seed=c.seed + 3)["x"]
            h = jnp.asarray(x).reshape(x.shape[0], -1)
            for n in names[:i]:  # the layers already learned encode the input of layer i
                h = act(h @ state["aes"][n]["kernel"] + state["aes"][n]["bias"])
            key = jax.random.fold_in(jax.random.key(c.seed + 4), s)
            ae, opt, loss = step_fn(state["aes"][names[i]], state["opts"][names[i]], h, key)
            state = {"step": jnp.asarray(s + 1, jnp.int32), "aes": {**state["aes"], names[i]: ae},
                     "opts": {**state["opts"], names[i]: opt}}
            done = s + 1
            if done % c.log_every == 0 or done % p.steps == 0:
                loss = float(loss)
                if not np.isfinite(loss):
                    raise FloatingPointError(f"pretraining loss is {loss} at pretraining step {s} (layer "
                                             f"{names[i]}); lower pretrain.learning_rate")
                writer.write(done, "pretrain", {"loss": loss, "layer": i})
            if done % c.checkpoint_every == 0 or done == total:
                save()
    except KeyboardInterrupt:
        save()
        ckpt.close()
        raise KeyboardInterrupt(f"interrupted at pretraining step {int(state['step'])}; checkpoint saved in "
                                f"{ckpt.directory}. Rerun the same command to resume.") from None
    ckpt.close()
    out = {k: dict(v) if isinstance(v, dict) else v for k, v in params.items()}
    for n in names:
        out[n] = {**params[n], "kernel": state["aes"][n]["kernel"]}
        if "bias" in params[n]:
            out[n]["bias"] = state["aes"][n]["bias"]
    return out

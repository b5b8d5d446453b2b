"""Greedy layer-wise pretraining with tied autoencoders (seed 003), before supervised fine-tuning.

Layer i of the model's stack of convolutions and dense layers (``conv_0, conv_1, …, dense_0, dense_1, …``; the head
is not pretrained) is learned as a tied autoencoder of its own input in the network (computed with the layers before
it already pretrained, eval mode), ``Z = f(X W_i + b_i)``, ``X′ = Z W_iᵀ + b′_i`` — for a convolution,
``Z = f(conv(X, W_i) + b_i)`` and ``X′`` the transposed convolution of Z with the same kernel — (squared error
against the *clean* X), with masking noise
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

import flax.linen as nn
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


def layer_stack(params) -> list[str]:
    """The model's convolutions then dense layers (``conv_0, …, dense_0, …``) in order; the head is excluded."""
    def ordered(prefix):
        names = [n for n in params if re.fullmatch(prefix + r"_\d+", n)]
        return sorted(names, key=lambda n: int(n.split("_")[1]))

    return ordered("conv") + ordered("dense")


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
    names = layer_stack(params)
    if not names:
        raise ValueError(f"pretraining needs dense or conv layers to initialize (conv_0, …, dense_0, …), and model "
                         f"{config.model!r} has none (its layers: {sorted(params)}); use e.g. mlp, ioffe_mlp, "
                         "simple_cnn or cnn1d")
    widths = [int(params[n]["kernel"].shape[-1]) for n in names]
    if len(sizes) > len(widths) or tuple(widths[: len(sizes)]) != sizes:
        raise ValueError(f"pretrain.layers={list(sizes)} does not match the first layers of {config.model!r}, whose "
                         f"sizes are {widths} ({', '.join(names)}); use a prefix such as "
                         f"{widths[: max(1, len(sizes))]}")
    return names[: len(sizes)]


def _init_state(params, names, tx):
    aes = {}
    for n in names:
        k = params[n]["kernel"]
        aes[n] = {"kernel": k, "bias": params[n].get("bias", jnp.zeros(k.shape[-1], k.dtype)),
                  "bias_out": jnp.zeros(k.shape[-2], k.dtype)}
    return {"step": jnp.zeros((), jnp.int32), "aes": aes, "opts": {n: tx.init(aes[n]) for n in names}}


def _dims(nd: int):
    sp = "DHW"[-nd:]
    return (f"N{sp}C", f"{sp}IO", f"N{sp}C")


def encode(ae, x, act, strides=None):
    """``f(X W + b)``, or ``f(conv(X, W) + b)`` (SAME padding, the zoo's convention) for a conv kernel."""
    w = ae["kernel"]
    if w.ndim == 2:
        return act(x @ w + ae["bias"])
    nd = w.ndim - 2
    y = jax.lax.conv_general_dilated(x, w, strides or (1,) * nd, "SAME", dimension_numbers=_dims(nd))
    return act(y + ae["bias"])


def decode(ae, z, out_shape, strides=None):
    """The tied decoder ``Z Wᵀ + b′``: for a conv kernel the transposed convolution, cropped to the input shape."""
    w = ae["kernel"]
    if w.ndim == 2:
        return z @ w.T + ae["bias_out"]
    nd = w.ndim - 2
    y = jax.lax.conv_transpose(z, w, strides or (1,) * nd, "SAME", dimension_numbers=_dims(nd),
                               transpose_kernel=True)
    y = y[(slice(None),) + tuple(slice(0, s) for s in out_shape[1:-1])]
    return y + ae["bias_out"]


def _make_step(config, tx, act, strides):
    p = config.pretrain

    def loss_fn(ae, x, key):
        xc = ae_lib.masking_noise(x, p.corruption, key=key) if p.kind in ("denoising", "both") else x
        z = encode(ae, xc, act, strides)
        x_hat = decode(ae, z, x.shape, strides)
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


def _with_layers(params, aes):
    """``params`` with the autoencoders' kernels (and biases, where the layer has one) substituted."""
    out = dict(params)
    for n, ae in aes.items():
        out[n] = {**params[n], "kernel": ae["kernel"]}
        if "bias" in params[n]:
            out[n]["bias"] = ae["bias"]
    return out


def _layer_io_fn(model, name):
    """``(variables, x) -> (input, output)`` of layer ``name`` in the eval-mode network (jitted)."""

    def capture(variables, x):
        seen = {}

        def record(next_fun, args, kwargs, context):
            out = next_fun(*args, **kwargs)
            if context.method_name == "__call__" and context.module.name == name and name not in seen:
                seen[name] = (args[0], out)
            return out

        with nn.intercept_methods(record):
            model.apply(variables, x, train=False)
        return seen[name]

    return jax.jit(capture)


def pretrain(exp, variables, workdir: str, writer, primary: bool) -> dict:
    """Run (or resume) the pretraining stage and return the params with the pretrained layers filled in."""
    c = exp.config
    params = variables["params"]
    names = plan(c, params)
    if not names:
        return params
    p = c.pretrain
    tx = optax.adam(p.learning_rate)
    act = components.get_activation(c.activation)
    io = {n: _layer_io_fn(exp.eval_model, n) for n in names}
    x0 = data_lib.batch_at(exp.dataset.train, 0, c.batch_size, seed=c.seed + 3)["x"]
    strides = {}
    for n in names:  # a strided conv: its stride from the ratio of input to output size
        h_in, h_out = jax.eval_shape(io[n], variables, x0)
        strides[n] = tuple(a // b for a, b in zip(h_in.shape[1:-1], h_out.shape[1:-1])) or None
    steps_fn = {n: _make_step(c, tx, act, strides[n]) for n in names}
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
            # the input of layer i in the network, the layers before it already pretrained
            learned = {n: state["aes"][n] for n in names[:i]}
            h, _ = io[names[i]]({**variables, "params": _with_layers(params, learned)}, x)
            key = jax.random.fold_in(jax.random.key(c.seed + 4), s)
            ae, opt, loss = steps_fn[names[i]](state["aes"][names[i]], state["opts"][names[i]], h, key)
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
    return _with_layers(params, state["aes"])

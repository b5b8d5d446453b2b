"""Greedy layer-wise pretraining with tied autoencoders (Bengio et al. 2007; Vincent et al. 2008), before supervised
fine-tuning.

Layer i of the model's stack of convolutions and dense layers (``conv_0, conv_1, …, dense_0, dense_1, …``; the head
is not pretrained) is learned as a tied autoencoder of its own input in the network (computed with the layers before
it already pretrained, eval mode), ``Z = f(X W_i + b_i)``, ``X′ = Z W_iᵀ + b′_i`` — for a convolution,
``Z = f(conv(X, W_i) + b_i)`` and ``X′`` the transposed convolution of Z with the same kernel — (squared error
against the *clean* X), with masking noise
on X (``kind='denoising'``), the sparsity penalty ``β Σ_j KL(ρ‖ρ̂_j)`` on Z (``'sparse'``, needs a sigmoid
activation) or both. ``W_i``/``b_i`` then initialize the supervised network (a layer followed by batch norm has no
bias: BN's β takes its place), and fine-tuning runs as a normal training run.

Pretraining step ``p`` trains layer ``p // steps`` on the batch ``batch_at(train, p, seed=stream_seed(seed,
'pretrain_data'))`` with the masking-noise key ``fold_in(rng_stream(seed, 'pretrain_noise'), p)`` (see
:mod:`jaxnorm.lab.rng`); it runs on the same stage driver as the supervised stage (:mod:`jaxnorm.lab.train.stage`).
Its state
(every layer's autoencoder and optimizer state, a fixed structure) is checkpointed under ``WORKDIR/pretrain``, so a
run stopped mid-pretraining resumes there bit-identically.
"""

from __future__ import annotations

import contextlib
import os
import re

import flax.linen as nn
import flax.serialization
import jax
import jax.numpy as jnp
import optax

from jaxnorm import _checks, losses
from jaxnorm.lab import data as data_lib
from jaxnorm.lab import rng
from jaxnorm.lab.models import autoencoder as ae_lib
from jaxnorm.lab.models import components
from jaxnorm.lab.train import checkpoint as ckpt_lib
from jaxnorm.lab.train import metrics as metrics_lib
from jaxnorm.lab.train import stage as stage_lib

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
    _checks.check_choice("pretrain.kind", p.kind, KINDS)
    _checks.check_positive_int("config", "pretrain.steps (steps per layer)", p.steps)
    if p.kind in ("sparse", "both") and config.activation != "sigmoid":
        raise ValueError(
            f"pretrain.kind={p.kind!r} needs sigmoid codes (ρ̂_j in (0, 1)); set --config.activation="
            f"sigmoid or pretrain.kind='denoising' (activation is {config.activation!r})"
        )
    _checks.check_rho(p.rho, "pretrain.rho")
    _checks.check_beta(p.beta, "pretrain.beta")
    _checks.check_fraction(p.corruption, "pretrain.corruption")
    names = layer_stack(params)
    if not names:
        raise ValueError(
            f"pretraining needs dense or conv layers to initialize (conv_0, …, dense_0, …), and model "
            f"{config.model!r} has none (its layers: {sorted(params)}); use e.g. mlp, ioffe_mlp, "
            "simple_cnn or cnn1d"
        )
    widths = [int(params[n]["kernel"].shape[-1]) for n in names]
    if len(sizes) > len(widths) or tuple(widths[: len(sizes)]) != sizes:
        raise ValueError(
            f"pretrain.layers={list(sizes)} does not match the first layers of {config.model!r}, whose "
            f"sizes are {widths} ({', '.join(names)}); use a prefix such as "
            f"{widths[: max(1, len(sizes))]}"
        )
    return names[: len(sizes)]


def _init_state(params, names, tx):
    aes = {}
    for n in names:
        k = params[n]["kernel"]
        aes[n] = {
            "kernel": k,
            "bias": params[n].get("bias", jnp.zeros(k.shape[-1], k.dtype)),
            "bias_out": jnp.zeros(k.shape[-2], k.dtype),
        }
    return {"step": jnp.zeros((), jnp.int32), "aes": aes, "opts": {n: tx.init(aes[n]) for n in names}}


def _make_step(config, tx, act, strides):
    p = config.pretrain

    def loss_fn(ae, x, key):
        xc = losses.masking_noise(x, p.corruption, key=key) if p.kind in ("denoising", "both") else x
        z = ae_lib.tied_encode(ae, xc, act, strides)
        x_hat = ae_lib.tied_decode(ae, z, x.shape, strides)
        loss = losses.reconstruction_loss(x_hat, x, kind="squared")
        if p.kind in ("sparse", "both"):
            loss = loss + losses.sparsity_penalty(z, rho=p.rho, beta=p.beta)
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


def _stage(c, names, directory: str) -> stage_lib.Stage:
    p = c.pretrain
    return stage_lib.Stage(
        name="pretraining",
        step_label="pretraining step",
        split="pretrain",
        total=len(names) * p.steps,
        checkpoint_dir=directory,
        log_at=lambda done: done % c.log_every == 0 or done % p.steps == 0,
        checkpoint_at=lambda done: done % c.checkpoint_every == 0,
        summarize=lambda rows: {"loss": float(rows[-1]["loss"]), "layer": int(rows[-1]["layer"])},
        detail=lambda m: f" (layer {names[int(m['layer'])]})",
        hint="Lower --config.pretrain.learning_rate",
    )


def _checkpointer(workdir: str) -> ckpt_lib.Checkpointer:
    return ckpt_lib.Checkpointer(os.path.join(workdir, "pretrain"), 2)


def _batch(exp, step: int):
    c = exp.config
    return data_lib.batch_at(exp.dataset.train, step, c.batch_size, seed=rng.stream_seed(c.seed, "pretrain_data"))["x"]


def pretrain(exp, variables, workdir: str, writer, primary: bool, progress: bool = False) -> dict:
    """Run (or resume) the pretraining stage and return the params with the pretrained layers filled in."""
    c, params = exp.config, variables["params"]
    names = plan(c, params)
    if not names:
        return params
    tx, act = optax.adam(c.pretrain.learning_rate), components.get_activation(c.activation)
    io = {n: _layer_io_fn(exp.eval_model, n) for n in names}
    steps_fn = {}
    for n in names:  # a strided conv: its stride from the ratio of input to output size
        h_in, h_out = jax.eval_shape(io[n], variables, _batch(exp, 0))
        steps_fn[n] = _make_step(c, tx, act, tuple(a // b for a, b in zip(h_in.shape[1:-1], h_out.shape[1:-1])) or None)
    noise_key = rng.rng_stream(c.seed, "pretrain_noise")

    def step_fn(state, s):
        n = names[s // c.pretrain.steps]
        # the input of layer n in the network, the layers before it already pretrained
        learned = {m: state["aes"][m] for m in names[: names.index(n)]}
        h, _ = io[n]({**variables, "params": _with_layers(params, learned)}, _batch(exp, s))
        ae, opt, loss = steps_fn[n](state["aes"][n], state["opts"][n], h, jax.random.fold_in(noise_key, s))
        new = {"step": jnp.asarray(s + 1, jnp.int32), "aes": {**state["aes"], n: ae}, "opts": {**state["opts"], n: opt}}
        return new, {"loss": loss, "layer": names.index(n)}

    state = _init_state(params, names, tx)
    with contextlib.ExitStack() as stack:
        ckpt = stack.enter_context(contextlib.closing(_checkpointer(workdir)))
        if ckpt.steps():
            state = flax.serialization.from_state_dict(state, ckpt.restore(flax.serialization.to_state_dict(state)))
        stage = _stage(c, names, ckpt.directory)
        start = int(state["step"])
        writer.rewind_to(start, stage="pretrain")
        bar = stack.enter_context(contextlib.closing(metrics_lib.Progress(stage.total, start, enabled=progress)))

        def save(state, done):
            if primary:
                ckpt.save(done, flax.serialization.to_state_dict(state))

        state, _ = stage_lib.run_stage(stage, state, start, step_fn, save, writer=writer, progress=bar)
    return _with_layers(params, state["aes"])


def restore_autoencoders(exp, workdir: str) -> tuple[int, dict]:
    """``(step, {layer: {'kernel', 'bias', 'bias_out'}})``: the latest pretraining checkpoint of a run directory,
    restored through the project's checkpointer into the stage's state structure (for analysis and plots)."""
    example = data_lib.batch_at(exp.dataset.train, 0, exp.config.batch_size)["x"]
    variables = jax.eval_shape(lambda x: exp.eval_model.init(jax.random.key(0), x, train=False), example)
    names = plan(exp.config, variables["params"])
    if not names:
        raise ValueError(f"{workdir} is not a run with autoencoder pretraining (config.pretrain.layers is empty)")
    tx = optax.adam(exp.config.pretrain.learning_rate)
    target = flax.serialization.to_state_dict(
        jax.eval_shape(lambda params: _init_state(params, names, tx), variables["params"])
    )
    with contextlib.closing(_checkpointer(workdir)) as ckpt:
        if not ckpt.steps():
            raise FileNotFoundError(
                f"{ckpt.directory} has no pretraining checkpoint: was the run started with "
                "--config.pretrain.layers=...?"
            )
        state = ckpt.restore(target)
    return int(state["step"]), {n: state["aes"][n] for n in names}

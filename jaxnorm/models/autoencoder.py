"""Autoencoders (seed 003): tied, untied and convolutional, with the denoising and sparse variants' losses.

The tied-weight autoencoder of the lecture notes::

    Z  = f(W X + b)          (the code; W is `kernel`, stored in×hidden as a Flax Dense kernel, so Z = f(X W + b))
    X' = g(Wᵀ Z + b')        (the reconstruction; g = f in the notes, ``output_activation`` here)

is learnt by minimising ``reconstruction_loss(X', X)``. Variants, all in :func:`autoencoder_loss`:

* **denoising**: the input is corrupted by :func:`masking_noise` (a random fraction of the input components set to
  zero) and the reconstruction of the corrupted input is compared with the *clean* input;
* **sparse**: :func:`sparsity_penalty` ``β Σ_j KL(ρ ‖ ρ̂_j)``, ρ̂_j the average activation of hidden unit j over
  the batch (sigmoid codes, ρ ≈ 0.05);
* **weight decay**: :func:`weight_decay` ``(λ/2) Σ ‖W‖²`` over the kernels.

Models follow the zoo's conventions (:class:`~jaxnorm.models.base.ZooModel`): ``norm=``, ``norm_position=``,
``dropout=``/``dropout_rate=`` and ``activation=`` by name. The norm sits in the encoder (after the encoder's
weight layer, before/after its activation); dropout is applied to the code in training (the code returned is the
one *before* dropout, which is what the sparsity penalty measures). ``num_classes`` is unused. Channels-last::

    model = TiedAutoencoder(hidden=64, activation='sigmoid', output_activation='sigmoid')
    variables = model.init(jax.random.key(0), x, train=False)
    x_hat, code = model.apply(variables, x, train=False)
    code = model.apply(variables, x, method='encode')
    loss, aux = autoencoder_loss(model, variables, x, key=key, kind='cross_entropy', rho=0.05, beta=3.0,
                                 corruption=0.3, weight_decay=1e-4)
"""

from __future__ import annotations

import math
from typing import Any, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import optax

from jaxnorm.models.base import ZooModel, as_images
from jaxnorm.models.components import ACTIVATIONS, check_choice, get_activation

Array = jax.Array

__all__ = [
    "AUTOENCODERS",
    "ConvAutoencoder",
    "RECONSTRUCTION_LOSSES",
    "TiedAutoencoder",
    "UntiedAutoencoder",
    "autoencoder_loss",
    "kl_bernoulli",
    "masking_noise",
    "reconstruction_loss",
    "sparsity_penalty",
    "weight_decay",
]

RECONSTRUCTION_LOSSES = ("squared", "cross_entropy")


# --------------------------------------------------------------------------------------------------------------------
# checks


def _is_traced(v: Any) -> bool:
    return isinstance(v, jax.core.Tracer)


def _check_rho(rho: Any, where: str = "sparsity_penalty") -> None:
    if _is_traced(rho):
        return
    r = float(rho)
    if math.isnan(r) or not 0.0 < r < 1.0:
        raise ValueError(
            f"{where}: the target activation rho must be strictly inside (0, 1) (a Bernoulli mean; KL(rho||rho_hat) "
            f"is undefined or infinite otherwise), got rho={rho}; use a small value such as rho=0.05"
        )


def _check_beta(beta: Any, where: str = "sparsity_penalty") -> None:
    if _is_traced(beta):
        return
    b = float(beta)
    if math.isnan(b) or b < 0.0:
        raise ValueError(f"{where}: the sparsity weight beta must be >= 0, got beta={beta}; use e.g. beta=3.0, "
                         "or beta=0 for no sparsity penalty")


def _check_fraction(fraction: Any, where: str = "masking_noise") -> None:
    if _is_traced(fraction):
        return
    f = float(fraction)
    if math.isnan(f) or not 0.0 <= f < 1.0:
        raise ValueError(
            f"{where}: the masking fraction (share of input components set to zero) must be in [0, 1), got "
            f"fraction={fraction}; 0 is no corruption, values like 0.1-0.5 are usual (1 would zero every input)"
        )


def _check_lam(lam: Any, where: str = "weight_decay") -> None:
    if _is_traced(lam):
        return
    v = float(lam)
    if math.isnan(v) or v < 0.0:
        raise ValueError(f"{where}: the weight-decay coefficient must be >= 0, got {lam}; use e.g. 1e-4, or 0 for none")


# --------------------------------------------------------------------------------------------------------------------
# pure losses and noise


def masking_noise(x: Array, fraction: float, *, key: Array | None = None) -> Array:
    """The denoising corruption: each input component is set to zero independently with probability ``fraction``,
    the others are kept *unscaled* (unlike inverted dropout there is no ``1/(1 − fraction)`` rescale).

    The mask is ``jax.random.bernoulli(key, 1 − fraction, x.shape)``, the same draw as
    :func:`jaxnorm.dropout.dropout` with ``rate=fraction`` and the same key (same zero pattern), so the same key gives
    the same mask everywhere. ``fraction=0`` is the identity (no key needed); ``fraction`` must be in [0, 1)
    (a traced fraction is clipped to it).
    """
    _check_fraction(fraction)
    x = jnp.asarray(x)
    if not _is_traced(fraction) and float(fraction) == 0.0:
        return x
    if key is None:
        raise ValueError("masking_noise: a fraction > 0 needs a PRNG key: pass key=jax.random.key(seed) "
                         "(split it per step), or fraction=0 for no corruption")
    if _is_traced(fraction):
        keep = 1.0 - jnp.clip(jnp.asarray(fraction, jnp.float32), 0.0, 1.0)
    else:
        keep = jnp.asarray(1.0 - float(fraction), jnp.float32)
    mask = jax.random.bernoulli(key, keep, x.shape)
    return jnp.where(mask, x, jnp.zeros((), x.dtype))


def reconstruction_loss(x_hat: Array, x: Array, kind: str = "squared", *, from_logits: bool = False,
                        eps: float = 1e-7) -> Array:
    """Mean over examples (axis 0) of the sum over all units of the reconstruction error.

    * ``'squared'``: ``mean_i ‖x̂_i − x_i‖²`` (the notes' ``Σ_i ‖y³(X^i) − X^i‖²`` divided by m);
    * ``'cross_entropy'``: ``mean_i −Σ_k [x_ik log x̂_ik + (1 − x_ik) log(1 − x̂_ik)]`` for targets in [0, 1] and
      reconstructions in (0, 1) (sigmoid outputs). With ``from_logits=True`` ``x_hat`` is the pre-sigmoid output and
      the loss is computed stably (``optax.sigmoid_binary_cross_entropy``); otherwise ``x̂`` is clipped to
      ``[eps, 1 − eps]``. The minimum is the entropy of x, not 0, unless x is binary.
    """
    check_choice("reconstruction loss kind", kind, RECONSTRUCTION_LOSSES)
    x_hat = jnp.asarray(x_hat, jnp.float32)
    x = jnp.asarray(x, jnp.float32)
    if x_hat.shape != x.shape:
        raise ValueError(f"reconstruction_loss: reconstruction shape {tuple(x_hat.shape)} != input shape "
                         f"{tuple(x.shape)}")
    axes = tuple(range(1, x.ndim))
    if kind == "squared":
        pred = jax.nn.sigmoid(x_hat) if from_logits else x_hat
        per_example = jnp.sum(jnp.square(pred - x), axis=axes)
    elif from_logits:
        per_example = jnp.sum(optax.sigmoid_binary_cross_entropy(x_hat, x), axis=axes)
    else:
        p = jnp.clip(x_hat, eps, 1.0 - eps)
        per_example = -jnp.sum(x * jnp.log(p) + (1.0 - x) * jnp.log1p(-p), axis=axes)
    return jnp.mean(per_example)


def kl_bernoulli(rho: float, rho_hat: Array) -> Array:
    """``KL(ρ ‖ ρ̂) = ρ log(ρ/ρ̂) + (1 − ρ) log((1 − ρ)/(1 − ρ̂))``, elementwise."""
    return rho * (jnp.log(rho) - jnp.log(rho_hat)) + (1.0 - rho) * (jnp.log1p(-rho) - jnp.log1p(-rho_hat))


def sparsity_penalty(code: Array, rho: float = 0.05, beta: float = 3.0, *, eps: float = 1e-6) -> Array:
    """The sparse autoencoder's penalty ``β Σ_j KL(ρ ‖ ρ̂_j)``, ``ρ̂_j`` the average activation of hidden unit
    (channel) j: the mean of ``code[..., j]`` over the batch (and over spatial positions for N×…×C conv codes).

    Codes must lie in (0, 1) (sigmoid activations); ρ̂ is clipped to ``[eps, 1 − eps]``. The gradient with respect
    to the pre-activation ``a_ij`` of ``Z = σ(a)`` over m examples is the notes' sparsity δ term
    ``(1/m) β (−ρ/ρ̂_j + (1 − ρ)/(1 − ρ̂_j)) σ'(a_ij)``. ``rho`` must be in (0, 1) and ``beta`` >= 0.
    """
    _check_rho(rho)
    _check_beta(beta)
    code = jnp.asarray(code, jnp.float32)
    if code.ndim < 2:
        raise ValueError(f"sparsity_penalty: expected a batch of codes N×…×units, got shape {tuple(code.shape)}")
    rho_hat = jnp.clip(jnp.mean(code, axis=tuple(range(code.ndim - 1))), eps, 1.0 - eps)
    return beta * jnp.sum(kl_bernoulli(rho, rho_hat))


def weight_decay(params: Any, lam: float) -> Array:
    """``(λ/2) Σ ‖W‖²`` over the kernels (leaves of rank >= 2); biases and norm scales are not decayed."""
    _check_lam(lam)
    leaves = [jnp.sum(jnp.square(jnp.asarray(w, jnp.float32))) for w in jax.tree.leaves(params) if jnp.ndim(w) >= 2]
    total = sum(leaves) if leaves else jnp.zeros((), jnp.float32)
    return 0.5 * lam * total


_weight_decay_term = weight_decay  # autoencoder_loss's keyword argument shadows the name


# --------------------------------------------------------------------------------------------------------------------
# models


class _AutoencoderBase(ZooModel):
    """Shared fields: ``activation`` of the code (default sigmoid, the notes' f); ``output_activation`` of the
    reconstruction (``None`` = the same as ``activation``, the notes' X' = f(WᵀZ + b'); ``'sigmoid'`` for inputs in
    [0, 1] with the cross-entropy loss, ``'identity'`` for real inputs with the squared error)."""

    activation: str = "sigmoid"
    output_activation: str | None = None

    def _check_config(self) -> None:
        super()._check_config()
        where = type(self).__name__
        if self.num_classes != 10:
            raise ValueError(
                f"{where}: num_classes is unused by autoencoders but was set to {self.num_classes!r} (a positional "
                f"argument? the zoo's first field is num_classes); pass the code size by keyword, e.g. "
                f"{where}(hidden=...) or ConvAutoencoder(channels=...)"
            )
        if self.output_activation is not None:
            check_choice("output_activation", self.output_activation, tuple(ACTIVATIONS))
        if self.kernel_norm != "none" or self.kernel_norm_head:
            # the tied kernel serves as encoder and (transposed) decoder, and the layer-wise pretraining copies raw
            # kernels into the classifier: a reparametrized kernel has no single meaning there
            raise ValueError(f"{where}: kernel_norm={self.kernel_norm!r} (kernel_norm_head={self.kernel_norm_head}) "
                             "is not supported by the autoencoders; it applies to the classifiers (MLP, DeepLinear, "
                             "SimpleCNN, VGG, CNN1D, ResNet)")

    @property
    def out_activation_name(self) -> str:
        return self.activation if self.output_activation is None else self.output_activation

    def out_fn(self):
        return get_activation(self.out_activation_name)

    def _finish(self, logits: Array, code: Array, return_logits: bool):
        out = logits if return_logits else self.out_fn()(logits)
        return jnp.asarray(out, jnp.float32), code

    def encode(self, x, train: bool = False):
        """The code Z (before dropout); ``model.apply(variables, x, method='encode')``."""
        return self._forward(x, train, True)

    def __call__(self, x, train: bool = False, return_logits: bool = False):
        """``(reconstruction, code)``; ``return_logits=True`` gives the reconstruction before the output activation
        (for a stable cross-entropy)."""
        return self._forward(x, train, False, return_logits)


def _check_width(where: str, hidden: Any) -> None:
    if not isinstance(hidden, int) or isinstance(hidden, bool) or hidden <= 0:
        raise ValueError(f"{where}: hidden must be a positive int (the number of code units), got {hidden!r}")


class TiedAutoencoder(_AutoencoderBase):
    """Tied weights: ``Z = f(norm(X W + b))``, ``X' = g(Z Wᵀ + b')`` with one kernel ``W`` (in × hidden).

    Parameters: ``kernel`` (in, hidden), ``bias`` (hidden,) (absent when a bias-absorbing norm such as batch norm
    directly follows, see ``use_bias``), ``bias_out`` (in,); plus ``norm_0`` if a norm is chosen. Inputs of any rank
    are flattened per example; the reconstruction has the input's shape. With identity activations and the squared
    error the optimum spans the top-``hidden`` principal subspace of the (centered) data.
    """

    hidden: int = 64
    _dense = True

    def _check_config(self) -> None:
        super()._check_config()
        _check_width("TiedAutoencoder", self.hidden)

    @nn.compact
    def _forward(self, x, train: bool, encode_only: bool, return_logits: bool = False):
        norm, drop, act = self.norm_factory(), self.dropout_factory(), self.act_fn()
        x = jnp.asarray(x, self.dtype)
        h = x.reshape(x.shape[0], -1)
        d = h.shape[-1]
        kernel = self.param("kernel", self.init_fn(), (d, self.hidden), jnp.float32)
        a = h @ kernel.astype(self.dtype)
        if self.layer_bias(norm):
            a = a + self.param("bias", nn.initializers.zeros, (self.hidden,), jnp.float32).astype(self.dtype)
        code = self.norm_act(a, norm(self.hidden, dense=True, name="norm_0", where="TiedAutoencoder"), act, train)
        if encode_only:
            return code
        z = drop(dense=True, name="dropout_0", where="TiedAutoencoder")(code, train=train)
        bias_out = self.param("bias_out", nn.initializers.zeros, (d,), jnp.float32)
        logits = z @ kernel.T.astype(self.dtype) + bias_out.astype(self.dtype)
        return self._finish(logits.reshape(x.shape), code, return_logits)


class UntiedAutoencoder(_AutoencoderBase):
    """Separate encoder and decoder: ``Z = f(norm(encoder(X)))``, ``X' = g(decoder(Z))``.
    Modules: ``encoder`` (Dense in→hidden), ``norm_0``, ``dropout_0``, ``decoder`` (Dense hidden→in)."""

    hidden: int = 64
    _dense = True

    def _check_config(self) -> None:
        super()._check_config()
        _check_width("UntiedAutoencoder", self.hidden)

    @nn.compact
    def _forward(self, x, train: bool, encode_only: bool, return_logits: bool = False):
        norm, drop, act = self.norm_factory(), self.dropout_factory(), self.act_fn()
        x = jnp.asarray(x, self.dtype)
        h = x.reshape(x.shape[0], -1)
        d = h.shape[-1]
        a = self.dense(self.hidden, self.layer_bias(norm), "encoder")(h)
        code = self.norm_act(a, norm(self.hidden, dense=True, name="norm_0", where="UntiedAutoencoder"), act, train)
        if encode_only:
            return code
        z = drop(dense=True, name="dropout_0", where="UntiedAutoencoder")(code, train=train)
        logits = nn.Dense(d, kernel_init=nn.initializers.lecun_normal(), dtype=self.dtype, name="decoder")(z)
        return self._finish(logits.reshape(x.shape), code, return_logits)


class ConvAutoencoder(_AutoencoderBase):
    """Convolutional autoencoder for ``N×H×W×C`` (or ``N×L×C``; a missing channel axis is added) inputs.

    Encoder: for each ``channels[i]`` a ``kernel_size`` conv with stride 2 ('SAME') → norm/activation (→ dropout);
    the code is the last block's output (N×⌈H/2^k⌉×⌈W/2^k⌉×channels[-1]). Decoder: stride-2 transposed convs back
    through ``channels[-2::-1]`` (with the activation, no norm) and a last one to the input's channels, then the
    output activation; the result is cropped to the input's spatial size. Modules: ``conv_{i}``, ``norm_{i}``,
    ``dropout_{i}``, ``deconv_{i}``. ``spatial_dims`` = 2 (images) or 1 (sequences).
    """

    channels: Sequence[int] = (8, 16)
    kernel_size: int = 3
    spatial_dims: int = 2

    def _check_config(self) -> None:
        super()._check_config()
        if not self.channels or any(not isinstance(c, int) or c <= 0 for c in self.channels):
            raise ValueError(f"ConvAutoencoder: channels must be a non-empty sequence of positive ints, "
                             f"got {self.channels!r}")
        if self.spatial_dims not in (1, 2):
            raise ValueError(f"ConvAutoencoder: spatial_dims must be 1 (N×L×C) or 2 (N×H×W×C), "
                             f"got {self.spatial_dims!r}")

    @nn.compact
    def _forward(self, x, train: bool, encode_only: bool, return_logits: bool = False):
        norm, drop, act = self.norm_factory(), self.dropout_factory(), self.act_fn()
        nd = self.spatial_dims
        x = as_images(x, nd + 2, "ConvAutoencoder").astype(self.dtype)
        ks, st = (self.kernel_size,) * nd, (2,) * nd
        h = x
        code = None
        for i, c in enumerate(self.channels):
            h = nn.Conv(c, ks, strides=st, padding="SAME", use_bias=self.layer_bias(norm),
                        kernel_init=self.init_fn(), dtype=self.dtype, name=f"conv_{i}")(h)
            h = self.norm_act(h, norm(c, name=f"norm_{i}", where="ConvAutoencoder"), act, train)
            code = h
            if i < len(self.channels) - 1 or not encode_only:
                h = drop(name=f"dropout_{i}")(h, train=train)
        if encode_only:
            return code
        outs = list(self.channels[-2::-1]) + [x.shape[-1]]
        for i, c in enumerate(outs):
            h = nn.ConvTranspose(c, ks, strides=st, padding="SAME", kernel_init=self.init_fn(), dtype=self.dtype,
                                 name=f"deconv_{i}")(h)
            if i < len(outs) - 1:
                h = act(h)
        h = h[(slice(None),) + tuple(slice(0, s) for s in x.shape[1:-1])]
        return self._finish(h, code, return_logits)


AUTOENCODERS = {"tied": TiedAutoencoder, "untied": UntiedAutoencoder, "conv": ConvAutoencoder}


# --------------------------------------------------------------------------------------------------------------------
# the combined objective


def autoencoder_loss(
    model: _AutoencoderBase,
    params: Any,
    x: Array,
    *,
    key: Array | None = None,
    kind: str = "squared",
    rho: float = 0.05,
    beta: float = 0.0,
    corruption: float = 0.0,
    weight_decay: float = 0.0,
    train: bool = True,
):
    """The (sparse, denoising) autoencoder objective ``L = rec(model(x̃), x) + β Σ_j KL(ρ‖ρ̂_j) + (λ/2)Σ‖W‖²``.

    ``x̃ = masking_noise(x, corruption, key=k1)`` and the reconstruction of x̃ is compared with the *clean* x;
    ρ̂ is measured on the code of x̃ (the code the network computes in training). ``params``: the variables dict
    (``{'params': ..., 'batch_stats': ...}``) or the bare params. ``key`` is split into the corruption key and the
    ``'dropout'`` stream key (needed when ``corruption > 0`` or the model has dropout, with ``train=True``).
    With ``kind='cross_entropy'`` and a sigmoid output the loss is computed from the logits (stable).

    Returns ``(loss, aux)``; ``aux`` has ``reconstruction``, ``sparsity``, ``weight_decay`` (the three terms),
    ``rho_hat`` (mean code activation per unit) and ``batch_stats`` (updated running statistics, or None).
    Differentiate with ``jax.grad(lambda p: autoencoder_loss(model, p, x, key=k, ...)[0])``.
    """
    check_choice("reconstruction loss kind", kind, RECONSTRUCTION_LOSSES)
    _check_fraction(corruption, "autoencoder_loss")
    _check_rho(rho, "autoencoder_loss")
    _check_beta(beta, "autoencoder_loss")
    _check_lam(weight_decay, "autoencoder_loss")
    variables = dict(params) if isinstance(params, dict) and "params" in params else {"params": params}
    x = jnp.asarray(x)
    needs_key = train and (_is_traced(corruption) or float(corruption) > 0 or model.dropout_factory().active)
    if needs_key and key is None:
        raise ValueError("autoencoder_loss: corruption > 0 or dropout in training needs a PRNG key: pass "
                         "key=jax.random.key(seed) (split it per step)")
    if key is not None:
        k_noise, k_drop = jax.random.split(key)
    else:
        k_noise = k_drop = None
    x_in = masking_noise(x, corruption, key=k_noise) if train else x
    from_logits = kind == "cross_entropy" and model.out_activation_name == "sigmoid"
    kw = dict(train=train, return_logits=from_logits)
    if k_drop is not None:
        kw["rngs"] = {"dropout": k_drop}
    new_stats = None
    if train and "batch_stats" in variables:
        (x_hat, code), mut = model.apply(variables, x_in, mutable=["batch_stats"], **kw)
        new_stats = mut["batch_stats"]
    else:
        x_hat, code = model.apply(variables, x_in, **kw)
    rec = reconstruction_loss(x_hat, x.astype(jnp.float32).reshape(x_hat.shape), kind, from_logits=from_logits)
    zero = jnp.zeros((), jnp.float32)
    sparse = sparsity_penalty(code, rho, beta) if _is_traced(beta) or float(beta) > 0 else zero
    wd = _weight_decay_term(variables["params"], weight_decay)
    rho_hat = jnp.mean(jnp.asarray(code, jnp.float32), axis=tuple(range(code.ndim - 1)))
    aux = dict(reconstruction=rec, sparsity=sparse, weight_decay=wd, rho_hat=rho_hat, batch_stats=new_stats)
    return rec + sparse + wd, aux

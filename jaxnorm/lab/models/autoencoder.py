"""Autoencoders: tied, untied and convolutional, with the denoising and sparse variants' losses.

The tied-weight autoencoder (Vincent et al. 2008, "Extracting and composing robust features with denoising
autoencoders"; the building block of Bengio et al. 2007's greedy layer-wise pretraining)::

    Z  = f(W X + b)          (the code; W is `kernel`, stored in×hidden as a Flax Dense kernel, so Z = f(X W + b))
    X' = g(Wᵀ Z + b')        (the reconstruction; g = f in Ng's "Sparse autoencoder", ``output_activation`` here)

is learnt by minimising ``reconstruction_loss(X', X)``. Its kernel math is the pure pair :func:`tied_encode` /
:func:`tied_decode` (dense or convolutional kernels). Variants, all in :func:`autoencoder_loss`:

* **denoising**: the input is corrupted by :func:`masking_noise` (a random fraction of the input components set to
  zero) and the reconstruction of the corrupted input is compared with the *clean* input;
* **sparse** (Ng, "Sparse autoencoder", CS294A lecture notes, 2011): :func:`sparsity_penalty` ``β Σ_j KL(ρ ‖ ρ̂_j)``,
  ρ̂_j the average activation of hidden unit j over the batch (sigmoid codes, ρ ≈ 0.05);
* **weight decay**: :func:`weight_decay` ``(λ/2) Σ ‖W‖²`` over the kernels.

The losses live in :mod:`jaxnorm.losses` and are re-exported here. Models follow the zoo's conventions
(:class:`~jaxnorm.lab.models.base.ZooModel`): ``norm=``, ``norm_position=``, ``dropout=``/``dropout_rate=`` and
``activation=`` by name. The norm sits in the encoder (after the encoder's weight layer, before/after its
activation); dropout is applied to the code in training (the code returned is the one *before* dropout, which is
what the sparsity penalty measures). ``num_classes`` is unused. Channels-last::

    model = TiedAutoencoder(hidden=64, activation='sigmoid', output_activation='sigmoid')
    variables = model.init(jax.random.key(0), x, train=False)
    x_hat, code = model.apply(variables, x, train=False)
    code = model.apply(variables, x, method='encode')
    loss, aux = autoencoder_loss(model, variables, x, key=key, kind='cross_entropy', rho=0.05, beta=3.0,
                                 corruption=0.3, weight_decay=1e-4)
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from jaxnorm import _checks, losses
from jaxnorm.lab.models.base import ZooModel, as_images
from jaxnorm.lab.models.components import ACTIVATIONS, get_activation
from jaxnorm.losses import (
    RECONSTRUCTION_LOSSES,
    kl_bernoulli,
    masking_noise,
    reconstruction_loss,
    sparsity_penalty,
    weight_decay,
)

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
    "tied_decode",
    "tied_encode",
    "tied_preactivation",
    "weight_decay",
]

# --------------------------------------------------------------------------------------------------------------------
# the tied encoder and decoder (pure functions of params = {'kernel', 'bias', 'bias_out'})


def _dims(nd: int):
    sp = "DHW"[-nd:]
    return (f"N{sp}C", f"{sp}IO", f"N{sp}C")


def _cast(a: Array, dtype: Any) -> Array:
    return a if dtype is None else a.astype(dtype)


def tied_preactivation(params: Any, x: Array, strides: Sequence[int] | None = None, *, dtype: Any = None) -> Array:
    """``X W + b`` for a 2-D kernel, ``conv(X, W) + b`` ('SAME' padding, the zoo's convention) for a conv kernel
    ``spatial…×in×out``; no ``'bias'`` entry: no bias. ``dtype``: W and b are cast to it first (None: as they are)."""
    w = _cast(params["kernel"], dtype)
    if w.ndim == 2:
        y = x @ w
    else:
        nd = w.ndim - 2
        y = jax.lax.conv_general_dilated(x, w, strides or (1,) * nd, "SAME", dimension_numbers=_dims(nd))
    return y + _cast(params["bias"], dtype) if "bias" in params else y


def tied_encode(
    params: Any,
    x: Array,
    activation: Callable[[Array], Array],
    strides: Sequence[int] | None = None,
    *,
    dtype: Any = None,
) -> Array:
    """The tied encoder ``Z = f(X W + b)``, or ``f(conv(X, W) + b)`` for a conv kernel; ``activation`` is f."""
    return activation(tied_preactivation(params, x, strides, dtype=dtype))


def tied_decode(
    params: Any, z: Array, out_shape: Sequence[int], strides: Sequence[int] | None = None, *, dtype: Any = None
) -> Array:
    """The tied decoder ``X′ = Z Wᵀ + b′`` (``params['bias_out']`` is b′); for a conv kernel the transposed
    convolution of Z with the same kernel (``transpose_kernel=True``), cropped to ``out_shape``'s spatial size.
    ``dtype``: Wᵀ and b′ are cast to it first (None: as they are)."""
    w = params["kernel"]
    if w.ndim == 2:
        return z @ _cast(w.T, dtype) + _cast(params["bias_out"], dtype)
    nd = w.ndim - 2
    y = jax.lax.conv_transpose(
        z, _cast(w, dtype), strides or (1,) * nd, "SAME", dimension_numbers=_dims(nd), transpose_kernel=True
    )
    y = y[(slice(None),) + tuple(slice(0, s) for s in out_shape[1:-1])]
    return y + _cast(params["bias_out"], dtype)


# --------------------------------------------------------------------------------------------------------------------
# models


class _AutoencoderBase(ZooModel):
    """Shared fields: ``activation`` of the code (default sigmoid, Ng's f); ``output_activation`` of the
    reconstruction (``None`` = the same as ``activation``, Ng's X' = f(WᵀZ + b'); ``'sigmoid'`` for inputs in
    [0, 1] with the cross-entropy loss, ``'identity'`` for real inputs with the squared error)."""

    activation: str = "sigmoid"
    output_activation: str | None = None

    def _check_config(self) -> None:
        super()._check_config()
        where = type(self).__name__
        if self.output_activation is not None:
            _checks.check_choice("output_activation", self.output_activation, tuple(ACTIVATIONS))
        if self.kernel_norm != "none" or self.kernel_norm_head:
            # the tied kernel serves as encoder and (transposed) decoder, and the layer-wise pretraining copies raw
            # kernels into the classifier: a reparametrized kernel has no single meaning there
            raise ValueError(
                f"{where}: kernel_norm={self.kernel_norm!r} (kernel_norm_head={self.kernel_norm_head}) "
                "is not supported by the autoencoders; it applies to the classifiers (MLP, DeepLinear, "
                "SimpleCNN, VGG, CNN1D, ResNet)"
            )

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


class _DenseAutoencoder(_AutoencoderBase):
    """A code of ``hidden`` units from the flattened input."""

    hidden: int = 64
    _dense = True

    def _check_config(self) -> None:
        super()._check_config()
        _checks.check_positive_int(type(self).__name__, "hidden (the number of code units)", self.hidden)


class TiedAutoencoder(_DenseAutoencoder):
    """Tied weights: ``Z = f(norm(X W + b))``, ``X' = g(Z Wᵀ + b')`` with one kernel ``W`` (in × hidden), computed by
    :func:`tied_preactivation` and :func:`tied_decode` (Vincent et al. 2008).

    Parameters: ``kernel`` (in, hidden), ``bias`` (hidden,) (absent when a bias-absorbing norm such as batch norm
    directly follows, see ``use_bias``), ``bias_out`` (in,); plus ``norm_0`` if a norm is chosen. Inputs of any rank
    are flattened per example; the reconstruction has the input's shape. With identity activations and the squared
    error the optimum spans the top-``hidden`` principal subspace of the (centered) data.
    """

    @nn.compact
    def _forward(self, x, train: bool, encode_only: bool, return_logits: bool = False):
        norm, drop, act = self.norm_factory(), self.dropout_factory(), self.act_fn()
        x = jnp.asarray(x, self.dtype)
        h = x.reshape(x.shape[0], -1)
        d = h.shape[-1]
        tied = {"kernel": self.param("kernel", self.init_fn(), (d, self.hidden), jnp.float32)}
        if self.layer_bias(norm):
            tied["bias"] = self.param("bias", nn.initializers.zeros, (self.hidden,), jnp.float32)
        a = tied_preactivation(tied, h, dtype=self.dtype)
        code = self.norm_act(a, norm(self.hidden, dense=True, name="norm_0", where="TiedAutoencoder"), act, train)
        if encode_only:
            return code
        z = drop(dense=True, name="dropout_0", where="TiedAutoencoder")(code, train=train)
        tied["bias_out"] = self.param("bias_out", nn.initializers.zeros, (d,), jnp.float32)
        logits = tied_decode(tied, z, h.shape, dtype=self.dtype)
        return self._finish(logits.reshape(x.shape), code, return_logits)


class UntiedAutoencoder(_DenseAutoencoder):
    """Separate encoder and decoder: ``Z = f(norm(encoder(X)))``, ``X' = g(decoder(Z))``.
    Modules: ``encoder`` (Dense in→hidden), ``norm_0``, ``dropout_0``, ``decoder`` (Dense hidden→in)."""

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
            raise ValueError(
                f"ConvAutoencoder: channels must be a non-empty sequence of positive ints, got {self.channels!r}"
            )
        if self.spatial_dims not in (1, 2):
            raise ValueError(
                f"ConvAutoencoder: spatial_dims must be 1 (N×L×C) or 2 (N×H×W×C), got {self.spatial_dims!r}"
            )

    @nn.compact
    def _forward(self, x, train: bool, encode_only: bool, return_logits: bool = False):
        norm, drop, act = self.norm_factory(), self.dropout_factory(), self.act_fn()
        nd = self.spatial_dims
        x = as_images(x, nd + 2, "ConvAutoencoder").astype(self.dtype)
        ks, st = (self.kernel_size,) * nd, (2,) * nd
        h = x
        code = None
        for i, c in enumerate(self.channels):
            h = nn.Conv(
                c,
                ks,
                strides=st,
                padding="SAME",
                use_bias=self.layer_bias(norm),
                kernel_init=self.init_fn(),
                dtype=self.dtype,
                name=f"conv_{i}",
            )(h)
            h = self.norm_act(h, norm(c, name=f"norm_{i}", where="ConvAutoencoder"), act, train)
            code = h
            if i < len(self.channels) - 1 or not encode_only:
                h = drop(name=f"dropout_{i}")(h, train=train)
        if encode_only:
            return code
        outs = list(self.channels[-2::-1]) + [x.shape[-1]]
        for i, c in enumerate(outs):
            h = nn.ConvTranspose(
                c, ks, strides=st, padding="SAME", kernel_init=self.init_fn(), dtype=self.dtype, name=f"deconv_{i}"
            )(h)
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
    _checks.check_choice("reconstruction loss kind", kind, RECONSTRUCTION_LOSSES)
    _checks.check_fraction(corruption, "autoencoder_loss")
    _checks.check_rho(rho, "autoencoder_loss")
    _checks.check_beta(beta, "autoencoder_loss")
    _checks.check_weight_decay(weight_decay, "autoencoder_loss")
    variables = dict(params) if isinstance(params, dict) and "params" in params else {"params": params}
    x = jnp.asarray(x)
    needs_key = train and (_checks.is_traced(corruption) or float(corruption) > 0 or model.dropout_factory().active)
    if needs_key and key is None:
        raise ValueError(
            "autoencoder_loss: corruption > 0 or dropout in training needs a PRNG key: pass "
            "key=jax.random.key(seed) (split it per step)"
        )
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
    sparse = sparsity_penalty(code, rho, beta) if _checks.is_traced(beta) or float(beta) > 0 else zero
    wd = losses.weight_decay(variables["params"], weight_decay)
    rho_hat = jnp.mean(jnp.asarray(code, jnp.float32), axis=tuple(range(code.ndim - 1)))
    aux = dict(reconstruction=rec, sparsity=sparse, weight_decay=wd, rho_hat=rho_hat, batch_stats=new_stats)
    return rec + sparse + wd, aux

"""The losses of the project, in one place: the supervised step, the probes, layer-wise pretraining and the
autoencoders all call these.

* :func:`per_example_loss`: softmax cross-entropy with integer labels, or the squared error ``‖f(x) − y‖²``
  (Santurkar et al. 2018's deep-linear-network loss); :func:`correct_count` for accuracy.
* The (denoising, sparse) autoencoder objective's terms (Vincent et al. 2008; Ng's sparse-autoencoder notes):
  :func:`reconstruction_loss`, :func:`masking_noise`, :func:`kl_bernoulli`, :func:`sparsity_penalty`,
  :func:`weight_decay`.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import optax

from jaxnorm import _checks

Array = jax.Array

#: The supervised losses by name.
LOSSES = ("cross_entropy", "mse")
RECONSTRUCTION_LOSSES = ("squared", "cross_entropy")


def per_example_loss(outputs: Array, y: Array, kind: str = "cross_entropy") -> Array:
    """The loss of each example (axis 0), in float32.

    * ``'cross_entropy'``: ``−log softmax(outputs)[y]`` for integer labels ``y`` (N,) and logits (N, K);
    * ``'mse'``: ``‖f(x) − y‖²``, the squared error summed over every non-batch axis.
    """
    _checks.check_choice("loss", kind, LOSSES)
    if kind == "cross_entropy":
        return optax.softmax_cross_entropy_with_integer_labels(outputs, y).astype(jnp.float32)
    d = (outputs - y).astype(jnp.float32)
    return jnp.sum(jnp.square(d.reshape(d.shape[0], -1)), axis=-1)


def correct_count(outputs: Array, y: Array, mask: Array | None = None) -> Array:
    """The number of examples (of those where ``mask`` is True) whose arg-max over the last axis equals ``y``."""
    hit = jnp.argmax(outputs, -1) == y
    return jnp.sum(hit if mask is None else hit & mask)


def masking_noise(x: Array, fraction: float, *, key: Array | None = None) -> Array:
    """The denoising corruption: each input component is set to zero independently with probability ``fraction``,
    the others are kept *unscaled* (unlike inverted dropout there is no ``1/(1 − fraction)`` rescale).

    The mask is ``jax.random.bernoulli(key, 1 − fraction, x.shape)``, the same draw as
    :func:`jaxnorm.dropouts.dropout` with ``rate=fraction`` and the same key (same zero pattern), so the same key gives
    the same mask everywhere. ``fraction=0`` is the identity (no key needed); ``fraction`` must be in [0, 1)
    (a traced fraction is clipped to it).
    """
    _checks.check_fraction(fraction)
    x = jnp.asarray(x)
    if not _checks.is_traced(fraction) and float(fraction) == 0.0:
        return x
    if key is None:
        raise ValueError("masking_noise: a fraction > 0 needs a PRNG key: pass key=jax.random.key(seed) "
                         "(split it per step), or fraction=0 for no corruption")
    if _checks.is_traced(fraction):
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
    _checks.check_choice("reconstruction loss kind", kind, RECONSTRUCTION_LOSSES)
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
    _checks.check_rho(rho)
    _checks.check_beta(beta)
    code = jnp.asarray(code, jnp.float32)
    if code.ndim < 2:
        raise ValueError(f"sparsity_penalty: expected a batch of codes N×…×units, got shape {tuple(code.shape)}")
    rho_hat = jnp.clip(jnp.mean(code, axis=tuple(range(code.ndim - 1))), eps, 1.0 - eps)
    return beta * jnp.sum(kl_bernoulli(rho, rho_hat))


def weight_decay(params: Any, lam: float) -> Array:
    """``(λ/2) Σ ‖W‖²`` over the kernels (leaves of rank >= 2); biases and norm scales are not decayed."""
    _checks.check_weight_decay(lam)
    leaves = [jnp.sum(jnp.square(jnp.asarray(w, jnp.float32))) for w in jax.tree.leaves(params) if jnp.ndim(w) >= 2]
    total = sum(leaves) if leaves else jnp.zeros((), jnp.float32)
    return 0.5 * lam * total

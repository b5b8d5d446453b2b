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
    """The loss of each example (axis 0), computed in float32 whatever the outputs' dtype.

    * ``'cross_entropy'``: ``−log softmax(outputs)[y]`` for integer labels ``y`` (N,) and logits (N, K);
    * ``'mse'``: ``‖f(x) − y‖²``, the squared error summed over every non-batch axis.

    Reduces over: the class axis (cross-entropy) or every non-batch axis (``'mse'``); never over the batch.

    Reference: Santurkar, Tsipras, Ilyas & Madry (2018), How Does Batch Normalization Help Optimization? (the
    squared loss of their deep linear networks); the cross-entropy is the usual softmax log-loss.

    Args:
        outputs: logits (N, K), or predictions of ``y``'s shape for ``'mse'``.
        y: integer labels (N,), or targets for ``'mse'``.
        kind: ``'cross_entropy'`` or ``'mse'`` (:data:`LOSSES`).

    Returns:
        The float32 loss per example, shape (N,).

    Raises:
        ValueError: if ``kind`` is not one of :data:`LOSSES`.

    Examples:
        >>> import jax.numpy as jnp
        >>> from jaxnorm.losses import per_example_loss
        >>> print([round(v, 4) for v in per_example_loss(jnp.zeros((2, 4)), jnp.array([0, 3])).tolist()])
        [1.3863, 1.3863]
        >>> print(per_example_loss(jnp.array([[1.0, 2.0]]), jnp.array([[0.0, 0.0]]), "mse").tolist())
        [5.0]
    """
    _checks.check_choice("loss", kind, LOSSES)
    outputs = jnp.asarray(outputs).astype(jnp.float32)  # half-precision logits: the softmax and the sum in float32
    if kind == "cross_entropy":
        return optax.softmax_cross_entropy_with_integer_labels(outputs, y)
    d = outputs - jnp.asarray(y).astype(jnp.float32)
    return jnp.sum(jnp.square(d.reshape(d.shape[0], -1)), axis=-1)


def correct_count(outputs: Array, y: Array, mask: Array | None = None) -> Array:
    """The number of examples (of those where ``mask`` is True) whose arg-max over the last axis equals ``y``.

    Formula: ``Σ_i mask_i·[argmax_k outputs_ik = y_i]``.

    Reduces over: the last axis (arg-max), then every example.

    Reference: none beyond the usual top-1 accuracy (count divided by the number of examples).

    Args:
        outputs: scores (N, K).
        y: integer labels (N,).
        mask: True for the examples that count, shape (N,), or None for all.

    Returns:
        The count, an integer scalar.

    Examples:
        >>> import jax.numpy as jnp
        >>> from jaxnorm.losses import correct_count
        >>> out = jnp.array([[0.1, 0.9], [0.8, 0.2], [0.3, 0.7]])
        >>> print(int(correct_count(out, jnp.array([1, 1, 1]))), int(correct_count(out, jnp.array([1, 0, 1]),
        ...       mask=jnp.array([True, True, False]))))
        2 2
    """
    hit = jnp.argmax(outputs, -1) == y
    return jnp.sum(hit if mask is None else hit & mask)


def masking_noise(x: Array, fraction: float, *, key: Array | None = None) -> Array:
    """The denoising corruption: each input component is set to zero independently with probability ``fraction``,
    the others are kept *unscaled* (unlike inverted dropout there is no ``1/(1 − fraction)`` rescale).

    The mask is ``jax.random.bernoulli(key, 1 − fraction, x.shape)``, the same draw as
    :func:`jaxnorm.dropouts.dropout` with ``rate=fraction`` and the same key (same zero pattern), so the same key gives
    the same mask everywhere. ``fraction=0`` is the identity (no key needed); ``fraction`` must be in [0, 1)
    (a traced fraction is clipped to it).

    Formula: ``x̃ = ξ ⊙ x`` with ``ξ ~ Bernoulli(1 − fraction)`` per component.

    Reference: Vincent, Larochelle, Bengio & Manzagol (2008), Extracting and Composing Robust Features with
    Denoising Autoencoders.

    Args:
        x: the input.
        fraction: the probability of zeroing a component, in [0, 1).
        key: a PRNG key, needed for ``fraction > 0``.

    Returns:
        ``x̃`` with ``x``'s shape and dtype.

    Raises:
        ValueError: if ``fraction`` is outside [0, 1), or ``key`` is missing for ``fraction > 0``.

    Examples:
        >>> import jax, jax.numpy as jnp
        >>> from jaxnorm.losses import masking_noise
        >>> x = masking_noise(jnp.ones(1000), 0.25, key=jax.random.key(0))
        >>> print(sorted(set(x.tolist())), bool(abs(float(x.mean()) - 0.75) < 0.05))
        [0.0, 1.0] True
    """
    _checks.check_fraction(fraction)
    x = jnp.asarray(x)
    if not _checks.is_traced(fraction) and float(fraction) == 0.0:
        return x
    if key is None:
        raise ValueError(
            "masking_noise: a fraction > 0 needs a PRNG key: pass key=jax.random.key(seed) "
            "(split it per step), or fraction=0 for no corruption"
        )
    if _checks.is_traced(fraction):
        keep = 1.0 - jnp.clip(jnp.asarray(fraction, jnp.float32), 0.0, 1.0)
    else:
        keep = jnp.asarray(1.0 - float(fraction), jnp.float32)
    mask = jax.random.bernoulli(key, keep, x.shape)
    return jnp.where(mask, x, jnp.zeros((), x.dtype))


def reconstruction_loss(
    x_hat: Array, x: Array, kind: str = "squared", *, from_logits: bool = False, eps: float = 1e-7
) -> Array:
    """Mean over examples (axis 0) of the sum over all units of the reconstruction error.

    * ``'squared'``: ``mean_i ‖x̂_i − x_i‖²`` (the notes' ``Σ_i ‖y³(X^i) − X^i‖²`` divided by m);
    * ``'cross_entropy'``: ``mean_i −Σ_k [x_ik log x̂_ik + (1 − x_ik) log(1 − x̂_ik)]`` for targets in [0, 1] and
      reconstructions in (0, 1) (sigmoid outputs). With ``from_logits=True`` ``x_hat`` is the pre-sigmoid output and
      the loss is computed stably (``optax.sigmoid_binary_cross_entropy``); otherwise ``x̂`` is clipped to
      ``[eps, 1 − eps]``. The minimum is the entropy of x, not 0, unless x is binary.

    Reduces over: every non-batch axis (sum), then the batch axis 0 (mean).

    Reference: Vincent, Larochelle, Bengio & Manzagol (2008), Extracting and Composing Robust Features with
    Denoising Autoencoders (the squared and cross-entropy reconstruction errors); Ng, Sparse autoencoder (CS294A
    lecture notes, 2011).

    Args:
        x_hat: the reconstruction (or its logits with ``from_logits=True``), ``x``'s shape.
        x: the input (the target).
        kind: ``'squared'`` or ``'cross_entropy'``.
        from_logits: ``x_hat`` is the pre-sigmoid output.
        eps: the clip of ``x̂`` for the cross-entropy without logits.

    Returns:
        The float32 scalar loss.

    Raises:
        ValueError: if ``kind`` is unknown or the shapes differ.

    Examples:
        >>> import jax.numpy as jnp
        >>> from jaxnorm.losses import reconstruction_loss
        >>> x = jnp.array([[1.0, 0.0], [0.0, 1.0]])
        >>> print(float(reconstruction_loss(x + 0.5, x)))
        0.5
        >>> print(round(float(reconstruction_loss(jnp.full((2, 2), 0.5), x, "cross_entropy")), 4))
        1.3863
    """
    _checks.check_choice("reconstruction loss kind", kind, RECONSTRUCTION_LOSSES)
    x_hat = jnp.asarray(x_hat, jnp.float32)
    x = jnp.asarray(x, jnp.float32)
    if x_hat.shape != x.shape:
        raise ValueError(
            f"reconstruction_loss: reconstruction shape {tuple(x_hat.shape)} != input shape {tuple(x.shape)}"
        )
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
    """The Kullback–Leibler divergence between Bernoulli distributions of means ρ and ρ̂, elementwise.

    Formula: ``KL(ρ ‖ ρ̂) = ρ log(ρ/ρ̂) + (1 − ρ) log((1 − ρ)/(1 − ρ̂))``; nothing is reduced.

    Reference: Ng, Sparse autoencoder (CS294A lecture notes, 2011).

    Args:
        rho: the target mean ρ in (0, 1).
        rho_hat: the observed means ρ̂ in (0, 1), any shape.

    Returns:
        ``KL(ρ ‖ ρ̂)`` with ``rho_hat``'s shape.

    Examples:
        >>> import jax.numpy as jnp
        >>> from jaxnorm.losses import kl_bernoulli
        >>> print([round(v, 4) for v in kl_bernoulli(0.5, jnp.array([0.5, 0.25])).tolist()])
        [0.0, 0.1438]
    """
    return rho * (jnp.log(rho) - jnp.log(rho_hat)) + (1.0 - rho) * (jnp.log1p(-rho) - jnp.log1p(-rho_hat))


def sparsity_penalty(code: Array, rho: float = 0.05, beta: float = 3.0, *, eps: float = 1e-6) -> Array:
    """The sparse autoencoder's penalty ``β Σ_j KL(ρ ‖ ρ̂_j)``, ``ρ̂_j`` the average activation of hidden unit
    (channel) j: the mean of ``code[..., j]`` over the batch (and over spatial positions for N×…×C conv codes).

    Codes must lie in (0, 1) (sigmoid activations); ρ̂ is clipped to ``[eps, 1 − eps]``. The gradient with respect
    to the pre-activation ``a_ij`` of ``Z = σ(a)`` over m examples is the notes' sparsity δ term
    ``(1/m) β (−ρ/ρ̂_j + (1 − ρ)/(1 − ρ̂_j)) σ'(a_ij)``. ``rho`` must be in (0, 1) and ``beta`` >= 0.

    Reduces over: every axis but the last for ρ̂ (N, and H, W for conv codes), then the units (sum).

    Reference: Ng, Sparse autoencoder (CS294A lecture notes, 2011).

    Args:
        code: the hidden activations ``N×…×units`` in (0, 1).
        rho: the target average activation ρ in (0, 1).
        beta: the weight β ≥ 0.
        eps: the clip of ρ̂.

    Returns:
        The float32 scalar penalty.

    Raises:
        ValueError: if ``rho`` is outside (0, 1), ``beta`` < 0, or ``code`` has rank < 2.

    Examples:
        >>> import jax.numpy as jnp
        >>> from jaxnorm.losses import sparsity_penalty
        >>> print(float(sparsity_penalty(jnp.full((4, 3), 0.05), rho=0.05, beta=3.0)))
        0.0
        >>> print(round(float(sparsity_penalty(jnp.full((4, 1), 0.5), rho=0.25, beta=1.0)), 4))  # KL(0.25 ‖ 0.5)
        0.1308
    """
    _checks.check_rho(rho)
    _checks.check_beta(beta)
    code = jnp.asarray(code, jnp.float32)
    if code.ndim < 2:
        raise ValueError(f"sparsity_penalty: expected a batch of codes N×…×units, got shape {tuple(code.shape)}")
    rho_hat = jnp.clip(jnp.mean(code, axis=tuple(range(code.ndim - 1))), eps, 1.0 - eps)
    return beta * jnp.sum(kl_bernoulli(rho, rho_hat))


def weight_decay(params: Any, lam: float) -> Array:
    """The L2 weight-decay term ``(λ/2) Σ ‖W‖²`` over the kernels (leaves of rank >= 2).

    Biases and norm scales (leaves of rank < 2) are not decayed. Reduces over: every entry of every kernel.

    Reference: Krogh & Hertz (1992), A Simple Weight Decay Can Improve Generalization.

    Args:
        params: a pytree of parameters.
        lam: the coefficient λ ≥ 0.

    Returns:
        The float32 scalar term.

    Raises:
        ValueError: if ``lam`` < 0.

    Examples:
        >>> import jax.numpy as jnp
        >>> from jaxnorm.losses import weight_decay
        >>> print(round(float(weight_decay({"kernel": jnp.full((2, 2), 2.0), "bias": jnp.ones(2)}, 0.1)), 4))
        0.8
    """
    _checks.check_weight_decay(lam)
    leaves = [jnp.sum(jnp.square(jnp.asarray(w, jnp.float32))) for w in jax.tree.leaves(params) if jnp.ndim(w) >= 2]
    total = sum(leaves) if leaves else jnp.zeros((), jnp.float32)
    return jnp.asarray(0.5 * lam * total)

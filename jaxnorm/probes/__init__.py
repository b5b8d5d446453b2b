"""Optimization-landscape probes: Santurkar et al. (2018)'s loss, gradient and β-smoothness probes, internal
covariate shift (their Definition 2.1), Hessian curvature (top eigenvalues, trace, spectral density, per layer) and
loss-landscape slices (Li et al. 2018; Goodfellow et al. 2015).

Every probe takes ``loss_fn(params, batch) -> scalar`` (pure), ``params`` and ``batch``, and returns arrays. The
probes are jit-compiled (cached per ``loss_fn`` object and shapes), never modify their inputs, and run per device
under ``pmap``/``shard_map`` with ``axis_name=``. The curvature probes and :func:`santurkar_probe` also take a data
set, a list of batches or ``dataset(batches)``, and average over it. :func:`model_loss_fn` builds ``loss_fn`` for a
Flax linen model (train mode: batch statistics, the running ones left unchanged).

Example: a small MLP with batch norm, two batches of 16 examples.

>>> import jax
>>> import flax.linen as nn
>>> import jaxnorm.nn
>>> import jaxnorm.probes as jp
>>> class MLP(nn.Module):
...     @nn.compact
...     def __call__(self, x, train=True):
...         h = nn.Dense(8, name='dense_0')(x)
...         h = jaxnorm.nn.BatchNorm(name='norm_0')(h, train=train)
...         return nn.Dense(3, name='head')(nn.relu(h))
>>> x = jax.random.normal(jax.random.key(0), (2, 16, 4))
>>> y = jax.random.randint(jax.random.key(1), (2, 16), 0, 3)
>>> batches = [{'x': x[i], 'y': y[i]} for i in range(2)]
>>> model = MLP()
>>> variables = model.init(jax.random.key(2), x[0], train=False)
>>> params = variables['params']
>>> loss_fn = jp.model_loss_fn(model, variables['batch_stats'])
>>> s = jp.santurkar_probe(loss_fn, params, batches[0], etas=[0.05, 0.1, 0.2])
>>> s['losses'].shape, bool(s['beta_smoothness'] > 0)
((3,), True)
>>> vals, vecs = jp.hessian_top_eigenvalues(loss_fn, params, jp.dataset(batches), k=2, key=jax.random.key(3),
...                                         method='lanczos', num_iters=12)
>>> vals.shape, vecs['head']['kernel'].shape      # |λ₁| ≥ |λ₂| of the two batches' average Hessian
((2,), (2, 8, 3))
>>> bool(abs(vals[0]) >= abs(vals[1]))
True
"""

from jaxnorm.probes.curvature import (
    curvature_per_layer,
    directional_curvature,
    hessian_spectral_density,
    hessian_top_eigenvalues,
    hessian_trace,
    hvp,
    layer_names,
)
from jaxnorm.probes.ics import internal_covariate_shift, layer_order
from jaxnorm.probes.invariance import TRANSFORMS as INVARIANCE_TRANSFORMS
from jaxnorm.probes.invariance import norm_invariances
from jaxnorm.probes.kinds import (
    BUILT_IN as PROBES,
)
from jaxnorm.probes.kinds import (
    ProbeCall,
    ProbeKind,
    make_probe_fn,
    probe_kind,
    probe_names,
    register_probe,
    unregister_probe,
)
from jaxnorm.probes.landscape import (
    filter_normalize,
    filter_normalized_direction,
    interpolate,
    loss_slice_1d,
    loss_slice_2d,
    trajectory_pca,
    trajectory_surface,
)
from jaxnorm.probes.model import (
    LOSSES,
    activation_percentiles_fn,
    eqx_loss_fn,
    model_loss_fn,
    model_state_loss_fn,
    nnx_loss_fn,
)
from jaxnorm.probes.operators import OPERATORS, Dataset, SplitLoss, dataset
from jaxnorm.probes.santurkar import DEFAULT_ETA_MULTIPLIERS, eta_grid, santurkar_probe
from jaxnorm.probes.sharpness import (
    MOMENTUM_KINDS,
    SharpnessTracker,
    adam_preconditioner,
    sharpness,
    stability_threshold,
)

__all__ = [
    "DEFAULT_ETA_MULTIPLIERS",
    "Dataset",
    "INVARIANCE_TRANSFORMS",
    "LOSSES",
    "MOMENTUM_KINDS",
    "OPERATORS",
    "PROBES",
    "ProbeCall",
    "ProbeKind",
    "SharpnessTracker",
    "SplitLoss",
    "activation_percentiles_fn",
    "adam_preconditioner",
    "curvature_per_layer",
    "dataset",
    "directional_curvature",
    "eqx_loss_fn",
    "eta_grid",
    "filter_normalize",
    "filter_normalized_direction",
    "hessian_spectral_density",
    "hessian_top_eigenvalues",
    "hessian_trace",
    "hvp",
    "internal_covariate_shift",
    "interpolate",
    "layer_names",
    "layer_order",
    "loss_slice_1d",
    "loss_slice_2d",
    "make_probe_fn",
    "model_loss_fn",
    "model_state_loss_fn",
    "nnx_loss_fn",
    "norm_invariances",
    "probe_kind",
    "probe_names",
    "register_probe",
    "santurkar_probe",
    "sharpness",
    "stability_threshold",
    "trajectory_pca",
    "trajectory_surface",
    "unregister_probe",
]

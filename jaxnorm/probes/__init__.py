"""Optimization-landscape probes: Santurkar et al. (2018)'s loss/gradient/β-smoothness probes, internal covariate
shift (their Definition 2.1), Hessian curvature and filter-normalized loss slices.

Every probe takes ``loss_fn(params, batch) -> scalar`` (pure), ``params`` and ``batch``, returns arrays, is
jit-compiled (cached per ``loss_fn`` object and shapes), vmapped over its step sizes / probe vectors / grid points
(``chunk=`` bounds memory), never modifies or donates its inputs, and runs per device under ``pmap``/``shard_map``
with ``axis_name=`` (losses and gradients ``pmean``'d: the global-batch result for equal shards)::

    import jaxnorm.probes as jp

    loss_fn = jp.model_loss_fn(model, state.batch_stats, dropout_key)   # train mode, fixed dropout key
    s = jp.santurkar_probe(loss_fn, state.params, batch, lr=0.1)         # losses, grad_changes, beta_smoothness …
    ics = jp.internal_covariate_shift(loss_fn, state.params, batch, lr=0.1)   # {'l2': {layer: …}, 'cos': …}
    vals, vecs = jp.hessian_top_eigenvalues(loss_fn, state.params, batch, k=2, key=key)
    tr = jp.hessian_trace(loss_fn, state.params, batch, key=key, num_samples=50)['trace']
    dens = jp.hessian_spectral_density(loss_fn, state.params, batch, key=key, num_runs=4)
    c = jp.directional_curvature(loss_fn, state.params, batch)           # gᵀHg/‖g‖²
    # any curvature probe: another operator, a parameter block, the average over a data set
    jp.hessian_top_eigenvalues(loss_fn, state.params, jp.dataset(batches), key=key, operator='ggn',
                               params_filter=['conv_0'])              # also 'fisher', 'empirical_fisher'
    tr = jp.hessian_trace(loss_fn, state.params, batch, key=key, num_samples=60, method='hutch++')
    table = jp.curvature_per_layer(loss_fn, state.params, batch, key=key)   # {layer: top eigenvalue, trace}
    sl = jp.loss_slice_1d(loss_fn, state.params, batch, key=key, steps=21, span=1.0)
    surf = jp.loss_slice_2d(loss_fn, state.params, batch, key=key, steps=21)   # biases and BN left out by default
    line = jp.interpolate(loss_fn, init_params, state.params, batch)          # Goodfellow et al.: init → trained
    path = jp.trajectory_surface(loss_fn, [ckpt_1, ckpt_2, ckpt_3, state.params], batch)   # top-2 PCA plane

    loss_fn = jp.model_state_loss_fn(model)     # the same, with the state as an input: compiled once for all steps
    s = jp.santurkar_probe(loss_fn, state.params, {'batch': batch, 'batch_stats': state.batch_stats,
                                                   'dropout_key': dropout_key}, lr=0.1)

    loss_fn, params = jp.nnx_loss_fn(nnx_model)                 # Flax NNX: nnx.split, train-mode BN
    loss_fn, params = jp.eqx_loss_fn(eqx_model, state, key)    # Equinox: eqx.partition, vmapped over the batch

    probe_fn = jp.make_probe_fn(model, probes=('santurkar', 'ics'), lr=0.1)   # for the training loop
    metrics = probe_fn(state, batch, key)        # {'santurkar/beta_smoothness': …}; eager, jit or pmap
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
from jaxnorm.probes.invariance import TRANSFORMS as INVARIANCE_TRANSFORMS, norm_invariances
from jaxnorm.probes.landscape import (filter_normalize, filter_normalized_direction, interpolate, loss_slice_1d,
                                      loss_slice_2d, trajectory_pca, trajectory_surface)
from jaxnorm.probes.model import (LOSSES, PROBES, activation_percentiles_fn, eqx_loss_fn, make_probe_fn,
                                  model_loss_fn, model_state_loss_fn, nnx_loss_fn)
from jaxnorm.probes.operators import OPERATORS, Dataset, SplitLoss, dataset
from jaxnorm.probes.santurkar import DEFAULT_ETA_MULTIPLIERS, eta_grid, santurkar_probe

__all__ = [
    "DEFAULT_ETA_MULTIPLIERS",
    "Dataset",
    "INVARIANCE_TRANSFORMS",
    "LOSSES",
    "OPERATORS",
    "PROBES",
    "SplitLoss",
    "activation_percentiles_fn",
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
    "santurkar_probe",
    "trajectory_pca",
    "trajectory_surface",
]

"""The probes' batch argument: a plain list of batches is a data set (the same result as ``jp.dataset(list)``) for
every probe that averages over one, a ValueError for those that evaluate one batch; tuples and lists of arrays stay
one batch. And the numbers of the docstring examples: λ_max and the trace of a known quadratic's Hessian."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jaxnorm.probes as jp

KEY = jax.random.key(0)


def _sym(seed, n=3):
    m = np.random.default_rng(seed).normal(size=(n, n))
    return (m @ m.T / n + np.diag(np.arange(1.0, n + 1))).astype(np.float32)


PARAMS = {"a": jnp.array([1.0, 2.0]), "b": jnp.array([-1.0])}  # two layers; raveled w = (a₀, a₁, b₀)


def quad_loss(params, batch):
    """0.5·wᵀAw: its Hessian is A (symmetric), whatever w."""
    w = jnp.concatenate([params["a"], params["b"]])
    return 0.5 * w @ batch["A"] @ w


BATCHES = [{"A": _sym(1)}, {"A": _sym(2)}]
A_MEAN = (BATCHES[0]["A"] + BATCHES[1]["A"]) / 2


def _close(x, y):
    for u, v in zip(jax.tree.leaves(x), jax.tree.leaves(y)):
        np.testing.assert_allclose(np.asarray(u), np.asarray(v), rtol=1e-6, atol=1e-6)


DATASET_PROBES = {
    "hvp": lambda b: jp.hvp(quad_loss, PARAMS, b, PARAMS),
    "hessian_top_eigenvalues": lambda b: jp.hessian_top_eigenvalues(quad_loss, PARAMS, b, k=2, key=KEY, num_iters=50),
    "hessian_trace": lambda b: jp.hessian_trace(quad_loss, PARAMS, b, key=KEY, num_samples=6),
    "hessian_trace_hutchpp": lambda b: jp.hessian_trace(quad_loss, PARAMS, b, key=KEY, num_samples=6, method="hutch++"),
    "hessian_spectral_density": lambda b: jp.hessian_spectral_density(
        quad_loss, PARAMS, b, key=KEY, num_lanczos_steps=3, num_points=20
    ),
    "directional_curvature": lambda b: jp.directional_curvature(quad_loss, PARAMS, b),
    "curvature_per_layer": lambda b: jp.curvature_per_layer(quad_loss, PARAMS, b, key=KEY, num_iters=10, num_samples=4),
    "santurkar_probe": lambda b: jp.santurkar_probe(quad_loss, PARAMS, b, etas=[0.1, 0.2]),
}


@pytest.mark.parametrize("name", sorted(DATASET_PROBES))
def test_a_list_of_batches_is_the_dataset(name):
    probe = DATASET_PROBES[name]
    _close(probe(list(BATCHES)), probe(jp.dataset(BATCHES)))


def test_the_list_is_the_average_over_its_batches():
    vals, _ = jp.hessian_top_eigenvalues(quad_loss, PARAMS, list(BATCHES), key=KEY, num_iters=200, tol=0)
    assert float(vals[0]) == pytest.approx(float(np.linalg.eigvalsh(A_MEAN)[-1]), rel=1e-4)
    assert float(vals[0]) != pytest.approx(float(np.linalg.eigvalsh(BATCHES[0]["A"])[-1]), rel=1e-3)


def _tuple_loss(params, batch):
    a, scale = batch
    return scale * quad_loss(params, {"A": a})


def test_a_tuple_stays_one_batch():
    vals, _ = jp.hessian_top_eigenvalues(_tuple_loss, PARAMS, (BATCHES[0]["A"], 2.0), key=KEY, num_iters=200, tol=0)
    assert float(vals[0]) == pytest.approx(2 * float(np.linalg.eigvalsh(BATCHES[0]["A"])[-1]), rel=1e-4)


def test_a_list_of_arrays_stays_one_batch():
    loss = lambda p, b: _tuple_loss(p, (b[0], b[1]))  # noqa: E731
    batch = [jnp.asarray(BATCHES[0]["A"]), jnp.float32(2.0)]
    c = jp.directional_curvature(loss, PARAMS, batch)
    w = np.array([1.0, 2.0, -1.0], np.float32)
    g = 2 * BATCHES[0]["A"] @ w
    assert float(c) == pytest.approx(float(g @ (2 * BATCHES[0]["A"]) @ g / (g @ g)), rel=1e-5)


def test_a_list_of_tuples_of_one_structure_is_a_dataset():
    batches = [(BATCHES[0]["A"], np.float32(1.0)), (BATCHES[1]["A"], np.float32(1.0))]
    _close(jp.hvp(_tuple_loss, PARAMS, batches, PARAMS), jp.hvp(_tuple_loss, PARAMS, jp.dataset(batches), PARAMS))


ONE_BATCH_PROBES = {
    "internal_covariate_shift": lambda b: jp.internal_covariate_shift(quad_loss, PARAMS, b, lr=0.1),
    "layer_order": lambda b: jp.layer_order(quad_loss, PARAMS, b),
    "loss_slice_1d": lambda b: jp.loss_slice_1d(quad_loss, PARAMS, b, key=KEY, steps=3),
    "loss_slice_2d": lambda b: jp.loss_slice_2d(quad_loss, PARAMS, b, key=KEY, steps=3),
    "interpolate": lambda b: jp.interpolate(quad_loss, PARAMS, jax.tree.map(jnp.zeros_like, PARAMS), b, steps=3),
    "trajectory_surface": lambda b: jp.trajectory_surface(
        quad_loss,
        [
            PARAMS,
            {"a": jnp.array([0.0, 1.0]), "b": jnp.array([0.0])},
            {"a": jnp.array([0.5, 0.0]), "b": jnp.array([1.0])},
        ],
        b,
        steps=3,
    ),
}


@pytest.mark.parametrize("name", sorted(ONE_BATCH_PROBES))
@pytest.mark.parametrize("form", ["list", "dataset"])
def test_one_batch_probes_refuse_a_data_set(name, form):
    batch = list(BATCHES) if form == "list" else jp.dataset(BATCHES)
    with pytest.raises(ValueError, match=rf"{name}: .*cannot average over a data set; pass one batch"):
        ONE_BATCH_PROBES[name](batch)


@pytest.mark.parametrize("name", sorted(ONE_BATCH_PROBES))
def test_one_batch_probes_take_one_batch(name):
    jax.block_until_ready(ONE_BATCH_PROBES[name](BATCHES[0]))


def test_a_list_of_batches_of_different_shapes_names_the_batch():
    with pytest.raises(ValueError, match="dataset: batch 1 has shapes"):
        jp.hessian_trace(quad_loss, PARAMS, [BATCHES[0], {"A": np.eye(2, dtype=np.float32)}], key=KEY)


# ---- the numbers of the docstring examples ---------------------------------------------------------------------------

A_KNOWN = np.array([[2.0, 1.0, 0.0], [1.0, 2.0, 0.0], [0.0, 0.0, 0.5]], np.float32)  # eigenvalues 3, 1, 0.5


@pytest.mark.parametrize("method", ["power", "lanczos", "subspace"])
def test_top_eigenvalues_of_a_known_quadratic(method):
    iters = {"power": 200, "lanczos": 3, "subspace": 2}[method]  # the subspace block (k + 2 = 3) is all of R³
    vals, vecs = jp.hessian_top_eigenvalues(
        quad_loss, PARAMS, {"A": A_KNOWN}, k=2, key=KEY, method=method, num_iters=iters, tol=0
    )
    np.testing.assert_allclose(np.asarray(vals), [3.0, 1.0], rtol=1e-4)
    top = np.concatenate([np.asarray(vecs["a"][0]), np.asarray(vecs["b"][0])])
    assert abs(float(top @ np.array([1.0, 1.0, 0.0]) / np.sqrt(2))) == pytest.approx(1.0, abs=1e-4)


def test_trace_and_curvature_of_a_known_quadratic():
    tr = jp.hessian_trace(quad_loss, PARAMS, {"A": A_KNOWN}, key=KEY, num_samples=9, method="hutch++")
    assert float(tr["trace"]) == pytest.approx(4.5, rel=1e-4)  # Hutch++ is exact for n = 3 ≤ k
    w = np.array([1.0, 2.0, -1.0], np.float32)
    g = A_KNOWN @ w
    c = jp.directional_curvature(quad_loss, PARAMS, {"A": A_KNOWN})
    assert float(c) == pytest.approx(float(g @ A_KNOWN @ g / (g @ g)), rel=1e-5)

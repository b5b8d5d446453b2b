"""Curvature operators against dense references: the Hessian, GGN, true and empirical Fisher of a small MLP built
from ``jax.hessian``/``jax.jacobian``; data-set averages equal the full-batch operator; parameter blocks equal the
dense blocks; least squares (GGN = Hessian), cross-entropy (Fisher = GGN); Hutch++ against Hutchinson on a
decaying spectrum; the per-layer table; bad arguments."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.flatten_util import ravel_pytree
from jax.sharding import AxisType, NamedSharding
from jax.sharding import PartitionSpec as P

import jaxnorm.probes as jp
from jaxnorm.losses import per_example_loss
from jaxnorm.probes._common import planned


@pytest.fixture(autouse=True)
def _precise(highest_precision):
    pass


def mlp_params(seed=0, d=5, h=6, c=3):
    r = np.random.default_rng(seed)
    return {
        "dense_0": {
            "kernel": jnp.asarray(r.normal(size=(d, h)) * 0.7, jnp.float32),
            "bias": jnp.asarray(r.normal(size=h) * 0.1, jnp.float32),
        },
        "head": {"kernel": jnp.asarray(r.normal(size=(h, c)) * 0.7, jnp.float32), "bias": jnp.zeros(c, jnp.float32)},
    }


def mlp_outputs(params, batch):
    h = jnp.tanh(batch["x"] @ params["dense_0"]["kernel"] + params["dense_0"]["bias"])
    return h @ params["head"]["kernel"] + params["head"]["bias"]


def batches(num=4, n=8, d=5, c=3, seed=1):
    r = np.random.default_rng(seed)
    return [
        {"x": r.normal(size=(n, d)).astype(np.float32), "y": r.integers(0, c, n).astype(np.int32)} for _ in range(num)
    ]


CE = jp.SplitLoss(mlp_outputs, "cross_entropy")


def flat(params):
    v, unravel = ravel_pytree(params)
    return v, unravel


def dense(loss, params, batch):
    """The dense Hessian of ``loss`` at ``params`` on ``batch`` (float32, on the raveled vector)."""
    v, unravel = flat(params)
    return np.asarray(jax.jit(jax.hessian(lambda w: loss(unravel(w), batch)))(v))  # one program, not op by op


def dense_ggn(split, params, batch, fisher=False):
    v, unravel = flat(params)
    jac = jax.jit(jax.jacobian(lambda w: split.outputs(unravel(w), batch)))(v)  # (N, C, n)
    z = split.outputs(params, batch)
    c = np.asarray(split.weights(batch))
    if fisher:  # the expectation over the model's labels of the score outer product
        p = np.asarray(jax.nn.softmax(z))
        h_out = np.stack([np.diag(pi) - np.outer(pi, pi) for pi in p])
    else:
        h_one = jax.jit(jax.hessian(lambda zi, yi: per_example_loss(zi[None], yi[None], split.loss)[0]))
        h_out = np.stack([np.asarray(h_one(z[i], jnp.asarray(batch["y"])[i])) for i in range(z.shape[0])])
    jac = np.asarray(jac)
    return np.einsum("i,iak,iab,ibl->kl", c, jac, h_out, jac)


def dense_empirical_fisher(split, params, batch):
    v, unravel = flat(params)
    g = np.asarray(jax.jit(jax.jacobian(lambda w: split.per_example(split.outputs(unravel(w), batch), batch)))(v))
    return np.einsum("i,ik,il->kl", np.asarray(split.weights(batch)), g, g)


def as_matrix(op_fn, params):
    """The operator's matrix from its products with the basis vectors."""
    v, unravel = flat(params)
    cols = [ravel_pytree(op_fn(unravel(e)))[0] for e in np.eye(v.size, dtype=np.float32)]
    return np.stack(cols, axis=1)


def test_split_loss_value_is_the_masked_mean():
    params, b = mlp_params(), batches(1)[0]
    b = {**b, "mask": np.array([1, 1, 1, 0, 1, 1, 0, 1], bool)}
    want = per_example_loss(mlp_outputs(params, b), b["y"], "cross_entropy")[b["mask"]].mean()
    np.testing.assert_allclose(CE(params, b), want, rtol=1e-6)


def test_masked_padding_holding_nan_or_huge_values_changes_no_operator():
    """Padded rows (mask 0) may hold anything: every operator's product equals the unpadded batch's."""
    from jaxnorm.lab.models import SimpleCNN

    model = SimpleCNN(channels=(4,), num_classes=3, norm="layer")
    r = np.random.default_rng(5)
    x = r.normal(3.0, 2.0, size=(6, 8, 8, 1)).astype(np.float32)
    y = np.arange(6, dtype=np.int32) % 3
    params = model.init(jax.random.key(0), x, train=False)["params"]
    loss_fn = jp.model_loss_fn(model, train=False)
    v = jax.tree.map(lambda p: jnp.ones_like(p) / 10, params)
    for fill in (np.nan, 1e30):
        padded = {
            "x": np.concatenate([x, np.full((2, 8, 8, 1), fill, np.float32)]),
            "y": np.concatenate([y, [0, 1]]).astype(np.int32),
            "mask": np.r_[np.ones(6, bool), [False, False]],
        }
        np.testing.assert_allclose(loss_fn(params, padded), loss_fn(params, {"x": x, "y": y}), rtol=1e-6)
        for op in ("hessian", "ggn", "fisher", "empirical_fisher"):
            want = ravel_pytree(jp.hvp(loss_fn, params, {"x": x, "y": y}, v, operator=op))[0]
            got = ravel_pytree(jp.hvp(loss_fn, params, padded, v, operator=op))[0]
            np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-6 * float(np.abs(want).max()), err_msg=op)


@pytest.mark.parametrize("operator", ["hessian", "ggn", "fisher", "empirical_fisher"])
def test_operator_products_equal_the_dense_matrix(operator):
    params, b = mlp_params(), batches(1)[0]
    want = {
        "hessian": lambda: dense(CE, params, b),
        "ggn": lambda: dense_ggn(CE, params, b),
        "fisher": lambda: dense_ggn(CE, params, b, fisher=True),
        "empirical_fisher": lambda: dense_empirical_fisher(CE, params, b),
    }[operator]()
    got = as_matrix(lambda v: jp.hvp(CE, params, b, v, operator=operator), params)
    np.testing.assert_allclose(got, want, atol=2e-5 * np.abs(want).max())
    if operator != "hessian":
        assert np.linalg.eigvalsh((want + want.T) / 2).min() > -1e-5  # positive semi-definite


def test_ggn_equals_the_hessian_for_least_squares_on_a_linear_model():
    r = np.random.default_rng(3)
    params = {"w": jnp.asarray(r.normal(size=(4, 2)), jnp.float32), "b": jnp.zeros(2, jnp.float32)}
    b = {"x": r.normal(size=(10, 4)).astype(np.float32), "y": r.normal(size=(10, 2)).astype(np.float32)}
    ls = jp.SplitLoss(lambda p, bb: bb["x"] @ p["w"] + p["b"], "mse")
    h = as_matrix(lambda v: jp.hvp(ls, params, b, v), params)
    for op in ("ggn", "fisher"):
        np.testing.assert_allclose(
            as_matrix(lambda v: jp.hvp(ls, params, b, v, operator=op), params), h, atol=1e-5 * np.abs(h).max()
        )
    np.testing.assert_allclose(h, dense(ls, params, b), atol=1e-5 * np.abs(h).max())


def test_top_eigenvalues_trace_and_density_of_each_operator_match_the_dense_ones():
    params, b = mlp_params(), batches(1)[0]
    key = jax.random.key(0)
    for operator, mat in (("hessian", dense(CE, params, b)), ("ggn", dense_ggn(CE, params, b))):
        ev = np.linalg.eigvalsh(mat)
        ev = ev[np.argsort(-np.abs(ev))]
        vals, vecs = jp.hessian_top_eigenvalues(
            CE, params, b, k=3, key=key, method="lanczos", num_iters=57, operator=operator
        )
        np.testing.assert_allclose(vals, ev[:3], rtol=1e-3, atol=1e-5)
        v0 = ravel_pytree(jax.tree.map(lambda x: x[0], vecs))[0]
        np.testing.assert_allclose(mat @ v0, vals[0] * v0, atol=2e-3 * abs(vals[0]))
        tr = jp.hessian_trace(CE, params, b, key=key, num_samples=400, operator=operator)
        assert abs(tr["trace"] - np.trace(mat)) < 4 * tr["std_error"] + 1e-4, (operator, tr, np.trace(mat))
        dens = jp.hessian_spectral_density(CE, params, b, key=key, num_lanczos_steps=57, num_runs=2, operator=operator)
        np.testing.assert_allclose(np.sort(np.asarray(dens["nodes"][0])), np.sort(ev), atol=1e-3 * abs(ev).max())


def test_block_products_equal_separate_products_and_subspace_iteration_finds_the_top_pairs():
    """hvp(batched=True) (one vmapped program) equals K separate hvp calls, for an operator and a block; subspace
    iteration returns the dense top-3 eigenpairs on both loops."""
    params, b = mlp_params(), batches(1)[0]
    vs = jax.tree.map(lambda x: jax.random.normal(jax.random.key(7), (4,) + x.shape), params)
    for kw in ({}, {"operator": "ggn"}, {"params_filter": ["head"]}):
        block = jp.hvp(CE, params, b, vs, batched=True, **kw)
        for i in range(4):
            one = jp.hvp(CE, params, b, jax.tree.map(lambda x, i=i: x[i], vs), **kw)
            jax.tree.map(lambda a, o, i=i: np.testing.assert_allclose(a[i], o, rtol=1e-5, atol=1e-6), block, one)
    with pytest.raises(ValueError, match=r"batched=True needs every leaf of v shaped \(K, \*leaf.shape\)"):
        jp.hvp(CE, params, b, params, batched=True)
    mat = dense(CE, params, b)
    ev = np.linalg.eigvalsh(mat)
    ev = ev[np.argsort(-np.abs(ev))]
    for loop in ("host", "device"):
        vals, vecs = planned(jp.hessian_top_eigenvalues, loop=loop)(
            CE, params, b, k=3, key=jax.random.key(0), method="subspace", num_iters=400, tol=1e-7
        )
        np.testing.assert_allclose(vals, ev[:3], rtol=2e-3, atol=1e-5)
        for j in range(3):
            v = ravel_pytree(jax.tree.map(lambda x, j=j: x[j], vecs))[0]
            np.testing.assert_allclose(mat @ v, vals[j] * v, atol=1e-2 * abs(vals[0]))


def test_dataset_average_over_four_batches_equals_the_full_batch_operator():
    params, bs = mlp_params(), batches(4)
    full = {k: np.concatenate([b[k] for b in bs]) for k in bs[0]}  # equal sizes: the mean of the 4 means
    ds = jp.dataset(bs)
    assert ds.num_batches == 4
    for operator in ("hessian", "ggn", "empirical_fisher"):
        got = as_matrix(lambda v: jp.hvp(CE, params, ds, v, operator=operator), params)
        want = as_matrix(lambda v: jp.hvp(CE, params, full, v, operator=operator), params)
        np.testing.assert_allclose(got, want, atol=1e-5 * np.abs(want).max())
    mat = dense(CE, params, full)
    ev = np.linalg.eigvalsh(mat)
    vals, _ = jp.hessian_top_eigenvalues(CE, params, ds, key=jax.random.key(1), num_iters=300, tol=1e-7)
    np.testing.assert_allclose(vals[0], ev[np.argmax(np.abs(ev))], rtol=2e-3)
    g = ravel_pytree(jax.grad(CE)(params, full))[0]
    np.testing.assert_allclose(jp.directional_curvature(CE, params, ds), g @ mat @ g / (g @ g), rtol=1e-4)
    # the Santurkar probe on the data set is the probe of the full-batch loss (device and host loops)
    for loop in ("device", "host"):
        on_ds = planned(jp.santurkar_probe, loop=loop)(CE, params, ds, lr=0.5)
        on_full = jp.santurkar_probe(CE, params, full, lr=0.5)
        for k in ("losses", "grad_changes", "beta_smoothness"):
            np.testing.assert_allclose(on_ds[k], on_full[k], rtol=1e-4, err_msg=k)
    # through a lax.scan (no unrolling) too, and with the batches sharded over the 4 devices along their batch axis
    stacked = jax.tree.map(
        lambda x: jax.device_put(x, NamedSharding(jax.make_mesh((4,), ("batch",), (AxisType.Auto,)), P(None, "batch"))),
        ds.stacked,
    )
    sharded = jp.dataset(stacked, stacked=True)
    v = jax.tree.map(jnp.ones_like, params)
    np.testing.assert_allclose(
        ravel_pytree(jp.hvp(CE, params, sharded, v))[0],
        ravel_pytree(jp.hvp(CE, params, full, v))[0],
        rtol=1e-5,
        atol=1e-6,
    )


def test_dataset_mean_in_a_scan_equals_the_unrolled_sum(monkeypatch):
    params, ds = mlp_params(), jp.dataset(batches(3))
    v = jax.tree.map(jnp.ones_like, params)
    unrolled = jp.hvp(CE, params, ds, v)
    monkeypatch.setattr(jp.operators.C, "MAX_UNROLL", 0)
    jp.curvature._hvp.clear_cache()
    scanned = jp.hvp(CE, params, ds, v)
    jp.curvature._hvp.clear_cache()
    np.testing.assert_allclose(ravel_pytree(scanned)[0], ravel_pytree(unrolled)[0], rtol=1e-5, atol=1e-7)


def test_params_filter_gives_the_dense_diagonal_block():
    params, b = mlp_params(), batches(1)[0]
    mat = dense(CE, params, b)
    v, _ = flat(params)
    # ravel order: sorted keys, dense_0/{bias, kernel}, head/{bias, kernel}
    n0 = 6 + 5 * 6
    block = mat[:n0, :n0]
    vals, vecs = jp.hessian_top_eigenvalues(
        CE, params, b, k=2, key=jax.random.key(2), method="lanczos", num_iters=n0, params_filter=["dense_0"]
    )
    ev = np.linalg.eigvalsh(block)
    ev = ev[np.argsort(-np.abs(ev))]
    np.testing.assert_allclose(vals, ev[:2], rtol=1e-3, atol=1e-6)
    assert vecs["head"] == {"bias": None, "kernel": None} and vecs["dense_0"]["kernel"].shape == (2, 5, 6)
    out = jp.hvp(CE, params, b, jax.tree.map(jnp.ones_like, params), params_filter=["dense_0"])
    assert out["head"] == {"bias": None, "kernel": None}
    np.testing.assert_allclose(ravel_pytree(out)[0], block @ np.ones(n0), rtol=1e-4, atol=1e-6)
    # a predicate: the kernels only
    kernels = jp.hessian_trace(
        CE, params, b, key=jax.random.key(3), num_samples=4, params_filter=lambda path, leaf: path.endswith("kernel")
    )
    assert int(kernels["num_params"]) == 5 * 6 + 6 * 3


def test_per_layer_table_matches_the_dense_blocks():
    params, b = mlp_params(), batches(1)[0]
    mat = dense(CE, params, b)
    table = jp.curvature_per_layer(CE, params, b, key=jax.random.key(4), num_iters=200, num_samples=300)
    assert list(table) == ["dense_0", "head"]
    spans = {"dense_0": slice(0, 36), "head": slice(36, 57)}
    for name, sl in spans.items():
        block = mat[sl, sl]
        ev = np.linalg.eigvalsh(block)
        np.testing.assert_allclose(table[name]["top_eigenvalue"], ev[np.argmax(np.abs(ev))], rtol=2e-2)
        assert abs(table[name]["trace"] - np.trace(block)) < 4 * table[name]["trace_std_error"] + 1e-5
        assert int(table[name]["num_params"]) == sl.stop - sl.start
    # the layers' traces come from one Hutchinson run on the whole Hessian: they sum to its estimate with that key
    k_trace = jax.random.split(jax.random.key(4))[1]
    whole = jp.hessian_trace(CE, params, b, key=k_trace, num_samples=300)["trace"]
    np.testing.assert_allclose(sum(float(t["trace"]) for t in table.values()), whole, rtol=1e-4)
    device, host = (
        planned(jp.curvature_per_layer, loop=loop)(CE, params, b, key=jax.random.key(4), num_iters=50, num_samples=5)
        for loop in ("device", "host")
    )
    for name in spans:
        np.testing.assert_allclose(device[name]["trace"], host[name]["trace"], rtol=1e-4)
    with pytest.raises(ValueError, match=r"'conv_9' is not a layer of params; its layers are \['dense_0', 'head'\]"):
        jp.curvature_per_layer(CE, params, b, key=jax.random.key(4), layers=["conv_9"])


def test_per_layer_table_is_one_product_program_equal_to_each_layers_own_probe():
    """The table's eigenvalues equal hessian_top_eigenvalues restricted to each layer (params_filter), on both loops,
    and the host table lowers the same number of programs whatever the number of layers (one program holds every
    layer's block product, one the traces' whole-model products; each params_filter probe lowers its own)."""
    import jax.monitoring

    params = {f"dense_{i}": {"kernel": 0.4 * jax.random.normal(jax.random.key(i), (4, 4))} for i in range(4)}
    x = jax.random.normal(jax.random.key(9), (16, 4))

    def make_loss():  # a new function each time: nothing cached from an earlier call
        def loss(p, b):
            h = b
            for i in range(4):
                h = jnp.tanh(h @ p[f"dense_{i}"]["kernel"])
            return jnp.mean(jnp.sum(h**2, axis=1))

        return loss

    loss = make_loss()
    unravel = ravel_pytree(params)[1]
    lowered = []

    def listen(event, secs, **kw):
        if event == "/jax/core/compile/jaxpr_to_mlir_module_duration":
            lowered.append(event)

    def count(layers=None, loop="auto"):
        del lowered[:]
        table = planned(jp.curvature_per_layer, loop=loop)(
            make_loss(), params, x, key=jax.random.key(1), layers=layers, num_iters=300, num_samples=3
        )
        return table, len(lowered)

    jax.monitoring.register_event_duration_secs_listener(listen)
    try:
        count(layers=["dense_3"])  # the host glue's own small programs, once
        two, n_two = count(layers=["dense_0", "dense_1"])
        four, n_four = count()
    finally:
        jax.monitoring.unregister_event_duration_listener(listen)
    assert n_two == n_four == 2, (n_two, n_four)  # the layers' products and the traces' products
    device, _ = count(loop="device")
    mat = np.asarray(jax.jit(jax.hessian(lambda w: loss(unravel(w), x)))(ravel_pytree(params)[0]))
    for i, name in enumerate(sorted(four)):  # ravel order: the layers' 16 weights one after another
        ev = np.linalg.eigvalsh(mat[16 * i : 16 * (i + 1), 16 * i : 16 * (i + 1)])
        top = ev[np.argmax(np.abs(ev))]
        own, _ = jp.hessian_top_eigenvalues(loss, params, x, key=jax.random.key(1), num_iters=300, params_filter=[name])
        for table in (four, device):
            np.testing.assert_allclose(table[name]["top_eigenvalue"], top, rtol=1e-3)
        np.testing.assert_allclose(four[name]["top_eigenvalue"], own[0], rtol=1e-3)
    np.testing.assert_array_equal(two["dense_1"]["trace"], four["dense_1"]["trace"])  # same vectors, same product


def test_host_and_device_loops_agree_for_an_operator_and_a_block():
    params, b = mlp_params(), batches(1)[0]
    key = jax.random.key(5)
    kw = dict(operator="ggn", params_filter=["head"])
    for fn, extra in (
        (jp.hessian_top_eigenvalues, dict(k=2, num_iters=30, tol=0.0)),
        (jp.hessian_trace, dict(num_samples=6)),
        (jp.hessian_trace, dict(num_samples=9, method="hutch++")),
    ):
        host = planned(fn, loop="host")(CE, params, b, key=key, **kw, **extra)
        device = planned(fn, loop="device")(CE, params, b, key=key, **kw, **extra)
        a, d = (host[0], device[0]) if isinstance(host, tuple) else (host["trace"], device["trace"])
        np.testing.assert_allclose(a, d, rtol=1e-4)


def quadratic(eigs, seed=0):
    r = np.random.default_rng(seed)
    q, _ = np.linalg.qr(r.normal(size=(len(eigs), len(eigs))))
    a = (q * np.asarray(eigs)) @ q.T
    a = jnp.asarray((a + a.T) / 2, jnp.float32)
    return (lambda p, _: 0.5 * p["w"] @ a @ p["w"]), {"w": jnp.zeros(len(eigs), jnp.float32)}, np.asarray(a)


def test_hutch_plus_plus_has_less_variance_than_hutchinson_at_equal_products():
    eigs = 1.0 / np.arange(1, 101) ** 2  # a decaying spectrum, trace π²/6 − ...
    loss, params, a = quadratic(eigs)
    m = 30  # products per estimate, for both
    hutch = [
        float(jp.hessian_trace(loss, params, None, key=jax.random.key(s), num_samples=m)["trace"]) for s in range(40)
    ]
    hpp = [
        float(jp.hessian_trace(loss, params, None, key=jax.random.key(s), num_samples=m, method="hutch++")["trace"])
        for s in range(40)
    ]
    true = np.trace(a)
    assert abs(np.mean(hpp) - true) < 3 * np.std(hpp) / np.sqrt(40) + 1e-5  # unbiased
    assert np.var(hpp) < 0.1 * np.var(hutch), (np.var(hpp), np.var(hutch))


def test_quadratic_hessian_eigenvalues_trace_and_density_moments():
    eigs = np.array([5.0, -3.0, 2.0, 1.0, 0.5, 0.25, 0.1, 0.0])
    loss, params, a = quadratic(eigs, seed=1)
    v = {"w": jnp.arange(8.0, dtype=jnp.float32)}
    np.testing.assert_allclose(jp.hvp(loss, params, None, v)["w"], a @ np.arange(8.0), rtol=1e-5, atol=1e-5)
    vals, _ = jp.hessian_top_eigenvalues(loss, params, None, k=3, key=jax.random.key(0), method="lanczos", num_iters=8)
    np.testing.assert_allclose(vals, [5.0, -3.0, 2.0], atol=1e-4)
    tr = jp.hessian_trace(loss, params, None, key=jax.random.key(0), num_samples=30, method="hutch++")
    np.testing.assert_allclose(tr["trace"], eigs.sum(), atol=1e-4)  # 10 sketch vectors span all 8 directions
    dens = jp.hessian_spectral_density(loss, params, None, key=jax.random.key(0), num_lanczos_steps=8, num_runs=1)
    nodes, weights = np.asarray(dens["nodes"][0]), np.asarray(dens["weights"][0])
    np.testing.assert_allclose(np.sort(nodes), np.sort(eigs), atol=1e-4)
    v0 = np.array(jax.random.rademacher(jax.random.key(0), (1, 8), jnp.float32))[0]
    v0 = v0 / np.linalg.norm(v0)
    for power in (1, 2, 3):  # Gauss quadrature is exact for these polynomial moments: vᵀ Aᵖ v
        np.testing.assert_allclose(weights @ nodes**power, v0 @ np.linalg.matrix_power(a, power) @ v0, atol=1e-4)


def test_operators_on_a_flax_model_with_batch_norm():
    from jaxnorm.lab.models import SimpleCNN

    model = SimpleCNN(channels=(4, 8), num_classes=3, norm="batch")
    x = np.random.default_rng(0).normal(size=(8, 8, 8, 1)).astype(np.float32)
    y = np.arange(8, dtype=np.int32) % 3
    variables = model.init(jax.random.key(0), x, train=False)
    batch = {"x": x, "y": y}
    for train in (True, False):
        loss_fn = jp.model_loss_fn(model, variables["batch_stats"], train=train)
        assert isinstance(loss_fn, jp.SplitLoss)
        v = jax.tree.map(lambda p: jnp.ones_like(p) / 10, variables["params"])
        ggn = ravel_pytree(jp.hvp(loss_fn, variables["params"], batch, v, operator="ggn"))[0]
        fisher = ravel_pytree(jp.hvp(loss_fn, variables["params"], batch, v, operator="fisher"))[0]
        np.testing.assert_allclose(fisher, ggn, rtol=1e-4, atol=1e-6 * np.abs(ggn).max())
        assert float(jnp.vdot(ravel_pytree(v)[0], ggn)) >= 0


def test_bad_arguments_are_one_clear_error():
    params, b = mlp_params(), batches(1)[0]
    key = jax.random.key(0)
    plain = lambda p, bb: CE(p, bb)  # noqa: E731
    with pytest.raises(ValueError, match="operator='ggn' needs the loss split into model outputs"):
        jp.hessian_trace(plain, params, b, key=key, operator="ggn")
    with pytest.raises(ValueError, match="operator must be one of"):
        jp.hessian_trace(CE, params, b, key=key, operator="gauss")
    custom = jp.SplitLoss(mlp_outputs, lambda z, y: jnp.sum(z**2, -1))
    with pytest.raises(ValueError, match="closed form for the 'cross_entropy' and 'mse' losses only"):
        jp.hessian_trace(custom, params, b, key=key, operator="fisher")
    with pytest.raises(
        ValueError,
        match=r"params_filter names \['conv_9'\], which are not in params; its layers "
        r"are \['dense_0', 'head'\]",
    ):
        jp.hessian_trace(CE, params, b, key=key, params_filter=["conv_9"])
    with pytest.raises(ValueError, match="params_filter selects none of the 4 parameter leaves"):
        jp.hessian_trace(CE, params, b, key=key, params_filter=lambda path, leaf: False)
    with pytest.raises(ValueError, match="method='hutch\\+\\+' splits num_samples into three parts"):
        jp.hessian_trace(CE, params, b, key=key, num_samples=2, method="hutch++")
    with pytest.raises(ValueError, match="unknown trace method 'exact'"):
        jp.hessian_trace(CE, params, b, key=key, method="exact")
    with pytest.raises(ValueError, match="dataset: no batches given"):
        jp.dataset([])
    bs = batches(2)
    with pytest.raises(
        ValueError,
        match=r"dataset: batch 1 has shapes \(\(7, 5\), \(7,\)\), batch 0 \(\(8, 5\), "
        r"\(8,\)\)",
    ):
        jp.dataset([bs[0], {k: v[:7] for k, v in bs[1].items()}])


def test_directional_curvature_takes_its_operator_and_params_filter():
    """gᵀMg/gᵀg for M the GGN and the empirical Fisher (not the Hessian: the three differ on this MLP), and for
    M_SS restricted to the head's parameters with g_S (the other layers held fixed), against dense matrices."""
    params, batch = mlp_params(), batches(1)[0]
    g = np.asarray(ravel_pytree(jax.grad(CE)(params, batch))[0], np.float64)
    mats = {
        "hessian": dense(CE, params, batch),
        "ggn": dense_ggn(CE, params, batch),
        "empirical_fisher": dense_empirical_fisher(CE, params, batch),
    }
    want = {op: g @ m @ g / (g @ g) for op, m in mats.items()}
    assert min(abs(want["ggn"] - want["hessian"]), abs(want["empirical_fisher"] - want["ggn"])) > 1e-2 * want["ggn"]
    for op, w in want.items():
        np.testing.assert_allclose(jp.directional_curvature(CE, params, batch, operator=op), w, rtol=1e-4, err_msg=op)
    n0 = ravel_pytree(params["dense_0"])[0].size  # ravel order: dense_0 (bias, kernel), then head
    s = slice(n0, None)
    h_ss = mats["hessian"][s, s]
    np.testing.assert_allclose(
        jp.directional_curvature(CE, params, batch, params_filter=["head"]),
        g[s] @ h_ss @ g[s] / (g[s] @ g[s]),
        rtol=1e-4,
    )

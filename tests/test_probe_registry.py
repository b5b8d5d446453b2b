"""The probe-kind registry (issue 28 item 5): every built-in kind writes the rows it declares, options are checked
against the kind's own list before anything compiles, and a registered kind runs in the probe step like a built-in."""

import re
import types

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jaxnorm.nn
import jaxnorm.probes as jp


class Net(nn.Module):
    @nn.compact
    def __call__(self, x, train=True):
        h = nn.Dense(6, name="dense_0")(x)
        h = jaxnorm.nn.BatchNorm(name="norm_0")(h, train=train)
        self.sow("intermediates", "preact_0", h)
        return nn.Dense(3, name="head")(jnp.tanh(h))


BATCH = {"x": jax.random.normal(jax.random.key(0), (12, 4)), "y": jnp.arange(12) % 3}


@pytest.fixture(scope="module")
def state():
    variables = Net().init(jax.random.key(1), BATCH["x"], train=False)
    return types.SimpleNamespace(
        step=0, params=variables["params"], batch_stats=variables["batch_stats"], opt_state=None
    )


# the cheapest settings of each built-in kind: this test checks names, not numbers
CHEAP = {
    "santurkar": {"etas": [0.05, 0.1], "chunk": None},
    "santurkar_random": {"etas": [0.05, 0.1], "chunk": None},
    "ics": {"chunk": None},
    "top_eigenvalues": {"k": 2, "num_iters": 4},
    "hessian_trace": {"num_samples": 2},
    "spectral_density": {"num_lanczos_steps": 3, "num_points": 5},
    "loss_slice_1d": {"steps": 3},
    "loss_slice_2d": {"steps": 2},
    "sharpness": {"num_iters": 4},
}


def _pattern(field: str) -> re.Pattern:
    return re.compile(re.escape(field).replace("<layer>", "[^/]+").replace("<q>", r"[0-9.]+") + "$")


def test_every_built_in_kind_writes_the_rows_it_declares(state):
    assert set(jp.PROBES) <= set(jp.probe_names())
    probe_fn = jp.make_probe_fn(Net(), probes=jp.PROBES, lr=0.1, options=CHEAP)
    out = probe_fn(state, BATCH, jax.random.key(2))
    context = {"santurkar/lr", "santurkar/beta_eta", "santurkar/rel_grad_change", "santurkar/lambda_eta_half"}
    context |= {"ics/lr", "ics/sharpness_ratio"}
    matched: set = set()
    for name in jp.PROBES:
        for field in jp.probe_kind(name).fields:  # every declared row is written ...
            hits = {k for k in out if _pattern(field).match(k)}
            assert hits, (name, field)
            matched |= hits
    assert set(out) - matched == context  # ... and nothing else but the step-size context
    assert context <= set(out)
    assert {"ics/l2/dense_0", "ics/cos/head", "activations/preact_0/p50"} <= set(out)


def test_an_option_the_kind_does_not_take_is_refused_before_anything_runs():
    with pytest.raises(ValueError, match=r"options\['hessian_trace'\] has \['num_sample'\].*'num_samples'"):
        jp.make_probe_fn(None, probes=("hessian_trace",), options={"hessian_trace": {"num_sample": 4}})
    with pytest.raises(ValueError, match=r"options\['sharpness'\] has \['v0'\]"):  # set by the probe step itself
        jp.make_probe_fn(None, probes=("sharpness",), lr=0.1, options={"sharpness": {"v0": None}})
    assert "num_samples" in jp.probe_kind("hessian_trace").options
    with pytest.raises(ValueError, match=r"unknown probe kind 'hessian'.*register_probe"):
        jp.probe_kind("hessian")


def test_defaults_apply_unless_the_caller_sets_the_option(state):
    kw = {"probes": ("loss_slice_2d",), "lr": 0.1}
    default = jp.make_probe_fn(Net(), **kw)(state, BATCH, jax.random.key(3))
    small = jp.make_probe_fn(Net(), **kw, options={"loss_slice_2d": {"steps": 3}})(state, BATCH, jax.random.key(3))
    assert jp.probe_kind("loss_slice_2d").defaults == {"steps": 11}
    assert default["slice_2d/losses"].shape == (11, 11)
    assert small["slice_2d/losses"].shape == (3, 3)


def test_a_registered_kind_runs_in_the_probe_step(state):
    calls = []

    def grad_norm(call, options):
        calls.append(call)
        call.memory["n"] = call.memory.get("n", 0) + 1
        g = jax.grad(call.loss_fn)(call.params, call.inputs)
        norm = jnp.sqrt(sum(jnp.vdot(x, x) for x in jax.tree.leaves(g)))
        return {"grad/norm": norm * options["scale"], "grad/calls": call.memory["n"]}

    jp.register_probe(
        "grad_norm", grad_norm, options=("scale",), defaults={"scale": 1.0}, fields=("grad/norm", "grad/calls")
    )
    try:
        probe_fn = jp.make_probe_fn(
            Net(), probes=("santurkar", "grad_norm"), lr=0.1, options={"santurkar": CHEAP["santurkar"]}
        )
        key = jax.random.key(4)
        first, second = probe_fn(state, BATCH, key), probe_fn(state, BATCH, key)
        # an independent path to the same number: the Santurkar probe's ‖g‖ at the same dropout key and batch
        np.testing.assert_allclose(first["grad/norm"], first["santurkar/grad_norm"], rtol=1e-5)
        assert (first["grad/calls"], second["grad/calls"]) == (1, 2)  # the kind's memory lasts between calls
        assert float(calls[0].lr) == 0.1 and calls[0].inputs["batch"] is BATCH
        np.testing.assert_array_equal(jax.random.key_data(calls[0].key), jax.random.key_data(calls[1].key))
        other = probe_fn(state, BATCH, jax.random.key(5))
        assert not np.array_equal(jax.random.key_data(calls[2].key), jax.random.key_data(calls[0].key))
        scaled = jp.make_probe_fn(Net(), probes=("grad_norm",), options={"grad_norm": {"scale": 2.0}})
        np.testing.assert_allclose(scaled(state, BATCH, key)["grad/norm"], 2 * first["grad/norm"], rtol=1e-6)
        assert "grad/norm" in other
        with pytest.raises(ValueError, match="already registered"):
            jp.register_probe("grad_norm", grad_norm)
    finally:
        jp.unregister_probe("grad_norm")
    assert "grad_norm" not in jp.probe_names()


def test_register_probe_refuses_what_it_cannot_run():
    with pytest.raises(ValueError, match=r"defaults or config keys for \['steps'\], not among its options"):
        jp.register_probe("bad", lambda c, o: {}, options=("span",), defaults={"steps": 3})
    with pytest.raises(ValueError, match=r"key must be one of"):
        jp.register_probe("bad", lambda c, o: {}, key="mine")
    with pytest.raises(ValueError, match="already registered"):
        jp.register_probe("sharpness", lambda c, o: {})
    assert "bad" not in jp.probe_names()


def test_the_sharpness_kind_warm_starts_from_its_last_eigenvector(state):
    """The second call on the same state starts from the first call's Ritz vector: its residual is already within
    tol, so one product ends it; a cold start needs more."""
    probe_fn = jp.make_probe_fn(Net(), probes=("sharpness",), lr=0.1, options={"sharpness": {"tol": 1e-2}})
    first = probe_fn(state, BATCH, jax.random.key(6))
    second = probe_fn(state, BATCH, jax.random.key(7))
    assert first["sharpness/num_products"] > 1 and second["sharpness/num_products"] == 1, (first, second)
    np.testing.assert_allclose(second["sharpness/lambda_max"], first["sharpness/lambda_max"], rtol=1e-3)

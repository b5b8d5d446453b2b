"""Autoencoders: the sparse penalty's δ term, the linear tied autoencoder = PCA, denoising noise, the tied encoder and
decoder functions, models."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from jaxnorm.dropouts import dropout
from jaxnorm.lab.models.autoencoder import (
    ConvAutoencoder,
    TiedAutoencoder,
    UntiedAutoencoder,
    autoencoder_loss,
    masking_noise,
    reconstruction_loss,
    sparsity_penalty,
    tied_decode,
    tied_encode,
    tied_preactivation,
    weight_decay,
)

# ---- sparse penalty: the closed-form δ term of Ng's "Sparse autoencoder" -----------------------------------------


@pytest.mark.parametrize("rho,beta", [(0.05, 3.0), (0.3, 0.7)])
def test_sparsity_gradient_matches_closed_form_delta(rho, beta):
    m, d, n = 16, 5, 4
    kx, kw, kb = jax.random.split(jax.random.key(0), 3)
    x = jax.random.normal(kx, (m, d))
    w = jax.random.normal(kw, (d, n))
    b = 0.5 * jax.random.normal(kb, (n,))
    a = x @ w + b  # pre-activations a_ij

    grad_a = jax.grad(lambda a: sparsity_penalty(jax.nn.sigmoid(a), rho, beta))(a)
    z = jax.nn.sigmoid(a)
    rho_hat = jnp.mean(z, axis=0)
    f_prime = z * (1 - z)
    delta = (1.0 / m) * beta * (-rho / rho_hat + (1 - rho) / (1 - rho_hat)) * f_prime
    np.testing.assert_allclose(grad_a, delta, rtol=1e-5, atol=1e-7)

    # through the tied model's encoder: ∂J/∂W = Xᵀ δ, ∂J/∂b = Σ_i δ_i
    model = TiedAutoencoder(hidden=n, activation="sigmoid")
    params = {"kernel": w, "bias": b, "bias_out": jnp.zeros((d,))}
    g = jax.grad(lambda p: sparsity_penalty(model.apply({"params": p}, x, method="encode"), rho, beta))(params)
    np.testing.assert_allclose(g["kernel"], x.T @ delta, rtol=1e-4, atol=1e-6)
    np.testing.assert_allclose(g["bias"], delta.sum(0), rtol=1e-4, atol=1e-6)
    np.testing.assert_allclose(g["bias_out"], 0.0)


def test_sparsity_penalty_value_and_zero_at_target():
    rho, beta = 0.05, 2.0
    code = jnp.full((8, 3), rho)
    assert float(sparsity_penalty(code, rho, beta)) == pytest.approx(0.0, abs=1e-6)
    z = np.random.default_rng(0).uniform(0.01, 0.99, (10, 4))
    rh = z.mean(0)
    want = beta * np.sum(rho * np.log(rho / rh) + (1 - rho) * np.log((1 - rho) / (1 - rh)))
    np.testing.assert_allclose(sparsity_penalty(jnp.asarray(z, jnp.float32), rho, beta), want, rtol=1e-5)


# ---- the linear tied autoencoder learns the principal subspace ---------------------------------------------------


def test_linear_tied_autoencoder_learns_top_k_principal_subspace():
    rng = np.random.default_rng(0)
    m, d, k = 200, 6, 2
    std = np.sqrt([10.0, 5.0, 2.0, 0.1, 0.05, 0.01])
    q, _ = np.linalg.qr(rng.normal(size=(d, d)))  # a random rotation of the axes
    x = (rng.normal(size=(m, d)) * std) @ q.T + rng.normal(size=d)  # not centered: the biases absorb the mean
    x = x.astype(np.float32)

    model = TiedAutoencoder(hidden=k, activation="identity", output_activation="identity")
    params = model.init(jax.random.key(0), x[:1])["params"]
    opt = optax.adam(0.03)

    def loss(p):
        return autoencoder_loss(model, p, x, kind="squared", train=False)[0]

    @jax.jit
    def train(params):
        def step(carry, _):
            p, s = carry
            g = jax.grad(loss)(p)
            u, s = opt.update(g, s, p)
            return (optax.apply_updates(p, u), s), None

        (p, _), _ = jax.lax.scan(step, (params, opt.init(params)), None, length=1500)
        return p

    params = train(params)
    xc = x - x.mean(0)
    _, _, vt = np.linalg.svd(xc, full_matrices=False)
    v_k = vt[:k].T
    p_true = v_k @ v_k.T
    w = np.asarray(params["kernel"], np.float64)
    p_learnt = w @ np.linalg.solve(w.T @ w, w.T)
    assert np.linalg.norm(p_learnt - p_true, 2) < 1e-3  # = sin of the largest principal angle (~1e-6 seen)
    # at the optimum W has orthonormal columns (WᵀW = I), the reconstruction is the projection
    np.testing.assert_allclose(w.T @ w, np.eye(k), atol=1e-3)


# ---- denoising -------------------------------------------------------------------------------------------------


def test_masking_noise_fraction_determinism_and_no_rescale():
    x = jnp.ones((200, 50)) * 2.0
    f = 0.3
    y = masking_noise(x, f, key=jax.random.key(1))
    n = x.size
    zero_share = float(jnp.mean(y == 0))
    assert abs(zero_share - f) < 3 * np.sqrt(f * (1 - f) / n)
    assert set(np.unique(np.asarray(y)).tolist()) == {0.0, 2.0}  # kept components are unscaled
    np.testing.assert_array_equal(y, masking_noise(x, f, key=jax.random.key(1)))
    np.testing.assert_array_equal(y, jax.jit(lambda x, k: masking_noise(x, f, key=k))(x, jax.random.key(1)))
    assert not np.array_equal(y, masking_noise(x, f, key=jax.random.key(2)))
    # the same mask as the framework's dropout with the same key (which rescales the kept units)
    np.testing.assert_array_equal(y == 0, dropout(x, f, key=jax.random.key(1)) == 0)
    assert masking_noise(x, 0.0) is x or np.array_equal(masking_noise(x, 0.0), x)


def test_denoising_loss_compares_with_clean_input():
    x = jax.random.uniform(jax.random.key(0), (8, 10))
    model = UntiedAutoencoder(hidden=4, output_activation="identity")
    variables = model.init(jax.random.key(1), x)
    key = jax.random.key(3)
    loss, aux = autoencoder_loss(model, variables, x, key=key, kind="squared", corruption=0.4)
    k_noise, _ = jax.random.split(key)
    x_tilde = masking_noise(x, 0.4, key=k_noise)
    x_hat, _ = model.apply(variables, x_tilde)
    np.testing.assert_allclose(loss, jnp.mean(jnp.sum((x_hat - x) ** 2, -1)), rtol=1e-5)
    assert not np.allclose(loss, jnp.mean(jnp.sum((x_hat - x_tilde) ** 2, -1)))
    assert float(aux["sparsity"]) == 0.0 and float(aux["weight_decay"]) == 0.0


# ---- the tied encoder and decoder functions --------------------------------------------------------------------------


@pytest.mark.parametrize("act_name,act", [("identity", lambda a: a), ("sigmoid", jax.nn.sigmoid)])
def test_tied_functions_agree_with_tied_autoencoder_and_numpy(act_name, act):
    x = jax.random.normal(jax.random.key(0), (5, 2, 3))  # flattened to 6 inputs by the model
    model = TiedAutoencoder(hidden=4, activation=act_name, output_activation="identity")
    params = model.init(jax.random.key(1), x)["params"]
    params = {
        **params,
        "bias": jax.random.normal(jax.random.key(2), (4,)),
        "bias_out": jax.random.normal(jax.random.key(3), (6,)),
    }  # non-zero biases
    h = x.reshape(5, -1)
    z = tied_encode(params, h, act)
    x_hat = tied_decode(params, z, h.shape)
    want_x_hat, want_code = model.apply({"params": params}, x)
    np.testing.assert_array_equal(z, want_code)
    np.testing.assert_array_equal(x_hat.reshape(x.shape), want_x_hat)
    np.testing.assert_array_equal(tied_preactivation(params, h), h @ params["kernel"] + params["bias"])
    # a hand-written numpy reference in float64
    w, b, b_out = (np.asarray(params[k], np.float64) for k in ("kernel", "bias", "bias_out"))
    a = np.asarray(h, np.float64) @ w + b
    z_np = a if act_name == "identity" else 1 / (1 + np.exp(-a))
    np.testing.assert_allclose(z, z_np, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(x_hat, z_np @ w.T + b_out, rtol=1e-5, atol=1e-5)
    # no 'bias' entry: no bias (the model's layout when a bias-absorbing norm follows)
    no_bias = {k: v for k, v in params.items() if k != "bias"}
    np.testing.assert_array_equal(tied_preactivation(no_bias, h), h @ params["kernel"])


@pytest.mark.parametrize(
    "shape,strides", [((2, 7, 6, 3), None), ((2, 8, 6, 3), (2, 2)), ((2, 7, 6, 3), (2, 2)), ((2, 9, 3), (2,))]
)
def test_tied_functions_conv_kernels(shape, strides):
    nd = len(shape) - 2
    ks = jax.random.split(jax.random.key(4), 4)
    x = jax.random.normal(ks[0], shape)
    params = {
        "kernel": jax.random.normal(ks[1], (3,) * nd + (3, 5)),
        "bias": jax.random.normal(ks[2], (5,)),
        "bias_out": jax.random.normal(ks[3], (3,)),
    }
    sp = "DHW"[-nd:]
    dims = (f"N{sp}C", f"{sp}IO", f"N{sp}C")
    st = strides or (1,) * nd
    z = tied_encode(params, x, jnp.tanh, strides)
    want_z = jnp.tanh(
        jax.lax.conv_general_dilated(x, params["kernel"], st, "SAME", dimension_numbers=dims) + params["bias"]
    )
    assert z.shape == (shape[0],) + tuple(-(-s // t) for s, t in zip(shape[1:-1], st)) + (5,)
    np.testing.assert_array_equal(z, want_z)
    x_hat = tied_decode(params, z, x.shape, strides)
    assert x_hat.shape == x.shape  # cropped to the input's spatial size
    full = jax.lax.conv_transpose(z, params["kernel"], st, "SAME", dimension_numbers=dims, transpose_kernel=True)
    np.testing.assert_array_equal(
        x_hat, full[(slice(None),) + tuple(slice(0, s) for s in shape[1:-1])] + params["bias_out"]
    )
    if all(s % t == 0 for s, t in zip(shape[1:-1], st)):
        # then the decoder is the adjoint of the encoder's convolution: <conv(x), z> = <x, X′ − b′> (with 'SAME'
        # padding a size not divisible by the stride pads the two differently)
        conv = jax.lax.conv_general_dilated(x, params["kernel"], st, "SAME", dimension_numbers=dims)
        np.testing.assert_allclose(jnp.vdot(conv, z), jnp.vdot(x, x_hat - params["bias_out"]), rtol=1e-4)


def test_tied_decode_of_a_1x1_conv_is_the_dense_formula():
    ks = jax.random.split(jax.random.key(5), 4)
    w = jax.random.normal(ks[0], (3, 5))
    params = {
        "kernel": w[None, None],
        "bias": jax.random.normal(ks[1], (5,)),
        "bias_out": jax.random.normal(ks[2], (3,)),
    }
    dense = {**params, "kernel": w}
    x = jax.random.normal(ks[3], (2, 4, 4, 3))
    z = tied_encode(params, x, jax.nn.sigmoid)
    np.testing.assert_allclose(
        z, tied_encode(dense, x.reshape(-1, 3), jax.nn.sigmoid).reshape(z.shape), rtol=1e-6, atol=1e-6
    )
    x_hat = tied_decode(params, z, x.shape)
    np.testing.assert_allclose(
        x_hat, (z.reshape(-1, 5) @ w.T + params["bias_out"]).reshape(x.shape), rtol=1e-5, atol=1e-5
    )


# ---- models and losses ---------------------------------------------------------------------------------------------


def test_autoencoder_shapes_and_params():
    x = jax.random.uniform(jax.random.key(0), (3, 4, 5))  # flattened to 20 inputs by the dense autoencoders
    tied = TiedAutoencoder(hidden=7)
    v = tied.init(jax.random.key(1), x)
    assert jax.tree.map(jnp.shape, v["params"]) == {"kernel": (20, 7), "bias": (7,), "bias_out": (20,)}
    x_hat, code = tied.apply(v, x)
    assert x_hat.shape == x.shape and code.shape == (3, 7)
    np.testing.assert_allclose(tied.apply(v, x, method="encode"), code)
    assert float(x_hat.min()) > 0 and float(x_hat.max()) < 1  # sigmoid output by default

    untied = UntiedAutoencoder(hidden=7, norm="layer", dropout="dropout", dropout_rate=0.5)
    v = untied.init(jax.random.key(1), x)
    shapes = jax.tree.map(jnp.shape, v["params"])
    assert shapes["encoder"]["kernel"] == (20, 7) and shapes["decoder"]["kernel"] == (7, 20)
    y1, c1 = untied.apply(v, x, train=True, rngs={"dropout": jax.random.key(0)})
    y0, c0 = untied.apply(v, x, train=False)
    np.testing.assert_allclose(c1, c0, rtol=1e-6)  # the code is measured before dropout
    assert not np.allclose(y1, y0)


def test_conv_autoencoder_shapes_and_params():
    conv = ConvAutoencoder(channels=(4, 6))
    img = jax.random.uniform(jax.random.key(2), (2, 7, 6, 3))
    v = jax.jit(conv.init)(jax.random.key(1), img)
    x_hat, code = jax.jit(conv.apply)(v, img)
    assert x_hat.shape == img.shape and code.shape == (2, 2, 2, 6)
    assert set(v["params"]) == {"conv_0", "conv_1", "deconv_0", "deconv_1"}
    seq = jax.random.uniform(jax.random.key(2), (2, 9, 2))
    conv1 = ConvAutoencoder(channels=(4,), spatial_dims=1)
    x_hat, code = jax.jit(lambda k, s: conv1.apply(conv1.init(k, s), s))(jax.random.key(1), seq)
    assert x_hat.shape == seq.shape and code.shape == (2, 5, 4)


def test_cross_entropy_and_squared_match_numpy():
    rng = np.random.default_rng(0)
    x = rng.uniform(0, 1, (5, 7)).astype(np.float32)
    logits = rng.normal(size=(5, 7)).astype(np.float32)
    p = 1 / (1 + np.exp(-logits.astype(np.float64)))
    want = np.mean(-np.sum(x * np.log(p) + (1 - x) * np.log(1 - p), axis=1))
    np.testing.assert_allclose(reconstruction_loss(jnp.asarray(p, jnp.float32), x, "cross_entropy"), want, rtol=1e-5)
    np.testing.assert_allclose(reconstruction_loss(logits, x, "cross_entropy", from_logits=True), want, rtol=1e-5)
    np.testing.assert_allclose(reconstruction_loss(p, x, "squared"), np.mean(np.sum((p - x) ** 2, 1)), rtol=1e-5)

    # through the model: autoencoder_loss computes cross-entropy from the logits, equal to the formula on x̂
    model = TiedAutoencoder(hidden=3, output_activation="sigmoid")
    v = model.init(jax.random.key(0), x)
    loss, _ = autoencoder_loss(model, v, x, kind="cross_entropy", train=False)
    x_hat = np.asarray(model.apply(v, x)[0], np.float64)
    want = np.mean(-np.sum(x * np.log(x_hat) + (1 - x) * np.log(1 - x_hat), axis=1))
    np.testing.assert_allclose(loss, want, rtol=1e-5)


def test_weight_decay_skips_biases():
    params = {"kernel": jnp.ones((2, 3)), "bias": jnp.ones((3,)) * 10, "sub": {"kernel": 2 * jnp.ones((3, 1))}}
    np.testing.assert_allclose(weight_decay(params, 0.1), 0.05 * (6 + 12))


# ---- bad input ---------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("rho", [0.0, 1.0, -0.1, 1.5, float("nan")])
def test_rho_outside_open_unit_interval(rho):
    with pytest.raises(ValueError, match=r"rho.*\(0, 1\)"):
        sparsity_penalty(jnp.full((2, 3), 0.5), rho, 1.0)
    model = TiedAutoencoder(hidden=2)
    x = jnp.ones((2, 3))
    with pytest.raises(ValueError, match=r"rho.*\(0, 1\)"):
        autoencoder_loss(model, model.init(jax.random.key(0), x), x, rho=rho, beta=1.0, train=False)


@pytest.mark.parametrize("fraction", [1.0, -0.2, 1.5])
def test_masking_fraction_outside_half_open_unit_interval(fraction):
    with pytest.raises(ValueError, match=r"fraction.*\[0, 1\)"):
        masking_noise(jnp.ones((2, 3)), fraction, key=jax.random.key(0))
    model = TiedAutoencoder(hidden=2)
    x = jnp.ones((2, 3))
    with pytest.raises(ValueError, match=r"\[0, 1\)"):
        autoencoder_loss(model, model.init(jax.random.key(0), x), x, key=jax.random.key(0), corruption=fraction)


def test_other_bad_inputs():
    with pytest.raises(ValueError, match="needs a PRNG key"):
        masking_noise(jnp.ones((2, 3)), 0.2)
    with pytest.raises(ValueError, match="beta"):
        sparsity_penalty(jnp.full((2, 3), 0.5), 0.05, -1.0)
    with pytest.raises(ValueError, match="unknown reconstruction loss kind"):
        reconstruction_loss(jnp.ones((2, 3)), jnp.ones((2, 3)), "l1")
    with pytest.raises(ValueError, match=r"hidden \(the number of code units\) must be an int ≥ 1, got 0"):
        UntiedAutoencoder(hidden=0)
    with pytest.raises(ValueError, match="instance"):
        TiedAutoencoder(hidden=2, norm="instance")
    with pytest.raises(ValueError, match="unknown output_activation"):
        TiedAutoencoder(hidden=2, output_activation="softplus")

"""Greedy layer-wise autoencoder pretraining then fine-tuning, through train.py; resume mid-pretraining; bad input."""

import os
import subprocess
import sys

import numpy as np
import pytest
from test_train import ROOT, final_state, load_config

from jaxnorm.lab import data as data_lib
from jaxnorm.lab import rng
from jaxnorm.lab.train import loop, pretrain
from jaxnorm.lab.train.metrics import read_metrics


def small(**kw):
    c = load_config("autoencoder_pretrain", num_steps=20, eval_every=20, checkpoint_every=5, log_every=5)
    c.model_kwargs.hidden = (16, 8)
    c.pretrain.layers = (16, 8)
    c.pretrain.steps = 10
    for k, v in kw.items():
        c.pretrain[k] = v
    return c


def test_pretrain_then_finetune_through_train_py(tmp_path):
    wd = tmp_path / "run"
    r = subprocess.run(
        [
            sys.executable,
            os.path.join(ROOT, "train.py"),
            "--config",
            os.path.join(ROOT, "configs", "autoencoder_pretrain.py"),
            "--workdir",
            str(wd),
            "--config.num_steps=20",
            "--config.pretrain.steps=10",
            "--config.pretrain.layers=(100,100)",
            "--config.progress=False",
        ],
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, "JAX_PLATFORMS": "cpu"},
    )
    assert r.returncode == 0, r.stderr[-3000:]
    rows = read_metrics(wd)
    pre = [x for x in rows if x["split"] == "pretrain"]
    assert [x["layer"] for x in pre] == [0, 1]  # logged at the end of each layer (log_every=50 > 10 steps)
    assert all(np.isfinite(x["loss"]) for x in pre)
    assert any(x["split"] == "eval" for x in rows)
    assert os.listdir(wd / "pretrain" / "checkpoints") and os.listdir(wd / "checkpoints")
    from jaxnorm.lab import plots

    paths = plots.make_plots([str(wd)], str(tmp_path / "figs"))
    assert {"curves.png", "ae_filters.png", "ae_reconstructions.png"} <= {os.path.basename(p) for p in paths}


def test_pretrained_weights_initialize_the_supervised_model_and_reduce_reconstruction_loss(tmp_path):
    c = small(kind="both")
    c.num_steps = 1  # one fine-tuning step: the layers are (nearly) the pretrained ones
    loop.train_and_evaluate(c, str(tmp_path / "a"))
    pre = [x for x in read_metrics(tmp_path / "a") if x["split"] == "pretrain"]
    for layer in (0, 1):  # each layer's reconstruction loss falls (rows at its steps 5 and 10)
        losses = [x["loss"] for x in pre if x["layer"] == layer]
        assert len(losses) == 2 and losses[1] < losses[0], (layer, losses)
    c0 = small()
    c0.pretrain.layers = ()
    c0.num_steps = 1
    loop.train_and_evaluate(c0, str(tmp_path / "b"))
    _, a = final_state(tmp_path / "a")
    _, b = final_state(tmp_path / "b")
    # the supervised layers start from the autoencoders' trained kernels: one step away from them, where the run
    # without pretraining is its random init away (measured Frobenius distances 0.02 vs 2.1 for dense_0, 0.09 vs 1.1
    # for dense_1; a layer that is never copied gives a ratio near 1)
    _, aes = pretrain.restore_autoencoders(loop.load_experiment(str(tmp_path / "a")), str(tmp_path / "a"))
    for name in ("dense_0", "dense_1"):
        kernel = np.asarray(aes[name]["kernel"])
        near = np.linalg.norm(a[f"/params/{name}/kernel"] - kernel)
        far = np.linalg.norm(b[f"/params/{name}/kernel"] - kernel)
        assert near < 0.2 * far, (name, near, far)
    # the head is not pretrained: both runs take one step from the same initial head (measured max |Δ| 0.018)
    np.testing.assert_allclose(a["/params/head/kernel"], b["/params/head/kernel"], atol=0.05)


def test_resume_mid_pretraining_is_bit_identical(tmp_path, monkeypatch):
    loop.train_and_evaluate(small(), str(tmp_path / "ref"))
    real = data_lib.batch_at
    fired = []

    def interrupting(split, step, batch_size, **kw):
        # pretraining batches use the 'pretrain_data' stream: stop at pretraining step 11 (layer 1, after the
        # checkpoint at 10)
        if kw.get("seed") == rng.stream_seed(0, "pretrain_data") and step == 11 and not fired:
            fired.append(step)
            raise KeyboardInterrupt
        return real(split, step, batch_size, **kw)

    monkeypatch.setattr(data_lib, "batch_at", interrupting)
    with pytest.raises(KeyboardInterrupt, match=r"interrupted at pretraining step 11;"):
        loop.train_and_evaluate(small(), str(tmp_path / "run"))
    monkeypatch.setattr(data_lib, "batch_at", real)
    assert not os.path.exists(tmp_path / "run" / "checkpoints" / "20")
    loop.train_and_evaluate(small(), str(tmp_path / "run"))
    _, a = final_state(tmp_path / "ref")
    _, b = final_state(tmp_path / "run")
    for k in a:
        np.testing.assert_array_equal(a[k], b[k], err_msg=k)


@pytest.mark.parametrize(
    "change,match",
    [
        (
            {"layers": (16, 9)},
            r"pretrain.layers=\[16, 9\] does not match the first layers of 'mlp', whose sizes "
            r"are \[16, 8\]",
        ),
        ({"rho": 1.5}, r"pretrain.rho: the target activation rho must be strictly inside \(0, 1\)"),
        ({"corruption": 1.0}, r"pretrain.corruption: the masking fraction .* must be in \[0, 1\)"),
        (
            {"kind": "contractive"},
            r"unknown pretrain.kind 'contractive'; valid pretrain.kinds: 'denoising', 'sparse', 'both'",
        ),
    ],
)
def test_bad_pretraining_config(tmp_path, change, match):
    with pytest.raises(ValueError, match=match):
        loop.train_and_evaluate(small(**change), str(tmp_path / "wd"))
    assert not (tmp_path / "wd").exists()


def test_pretraining_a_model_without_dense_layers_is_refused(tmp_path):
    c = load_config("smoke")
    c.pretrain.layers = (8,)
    c.model = "vgg"
    c.model_kwargs = {"cfg": ("M",)}  # pooling only: nothing to initialize
    with pytest.raises(ValueError, match=r"pretraining needs dense or conv layers .* 'vgg' has none"):
        loop.train_and_evaluate(c, str(tmp_path / "wd"))
    assert not (tmp_path / "wd").exists()


def test_conv_layers_are_pretrained_as_convolutional_autoencoders(tmp_path):
    """Greedy pretraining of a CNN's convolutions (1-D, one strided): tied conv autoencoders of each layer's input
    in the network, then fine-tuning."""
    c = load_config("default", num_steps=4, eval_every=4, checkpoint_every=4, log_every=2, batch_size=32)
    c.model_kwargs = {"channels": (4, 4), "strides": (1, 2)}
    c.pretrain.layers = (4, 4)
    c.pretrain.steps = 6
    c.pretrain.learning_rate = 1e-2
    loop.train_and_evaluate(c, str(tmp_path / "cnn"))
    pre = [x for x in read_metrics(tmp_path / "cnn") if x["split"] == "pretrain"]
    assert [x["layer"] for x in pre] == [0, 0, 0, 1, 1, 1] and all(np.isfinite(x["loss"]) for x in pre)
    assert pre[2]["loss"] < pre[0]["loss"]  # layer 0's reconstruction improves


def test_tied_conv_decoder_is_the_transpose_of_the_encoder():
    """⟨conv(x, W), z⟩ = ⟨x, convᵀ(z, W)⟩: the decoder is the adjoint of the encoder's linear part."""
    import jax
    import jax.numpy as jnp

    from jaxnorm.lab.models.autoencoder import tied_decode, tied_encode

    k = jax.random.split(jax.random.key(0), 3)
    ae = {"kernel": jax.random.normal(k[0], (3, 3, 2, 5)), "bias": jnp.zeros(5), "bias_out": jnp.zeros(2)}
    for strides in [(1, 1), (2, 2)]:
        x = jax.random.normal(k[1], (2, 6, 6, 2))
        z = tied_encode(ae, x, lambda v: v, strides)
        zz = jax.random.normal(k[2], z.shape)
        lhs = jnp.vdot(z, zz)
        rhs = jnp.vdot(x, tied_decode(ae, zz, x.shape, strides))
        np.testing.assert_allclose(lhs, rhs, rtol=1e-4)

"""Tests of the model zoo (jaxnorm.lab.models): every model × norm trains and evaluates; placement, bias rule, registries,
presets (Ioffe's MLP, Santurkar's DLN, ResNet depths). Tiny widths and inputs keep the file fast."""

import functools
import re

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jaxnorm.lab.models as zoo
from jaxnorm.lab.models import (
    CNN1D,
    DROPOUTS,
    MLP,
    MODELS,
    NORMS,
    DeepLinear,
    ResNet,
    SimpleCNN,
    build_model,
    ioffe_mlp,
    make_dropout,
    make_norm,
    norm_spec,
)

BATCH_STAT_NORMS = {"batch", "batch_renorm", "lp_batch_norm", "noisy_batch_norm"}

# Speed: on CPU the cost of these tests is XLA compilation. Everything runs eagerly, so that each primitive is compiled
# once per shape and reused across the model × norm matrix (measured faster than one jit per combination), and the
# keys use the 'unsafe_rbg' PRNG, whose kernels compile several times faster than threefry's.
IMPL = "unsafe_rbg"
KEY = jax.random.key(0, impl=IMPL)

# name -> (build_model name, tiny kwargs, input shape, dense?). The shapes are chosen to coincide across models (3×3
# convs 3→4 then 4→4 at 8×8; dense 16→8 then 8→8), so that most ops compile once for the whole matrix.
TINY = {
    "mlp": ("mlp", dict(hidden=(8, 8), num_groups=4), (2, 16), True),
    "deep_linear": ("deep_linear", dict(depth=4, width=8, num_groups=2), (2, 8), True),
    "simple_cnn": ("simple_cnn", dict(channels=(4, 4)), (2, 8, 8, 3), False),
    "vgg": ("vgg", dict(cfg=(4, 4, "M")), (2, 8, 8, 3), False),
    "resnet_basic": ("resnet", dict(stage_sizes=(1,), block="basic", width=1 / 16), (2, 8, 8, 3), False),
    "resnet_bottleneck": ("resnet", dict(stage_sizes=(1,), block="bottleneck", width=1 / 16), (2, 8, 8, 3), False),
    "cnn1d": ("cnn1d", dict(channels=(4,), strides=(2,), kernel_size=3), (2, 16, 1), False),
}


def _key(seed):
    return jax.random.key(seed, impl=IMPL)


def _x(shape, seed=1):
    return jax.random.normal(_key(seed), shape)


def _tiny(name, **kw):
    model_name, base, shape, _ = TINY[name]
    return build_model(model_name, **{**base, **kw}), _x(shape)


def _shapes(model, x):
    """The variables' shapes and dtypes, without computing them."""
    return jax.eval_shape(lambda: model.init(KEY, x, train=False))


def _paths(tree, prefix=()):
    """All (path tuple, leaf) pairs of a nested dict."""
    for k, v in tree.items():
        if isinstance(v, dict) or hasattr(v, "items"):
            yield from _paths(v, prefix + (k,))
        else:
            yield prefix + (k,), v


def _train_and_eval(model, variables, x, key):
    """Loss + gradient through a train-mode apply (new batch_stats, dropout from ``key``) and an eval-mode apply."""
    params = variables["params"]
    rest = {k: v for k, v in variables.items() if k != "params"}

    def loss(p):
        out, state = model.apply({"params": p, **rest}, x, train=True, mutable=["batch_stats"], rngs={"dropout": key})
        return jnp.mean(jax.nn.logsumexp(out, -1) - out[:, 0]), state

    (l, state), g = jax.value_and_grad(loss, has_aux=True)(params)
    return l, g, state, model.apply(variables, x, train=False)


# ---- every model × norm ------------------------------------------------------------------------------------------


@pytest.mark.parametrize("norm", NORMS)
@pytest.mark.parametrize("name", list(TINY))
def test_model_norm_matrix(name, norm):
    model_name, base, shape, dense = TINY[name]
    kw = dict(base, norm=norm, dropout="dropout", dropout_rate=0.1)
    if dense and norm == "instance":
        with pytest.raises(ValueError, match="instance norm is undefined"):
            build_model(model_name, **kw)
        return
    model = build_model(model_name, **kw)
    x = _x(shape)
    variables = model.init(KEY, x, train=False)
    assert ("batch_stats" in variables) == (norm in BATCH_STAT_NORMS) == norm_spec(norm).batch_stats
    loss, grads, state, ev1 = _train_and_eval(model, variables, x, _key(1))
    ev2 = model.apply(variables, x, train=False)
    assert np.isfinite(float(loss))
    assert jax.tree.structure(grads) == jax.tree.structure(variables["params"])
    assert all(bool(jnp.all(jnp.isfinite(g))) for g in jax.tree.leaves(grads))
    assert sum(float(jnp.sum(jnp.abs(g))) for g in jax.tree.leaves(grads)) > 0
    assert ev1.shape == (2, 10) and ev1.dtype == jnp.float32
    np.testing.assert_array_equal(np.asarray(ev1), np.asarray(ev2))  # eval: deterministic, no dropout
    if norm in BATCH_STAT_NORMS:  # train mode moved the running statistics
        old, new = variables["batch_stats"], state["batch_stats"]
        assert jax.tree.structure(old) == jax.tree.structure(new)
        assert any(not np.allclose(a, b) for a, b in zip(jax.tree.leaves(old), jax.tree.leaves(new)))
    else:
        assert not state


def test_registries_list_the_expected_names():
    assert NORMS[:8] == ("none", "batch", "layer", "instance", "group", "rms", "batch_renorm", "lp_batch_norm")
    assert NORMS[8:] in (("dyt",), ("noisy_batch_norm", "dyt"))  # noisy BN: registered when jaxnorm.nn has it
    assert DROPOUTS == ("none", "dropout", "original", "spatial", "gaussian", "alpha")
    for name in (
        "mlp",
        "ioffe_mlp",
        "deep_linear",
        "simple_cnn",
        "cnn1d",
        "vgg",
        "vgg11",
        "vgg_small",
        "resnet18",
        "resnet34",
        "resnet50",
    ):
        assert name in MODELS


# ---- placement and the bias rule -----------------------------------------------------------------------------------


def _norm_inputs(model, variables, x):
    """(module class name, input) of every module call, in call order."""
    calls = []

    def record(next_fun, args, kwargs, context):
        if context.method_name == "__call__" and context.module.name is not None:  # not the top-level model
            calls.append((type(context.module).__name__, context.module.name, args[0] if args else None))
        return next_fun(*args, **kwargs)

    with nn.intercept_methods(record):
        model.apply(variables, x, train=False)
    return calls


# the other tests reuse the matrix's shapes, so that their eager ops are already compiled
IMG = (2, 8, 8, 3)
CNN = dict(channels=(4, 4))


@pytest.mark.parametrize("cls,x", [(MLP, _x((2, 16))), (SimpleCNN, _x(IMG))])
def test_norm_position_changes_layer_order(cls, x):
    kw = dict(hidden=(8, 8)) if cls is MLP else CNN
    seen = {}
    for pos in ("before", "after"):
        model = cls(norm="batch", norm_position=pos, **kw)
        variables = model.init(KEY, x, train=False)
        calls = _norm_inputs(model, variables, x)
        names = [c[1] for c in calls]
        assert names[:2] == (["dense_0", "norm_0"] if cls is MLP else ["conv_0", "norm_0"])
        norm_in = [c[2] for c in calls if c[0] == "BatchNorm"]
        assert len(norm_in) == 2
        if pos == "after":  # the norm sees ReLU outputs
            assert all(float(v.min()) >= 0 for v in norm_in)
        else:  # the norm sees pre-activations
            assert all(float(v.min()) < 0 for v in norm_in)
        seen[pos] = variables
    # a batch norm directly after the layer makes its bias redundant ('before'); after the activation it is not
    layer = "dense_0" if cls is MLP else "conv_0"
    assert "bias" not in seen["before"]["params"][layer]
    assert "bias" in seen["after"]["params"][layer]


def test_norm_position_changes_output_with_same_parameters():
    x = _x(IMG)
    before = SimpleCNN(**CNN, norm="layer", norm_position="before")
    after = SimpleCNN(**CNN, norm="layer", norm_position="after")
    variables = before.init(KEY, x, train=False)
    assert jax.tree.structure(variables) == jax.tree.structure(after.init(KEY, x, train=False))
    y1 = before.apply(variables, x, train=False)
    y2 = after.apply(variables, x, train=False)
    assert not np.allclose(y1, y2)


@pytest.mark.parametrize("name", ["simple_cnn", "vgg", "resnet_bottleneck", "cnn1d"])
def test_no_bias_on_convs_followed_by_batch_norm(name):
    model_name, base, shape, _ = TINY[name]
    x = _x(shape)
    for norm, pos, expect_bias in [
        ("batch", "before", False),
        ("batch_renorm", "before", False),
        ("instance", "before", False),
        ("layer", "before", True),
        ("group", "before", True),
        ("none", "before", True),
        ("lp_batch_norm", "before", True),
    ]:
        params = _shapes(build_model(model_name, **base, norm=norm, norm_position=pos), x)["params"]
        convs = {p[:-1] for p, _ in _paths(params) if any("conv" in str(k) for k in p)}
        with_bias = {p[:-1] for p, _ in _paths(params) if any("conv" in str(k) for k in p) and p[-1] == "bias"}
        assert convs
        assert (with_bias == convs) if expect_bias else not with_bias, (norm, pos, sorted(with_bias))
    # 'after': the conv feeds the activation, not the norm, so it keeps its bias (a ResNet projection shortcut
    # feeds its norm directly and does not)
    params = _shapes(build_model(model_name, **base, norm="batch", norm_position="after"), x)["params"]
    for p, _ in _paths(params):
        if p[-1] == "kernel" and any("conv" in str(k) for k in p):
            has_bias = "bias" in _get(params, p[:-1])
            assert has_bias == (p[-2] != "proj_conv"), p


def _get(tree, path):
    for k in path:
        tree = tree[k]
    return tree


def test_use_bias_override():
    x = _x(IMG)
    params = _shapes(SimpleCNN(**CNN, norm="batch", use_bias=True), x)["params"]
    assert "bias" in params["conv_0"]
    params = _shapes(SimpleCNN(**CNN, norm="none", use_bias=False), x)["params"]
    assert "bias" not in params["conv_0"]


# ---- registries and errors -----------------------------------------------------------------------------------------


def test_unknown_names_raise_listing_valid_ones():
    with pytest.raises(ValueError, match="unknown model 'resnet19'.*'resnet18'"):
        build_model("resnet19")
    with pytest.raises(ValueError, match="unknown norm 'bn'.*'batch_renorm'.*'lp_batch_norm'"):
        build_model("simple_cnn", norm="bn")
    with pytest.raises(ValueError, match="unknown dropout 'drop'.*'spatial'.*'alpha'"):
        build_model("mlp", dropout="drop")
    with pytest.raises(ValueError, match="unknown norm 'foo'.*'group'"):
        make_norm("foo")
    with pytest.raises(ValueError, match="unknown dropout 'foo'.*'gaussian'"):
        make_dropout("foo")
    with pytest.raises(ValueError, match="unknown norm_position 'middle'.*'before'.*'after'"):
        SimpleCNN(norm_position="middle")
    with pytest.raises(ValueError, match="unknown activation 'relu6'.*'sigmoid'"):
        MLP(activation="relu6")
    with pytest.raises(ValueError, match="unknown depth 19.*18, 34, 50"):
        ResNet(depth=19)
    with pytest.raises(ValueError, match="unknown VGG cfg 'vgg12'.*'vgg11'"):
        build_model("vgg", cfg="vgg12")


def test_build_model_is_case_insensitive_and_forwards_kwargs():
    model = build_model("ResNet-18", norm="group", width=0.5)
    assert isinstance(model, ResNet) and model.depth == 18 and model.norm == "group" and model.width == 0.5
    # lists and dicts from a config are frozen: models stay hashable (usable as static jit arguments)
    model = build_model("vgg", cfg=[4, "M", 8], norm="layer", norm_kwargs={"axes": -1})
    assert model.cfg == (4, "M", 8) and dict(model.norm_kwargs) == {"axes": -1}
    assert hash(model) == hash(build_model("vgg", cfg=(4, "M", 8), norm="layer", norm_kwargs={"axes": -1}))


def test_make_norm_checks_options_and_builds_layers():
    with pytest.raises(ValueError, match="norm 'layer' takes no option.*momentum"):
        make_norm("layer", momentum=0.9)
    with pytest.raises(ValueError, match="not both"):
        make_norm("group", num_groups=4, group_size=2)
    f = make_norm("batch", momentum=0.9, axis_name="batch")
    assert f.batch_stats and f.absorbs_bias
    layer = f(16)
    assert layer.momentum == 0.9 and layer.axis_name == "batch"
    assert make_norm("group")(64).num_groups == 32
    assert make_norm("group")(8).num_groups == 8  # min(32, C) on small conv layers
    assert make_norm("group", group_size=4)(8).group_size == 4
    assert make_norm("lp_batch_norm", p="inf")(8).p == "inf"
    assert isinstance(make_norm("none")(8), zoo.Identity)
    with pytest.raises(ValueError, match="instance norm is undefined"):
        make_norm("instance")(8, dense=True)


def test_model_norm_options_reach_the_layers():
    x = _x(IMG)
    model = SimpleCNN(**CNN, norm="batch", momentum=0.5)
    variables = model.init(KEY, x, train=False)
    _, state = model.apply(variables, x, train=True, mutable=["batch_stats"])
    conv_out = nn.Conv(4, (3, 3), padding="SAME", use_bias=False).apply({"params": variables["params"]["conv_0"]}, x)
    np.testing.assert_allclose(
        state["batch_stats"]["norm_0"]["mean"], 0.5 * np.asarray(conv_out.mean((0, 1, 2))), rtol=1e-4, atol=1e-6
    )
    # a model-level option that a norm does not take is ignored for it (sweeps over NORMS keep one config)
    _shapes(SimpleCNN(**CNN, norm="layer", momentum=0.5), x)
    # norm_kwargs are strict
    with pytest.raises(ValueError, match="takes no option"):
        SimpleCNN(channels=(4,), norm="layer", norm_kwargs={"momentum": 0.5})
    params = _shapes(SimpleCNN(channels=(48,), norm="group", num_groups=16), x)
    assert params["params"]["norm_0"]["scale"].shape == (48,)
    with pytest.raises(ValueError, match="48 channels are not divisible by num_groups=32"):
        _shapes(SimpleCNN(channels=(48,), norm="group"), x)


def test_group_norm_on_dense_layers_needs_groups_of_two_or_more():
    with pytest.raises(ValueError, match="normalizes single units to a constant.*num_groups <= 4"):
        _shapes(MLP(hidden=(8,), norm="group"), _x((2, 16)))
    _shapes(MLP(hidden=(8,), norm="group", num_groups=2), _x((2, 16)))


def test_spatial_dropout_is_refused_by_dense_models():
    with pytest.raises(ValueError, match="no spatial axes"):
        MLP(dropout="spatial")
    with pytest.raises(ValueError, match="no spatial axes"):
        DeepLinear(dropout="spatial")
    with pytest.raises(ValueError, match="rate"):
        MLP(dropout="gaussian", dropout_rate=1.0)


def test_register_norm_hook():
    class ScaledLayerNorm(zoo.components.jnn.LayerNorm):
        pass

    zoo.register_norm("test_scaled_ln", ScaledLayerNorm, options=("epsilon",))
    try:
        assert "test_scaled_ln" in zoo.NORMS and "test_scaled_ln" in zoo.components.NORMS
        model = SimpleCNN(**CNN, norm="test_scaled_ln")
        params = model.init(KEY, _x(IMG), train=False)["params"]
        assert set(params["norm_0"]) == {"scale", "bias"}
        with pytest.raises(ValueError, match="already registered"):
            zoo.register_norm("test_scaled_ln", ScaledLayerNorm)
    finally:
        zoo.unregister_norm("test_scaled_ln")
    assert "test_scaled_ln" not in zoo.NORMS


# ---- dropout ------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("dropout", DROPOUTS)
def test_dropout_choices(dropout):
    x = _x(IMG)
    model = SimpleCNN(**CNN, norm="none", dropout=dropout, dropout_rate=0.3)
    variables = model.init(KEY, x, train=False)
    a, b = (model.apply(variables, x, train=True, rngs={"dropout": _key(i)}) for i in (1, 2))
    assert bool(jnp.all(jnp.isfinite(a)))
    assert np.allclose(a, b) == (dropout == "none")
    np.testing.assert_array_equal(model.apply(variables, x, train=False), model.apply(variables, x, train=False))


def test_mlp_input_dropout_and_srivastava_preset():
    model = zoo.srivastava_mlp(hidden=(8, 8))
    assert model.dropout == "dropout" and model.dropout_rate == 0.5 and model.input_dropout_rate == 0.2
    x = _x((2, 16))
    variables = model.init(KEY, x, train=False)
    calls = _norm_inputs(model, variables, x)
    assert [c[1] for c in calls][:2] == ["input_dropout", "dense_0"]
    _, feats = model.apply(variables, x, train=True, rngs={"dropout": KEY}, return_features=True)
    assert float((feats == 0).mean()) > 0.2  # ReLU zeros plus dropped units


# ---- presets ------------------------------------------------------------------------------------------------------


def test_ioffe_mlp_has_three_hidden_layers_of_100_sigmoid_units():
    model = ioffe_mlp()
    assert model.activation == "sigmoid" and model.norm == "batch" and model.norm_position == "before"
    shapes = _shapes(model, jnp.zeros((4, 28, 28)))
    params = shapes["params"]
    assert [k for k in params if k.startswith("dense_")] == ["dense_0", "dense_1", "dense_2"]
    assert params["dense_0"]["kernel"].shape == (784, 100)
    assert params["dense_1"]["kernel"].shape == params["dense_2"]["kernel"].shape == (100, 100)
    assert params["head"]["kernel"].shape == (100, 10)
    assert set(shapes["batch_stats"]) == {"norm_0", "norm_1", "norm_2"}
    x = _x((2, 16))  # a small input: the same hidden layers, cheaper to compile
    variables = model.init(KEY, x, train=False)
    (logits, feats), state = model.apply(
        variables, x, train=True, mutable=["batch_stats", "intermediates"], return_features=True
    )
    assert feats.shape == (2, 100) and float(feats.min()) > 0 and float(feats.max()) < 1  # sigmoid outputs
    preact = state["intermediates"]
    assert set(preact) == {"preact_0", "preact_1", "preact_2"}  # the sigmoid inputs (Ioffe's percentiles)
    np.testing.assert_allclose(jax.nn.sigmoid(preact["preact_2"][0]), feats, rtol=1e-5, atol=1e-6)
    assert ioffe_mlp(norm="none").norm == "none"


def test_deep_linear_network():
    model = DeepLinear()
    assert model.depth == 25 and model.width == 10
    x = _x((3, 10))
    params = model.init(KEY, x, train=False)["params"]
    leaves = list(_paths(params))
    assert len(leaves) == 25 and all(p[-1] == "kernel" and v.shape == (10, 10) for p, v in leaves)  # no biases
    y = model.apply({"params": params}, x, train=False)
    assert y.shape == (3, 10)
    # it is linear: y = x W_1 ⋯ W_25
    w = np.eye(10)
    for i in range(25):
        w = w @ np.asarray(params[f"dense_{i}"]["kernel"], np.float64)
    np.testing.assert_allclose(y, np.asarray(x) @ w, rtol=1e-3, atol=1e-5)
    bn = DeepLinear(norm="batch").init(KEY, x, train=False)
    assert len(bn["batch_stats"]) == 24 and all("bias" not in bn["params"][f"dense_{i}"] for i in range(25))


def _block_inputs(model, x, prefix="conv_"):
    """The input shape of every module whose name starts with ``prefix``, by shape evaluation only."""
    shapes, seen = _shapes(model, x), {}

    def record(f, args, kwargs, context):
        if context.method_name == "__call__" and (context.module.name or "").startswith(prefix):
            seen[context.module.name] = args[0].shape
        return f(*args, **kwargs)

    with nn.intercept_methods(record):
        jax.eval_shape(functools.partial(model.apply, train=False), shapes, x)
    return shapes["params"], seen


def test_simple_cnn_pools_after_every_second_block_and_vgg_presets():
    params, seen = _block_inputs(SimpleCNN(channels=(4, 4, 8, 8, 8)), jnp.zeros((1, 16, 16, 3)))
    assert [seen[f"conv_{i}"][1] for i in range(5)] == [16, 16, 8, 8, 4]  # pools after blocks 2 and 4, not the last
    assert params["head"]["kernel"].shape == (8, 10)  # global average pooling
    for cfg, n_convs in (("vgg11", 8), ("vgg13", 10), ("vgg16", 13), ("vgg19", 16), ("vgg_small", 4)):
        params, seen = _block_inputs(build_model(cfg, width=1 / 16), jnp.zeros((1, 32, 32, 3)))
        assert len(seen) == n_convs
        widths = [params[f"conv_{i}"]["kernel"].shape[-1] for i in range(n_convs)]
        assert widths == [round(v / 16) for v in zoo.VGG_CONFIGS[cfg] if v != "M"]
    params, seen = _block_inputs(build_model("vgg11"), jnp.zeros((1, 32, 32, 3)))
    assert seen["conv_7"][1:] == (2, 2, 512) and params["head"]["kernel"].shape == (512, 10)  # 5 pools: 32 → 1


def _blocks(params):
    blocks = {}
    for k in params:
        m = re.fullmatch(r"stage(\d+)_block(\d+)", k)
        if m:
            blocks.setdefault(int(m.group(1)), []).append(k)
    return tuple(len(blocks[s]) for s in sorted(blocks))


@pytest.mark.parametrize(
    "depth,sizes,block", [(18, (2, 2, 2, 2), "basic"), (34, (3, 4, 6, 3), "basic"), (50, (3, 4, 6, 3), "bottleneck")]
)
def test_resnet_depths(depth, sizes, block):
    model = build_model(f"resnet{depth}", width=1 / 32, norm="batch")
    x = jnp.zeros((1, 16, 16, 3))
    shapes = _shapes(model, x)
    params = shapes["params"]
    assert _blocks(params) == sizes
    first = params["stage1_block1"]
    if block == "bottleneck":
        assert set(first) >= {"conv1", "conv2", "conv3", "norm3", "proj_conv", "proj_norm"}
        assert first["conv3"]["kernel"].shape == (1, 1, 2, 8)  # 4× expansion at width 2
    else:
        assert "conv3" not in first and "proj_conv" not in first  # stage 1 of a basic ResNet keeps the shape
        assert first["conv2"]["kernel"].shape == (3, 3, 2, 2)
    assert "proj_conv" in params["stage2_block1"] and "proj_conv" not in params["stage2_block2"]
    n_convs = sum(1 for p, _ in _paths(params) if p[-1] == "kernel" and "conv" in p[-2] and p[-2] != "proj_conv")
    assert n_convs + 1 == depth  # the classic depth count: convs (stem + blocks, no shortcuts) + the dense head


def test_resnet_stems_and_zero_init():
    x = jnp.zeros((2, 16, 16, 3))
    for stem, spatial in (("cifar", 16), ("imagenet", 4)):
        model = ResNet(stage_sizes=(1,), block="basic", width=1 / 16, stem=stem, norm="group")
        shapes = _shapes(model, x)
        seen = []

        def record(f, args, kwargs, context):
            if context.module.name == "stage1_block1" and context.method_name == "__call__":
                seen.append(args[0].shape)
            return f(*args, **kwargs)

        with nn.intercept_methods(record):
            jax.eval_shape(functools.partial(model.apply, train=False), shapes, x)
        assert seen[0][1:3] == (spatial, spatial)  # cifar: no downsampling; imagenet: /2 conv, /2 max pool
        assert shapes["params"]["stem_conv"]["kernel"].shape[:2] == ((3, 3) if stem == "cifar" else (7, 7))
    model_name, base, shape, _ = TINY["resnet_bottleneck"]
    params = build_model(model_name, **base, norm="batch", zero_init_residual=True).init(KEY, _x(shape), train=False)[
        "params"
    ]
    block = params["stage1_block1"]
    assert float(jnp.abs(block["norm3"]["scale"]).sum()) == 0  # the branch's last norm starts at γ = 0
    assert float(block["norm2"]["scale"].sum()) > 0 and float(block["proj_norm"]["scale"].sum()) > 0


# ---- features, dtype, sync batch norm, weight standardization -----------------------------------------------------


@pytest.mark.parametrize("name", ["mlp", "deep_linear", "simple_cnn", "resnet_basic", "cnn1d"])
def test_return_features_is_the_head_input(name):
    model, x = _tiny(name, norm="layer" if name != "deep_linear" else "none")
    variables = model.init(KEY, x, train=False)
    logits = model.apply(variables, x, train=False)
    logits2, feats = model.apply(variables, x, train=False, return_features=True)
    np.testing.assert_array_equal(logits, logits2)
    head = variables["params"]["head" if name != "deep_linear" else "dense_3"]
    assert feats.shape == (x.shape[0], head["kernel"].shape[0])
    out = feats @ head["kernel"] + head.get("bias", 0.0)
    np.testing.assert_allclose(out, logits, rtol=1e-5, atol=1e-5)


def test_bfloat16_compute():
    x = _x(IMG)
    model = SimpleCNN(**CNN, norm="batch", dtype=jnp.bfloat16)
    variables = model.init(KEY, x, train=False)
    floats = [v for v in jax.tree.leaves(variables) if jnp.issubdtype(v.dtype, jnp.floating)]
    assert floats and all(v.dtype == jnp.float32 for v in floats)
    logits, state = model.apply(variables, x, train=True, mutable=["batch_stats"])
    assert logits.dtype == jnp.float32 and bool(jnp.all(jnp.isfinite(logits)))
    assert all(v.dtype == jnp.float32 for v in jax.tree.leaves(state) if jnp.issubdtype(v.dtype, jnp.floating))
    # the convolutions and the head really compute in bfloat16 (not only the parameters' and outputs' dtypes)
    jaxpr = str(jax.make_jaxpr(lambda v, x: model.apply(v, x, train=True, mutable=["batch_stats"]))(variables, x))
    heavy = [line for line in jaxpr.splitlines() if "= conv_general_dilated[" in line or "= dot_general[" in line]
    assert len(heavy) >= len(CNN["channels"]) + 1 and all(":bf16[" in line.split("=")[0] for line in heavy), heavy
    # and the result is the float32 network's to bfloat16 precision, not bit for bit
    f32, _ = SimpleCNN(**CNN, norm="batch").apply(variables, x, train=True, mutable=["batch_stats"])
    diff = float(jnp.max(jnp.abs(logits - f32)))
    assert 0 < diff < 0.02, diff  # measured 0.002 (logits up to 0.7): 8-bit mantissas through the convolutions


def test_cnn1d_defaults_and_input_shapes():
    model = CNN1D()
    assert (model.norm, model.dropout, model.dropout_rate, tuple(model.strides)) == ("batch", "dropout", 0.1, (1, 1, 2))
    params = _shapes(model, jnp.zeros((2, 40)))["params"]
    assert params["head"]["kernel"].shape == (20 * 32, 10)  # flatten head on a 20×32 map
    model, x = _tiny("cnn1d")
    variables = model.init(KEY, x, train=False)
    np.testing.assert_array_equal(
        model.apply(variables, x, train=False), model.apply(variables, x[..., 0], train=False)
    )  # N×L is read as N×L×1
    with pytest.raises(ValueError, match="N×L×C"):
        model.init(KEY, jnp.zeros((2, 4, 4, 4, 1)), train=False)


def test_sync_batch_norm_axis_name_under_pmap():
    n = jax.local_device_count()
    assert n >= 2
    model = MLP(hidden=(4,), norm="batch", axis_name="batch")
    x = _x((n, 3, 5))
    variables = model.init(KEY, x[0], train=False)

    @functools.partial(jax.pmap, axis_name="batch")
    def step(x):
        return model.apply(variables, x, train=True, mutable=["batch_stats"])[1]

    stats = step(x)["batch_stats"]["norm_0"]
    h = x.reshape(-1, 5) @ variables["params"]["dense_0"]["kernel"]  # no bias: BN follows
    np.testing.assert_allclose(stats["mean"][0], 0.01 * np.asarray(h.mean(0)), rtol=1e-4, atol=1e-6)
    np.testing.assert_allclose(stats["mean"][0], stats["mean"][1])


def test_weight_standardized_convs():
    x = _x(IMG)
    model = SimpleCNN(**CNN, norm="group", weight_standardize=True)
    variables = model.init(KEY, x, train=False)
    calls = _norm_inputs(model, variables, x)
    assert "StandardizedConv" in {c[0] for c in calls}
    assert bool(jnp.all(jnp.isfinite(model.apply(variables, x, train=False))))

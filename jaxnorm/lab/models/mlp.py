"""Dense models: :class:`MLP` (with Ioffe's and Srivastava's presets) and Santurkar's :class:`DeepLinear` network."""

from __future__ import annotations

from collections.abc import Sequence

import flax.linen as nn
import jax.numpy as jnp

from jaxnorm._checks import check_positive_int
from jaxnorm.lab.models.base import ZooModel


class MLP(ZooModel):
    """A multilayer perceptron: input (flattened) → [dense → norm/activation → dropout] × len(hidden) → dense head.

    Each hidden block is ``dense → norm → act`` (``norm_position='before'``) or ``dense → act → norm`` (``'after'``),
    then dropout (see :class:`~jaxnorm.lab.models.base.ZooModel`); ``input_dropout_rate`` drops input units first
    (Srivastava et al. 2014 use 0.2 on inputs, 0.5 on hidden units) with the model's dropout kind, or standard dropout
    when ``dropout='none'``. The input of each activation is sown as ``intermediates/preact_{i}`` (read it with
    ``mutable=['intermediates']``: Ioffe & Szegedy's sigmoid-input percentiles). Instance norm and spatial dropout
    are undefined on N×C activations and raise a ValueError.

    Modules: ``dense_{i}``, ``norm_{i}``, ``dropout_{i}``, ``head``.
    """

    hidden: Sequence[int] = (100, 100, 100)
    input_dropout_rate: float = 0.0

    _dense = True

    def _check_config(self) -> None:
        super()._check_config()
        if any(not isinstance(w, int) or w <= 0 for w in self.hidden):
            raise ValueError(f"MLP: hidden must be a sequence of positive ints, got {self.hidden!r}")
        self.dropout_factory(self.input_dropout_rate, self._input_dropout_kind()).check_dense("MLP")

    def _input_dropout_kind(self) -> str:
        return "dropout" if self.dropout == "none" else self.dropout

    @nn.compact
    def __call__(self, x, train: bool, return_features: bool = False):
        norm, drop, act = self.norm_factory(), self.dropout_factory(), self.act_fn()
        h = jnp.asarray(x, self.dtype).reshape(x.shape[0], -1)
        if self.input_dropout_rate > 0:
            in_drop = self.dropout_factory(self.input_dropout_rate, self._input_dropout_kind())
            h = in_drop(dense=True, name="input_dropout", where="MLP")(h, train=train)
        for i, width in enumerate(self.hidden):
            h = self.dense(width, self.layer_bias(norm), f"dense_{i}", train=train)(h)
            h = self.norm_act(h, norm(width, dense=True, name=f"norm_{i}", where="MLP"), act, train, f"preact_{i}")
            h = drop(dense=True, name=f"dropout_{i}", where="MLP")(h, train=train)
        logits = self.head(h, train=train)
        return (logits, h) if return_features else logits


def ioffe_mlp(norm: str = "batch", **kwargs) -> MLP:
    """Ioffe & Szegedy (2015, §4.1)'s MNIST network: 3 fully connected hidden layers of 100 sigmoid units, 10 outputs,
    batch norm before each nonlinearity. ``norm='none'`` is their baseline; other fields override."""
    cfg = dict(hidden=(100, 100, 100), activation="sigmoid", num_classes=10, norm=norm, norm_position="before")
    cfg.update(kwargs)
    return MLP(**cfg)


def srivastava_mlp(**kwargs) -> MLP:
    """Srivastava et al. (2014)'s MNIST dropout network: 3 hidden layers of 1024 ReLU units, dropout 0.5 on hidden
    units and 0.2 on the inputs (keep 0.5 / 0.8). Use with ``jaxnorm.max_norm(3.0)`` for their max-norm variant."""
    cfg = dict(
        hidden=(1024, 1024, 1024),
        activation="relu",
        num_classes=10,
        dropout="dropout",
        dropout_rate=0.5,
        input_dropout_rate=0.2,
    )
    cfg.update(kwargs)
    return MLP(**cfg)


class DeepLinear(ZooModel):
    """Santurkar et al. (2018)'s deep linear network (DLN): ``depth`` bias-free dense layers of ``width`` units and no
    activation, ``y = W_depth ⋯ W_1 x``; with the defaults and a 10-dimensional input, 25 kernels of 10×10. It is a
    regression model: the output is a ``num_classes``-vector (default 10; train with ``‖y − Ax‖²``).

    With ``norm`` set, a norm layer follows every layer but the last (the output is the regression target's space), so
    ``norm_position`` plays no role. ``use_bias`` defaults to no biases (the norms keep their own β). Dropout, if
    chosen, follows each normalized layer. Modules: ``dense_{i}``, ``norm_{i}``; ``return_features`` gives the input
    of the last layer.
    """

    depth: int = 25
    width: int = 10
    activation: str = "identity"

    _dense = True

    def _check_config(self) -> None:
        super()._check_config()
        check_positive_int("DeepLinear", "depth", self.depth)

    @nn.compact
    def __call__(self, x, train: bool, return_features: bool = False):
        norm, drop, act = self.norm_factory(), self.dropout_factory(), self.act_fn()
        use_bias = bool(self.use_bias)  # None → no biases (Santurkar's DLN)
        h = jnp.asarray(x, self.dtype).reshape(x.shape[0], -1)
        for i in range(self.depth - 1):
            h = self.dense(self.width, use_bias, f"dense_{i}", train=train)(h)
            h = self.norm_act(h, norm(self.width, dense=True, name=f"norm_{i}", where="DeepLinear"), act, train)
            h = drop(dense=True, name=f"dropout_{i}", where="DeepLinear")(h, train=train)
        y = self.dense(self.num_classes, use_bias, f"dense_{self.depth - 1}", train=train, head=True)(h)
        y = jnp.asarray(y, jnp.float32)
        return (y, h) if return_features else y

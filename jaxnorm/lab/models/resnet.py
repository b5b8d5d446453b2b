"""ResNets (He et al. 2016) with a norm choice in every block: 18/34 (basic blocks), 50/101/152 (bottlenecks)."""

from __future__ import annotations

from collections.abc import Callable, Sequence

import flax.linen as nn

from jaxnorm._checks import check_choice
from jaxnorm.lab.models.base import ConvModel, as_images, global_avg_pool, max_pool
from jaxnorm.lab.models.components import DropoutFactory, NormFactory

# depth → (block, blocks per stage)
RESNET_DEPTHS = {
    18: ("basic", (2, 2, 2, 2)),
    34: ("basic", (3, 4, 6, 3)),
    50: ("bottleneck", (3, 4, 6, 3)),
    101: ("bottleneck", (3, 4, 23, 3)),
    152: ("bottleneck", (3, 8, 36, 3)),
}
BLOCKS = ("basic", "bottleneck")
STEMS = ("cifar", "imagenet")


class ResidualBlock(nn.Module):
    """A residual block; built by :class:`ResNet`, which passes its configuration.

    ``'basic'``: two 3×3 convs (expansion 1); ``'bottleneck'``: 1×1, 3×3 (carrying the stride, as ResNet v1.5),
    1×1 with 4× the channels. Each conv of the branch is followed by its norm and activation in the model's order,
    except that the branch's last activation comes after the addition (ResNet v1):

    * ``'before'``: ``conv → norm → act`` …, last ``conv → norm``; ``out = act(branch + shortcut)``;
    * ``'after'``:  ``conv → act → norm`` …, last ``conv → act → norm``; ``out = act(branch + shortcut)``.

    Dropout follows every inner unit of the branch (between the convs, as in wide ResNets). The shortcut is the
    identity, or a 1×1 conv (with the stride) followed by a norm when the shape changes. ``zero_init`` starts the
    branch's last norm with γ = 0 (Goyal et al. 2017), so that the block starts as ``act(shortcut)``.
    """

    features: int
    strides: int
    block: str
    norm: NormFactory
    drop: DropoutFactory
    act: Callable
    conv: Callable  # conv(features, kernel_size, strides, use_bias, name) -> Module
    norm_position: str = "before"
    use_bias: bool | None = None
    zero_init: bool = False

    def _bias(self, directly_followed: bool) -> bool:
        if self.use_bias is not None:
            return bool(self.use_bias)
        return not (directly_followed and self.norm.absorbs_bias)

    @nn.compact
    def __call__(self, x, train: bool):
        before = self.norm_position == "before"
        if self.block == "basic":
            units = [(self.features, 3, self.strides), (self.features, 3, 1)]
        else:
            units = [(self.features, 1, 1), (self.features, 3, self.strides), (4 * self.features, 1, 1)]
        out_features = units[-1][0]
        h = x
        for j, (c, k, s) in enumerate(units, start=1):
            last = j == len(units)
            h = self.conv(c, (k, k), s, self._bias(before), f"conv{j}")(h)
            norm = self.norm(c, zero_init=self.zero_init and last, name=f"norm{j}", where="ResNet")
            if before:
                h = norm(h, train=train)
                if not last:
                    h = self.act(h)
            else:
                h = norm(self.act(h), train=train)
            if not last:
                h = self.drop(name=f"dropout{j}")(h, train=train)
        shortcut = x
        if x.shape[-1] != out_features or self.strides != 1:
            shortcut = self.conv(out_features, (1, 1), self.strides, self._bias(True), "proj_conv")(x)
            shortcut = self.norm(out_features, name="proj_norm", where="ResNet")(shortcut, train=train)
        return self.act(h + shortcut)


class ResNet(ConvModel):
    """ResNet-``depth`` (18, 34, 50, 101, 152) with ``width`` × (64, 128, 256, 512) channels per stage.

    ``stem='cifar'``: one 3×3 conv, stride 1, no pooling (32×32 inputs); ``'imagenet'``: 7×7 conv stride 2, then a
    3×3 max pool stride 2. The stem conv is a block (conv → norm → act or conv → act → norm). Then the stages of
    :class:`ResidualBlock` (the first block of stages 2–4 has stride 2), global average pooling and a dense head.
    ``stage_sizes``/``block`` override the depth's table (e.g. ``stage_sizes=(1, 1)`` for a tiny net).
    ``zero_init_residual`` zero-initializes the last norm scale of every residual branch (no effect with
    ``norm='none'``). Convs use He normal (fan-out) initialization, as torchvision, unless ``kernel_init`` is given.

    Modules: ``stem_conv``, ``stem_norm``, ``stage{s}_block{b}`` (``conv{j}``, ``norm{j}``, ``proj_conv``,
    ``proj_norm``), ``head``.
    """

    depth: int = 18
    width: float = 1.0
    stem: str = "cifar"
    stage_sizes: Sequence[int] | None = None
    block: str | None = None
    zero_init_residual: bool = False

    _spatial_dims = 2

    def _check_config(self) -> None:
        super()._check_config()
        check_choice("ResNet stem", self.stem, STEMS)
        if self.block is not None:
            check_choice("ResNet block", self.block, BLOCKS)
        if self.stage_sizes is None or self.block is None:
            if self.depth not in RESNET_DEPTHS:
                raise ValueError(
                    f"ResNet: unknown depth {self.depth!r}; valid depths: "
                    f"{', '.join(map(str, RESNET_DEPTHS))} (or give stage_sizes and block)"
                )
        if not self.width > 0:
            raise ValueError(f"ResNet: width must be > 0, got {self.width!r}")

    def layout(self) -> tuple[str, tuple[int, ...]]:
        """(block type, blocks per stage)."""
        block, sizes = RESNET_DEPTHS.get(self.depth, (None, None))
        return (self.block or block), tuple(self.stage_sizes if self.stage_sizes is not None else sizes)

    def _channels(self, c: int) -> int:
        return max(1, int(round(c * self.width)))

    @nn.compact
    def __call__(self, x, train: bool, return_features: bool = False):
        norm, drop, act = self.norm_factory(), self.dropout_factory(), self.act_fn()
        conv = self.conv_builder(
            self.kernel_init
            if self.kernel_init is not None
            else nn.initializers.variance_scaling(2.0, "fan_out", "normal"),
            train=train,
        )

        h = as_images(x, 4, "ResNet").astype(self.dtype)
        c0 = self._channels(64)
        if self.stem == "cifar":
            h = conv(c0, (3, 3), 1, self.layer_bias(norm), "stem_conv")(h)
        else:
            h = conv(c0, (7, 7), 2, self.layer_bias(norm), "stem_conv")(h)
        h = self.norm_act(h, norm(c0, name="stem_norm", where="ResNet"), act, train)
        if self.stem == "imagenet":
            h = max_pool(h, 3, 2)
        block, sizes = self.layout()
        for s, n in enumerate(sizes):
            for b in range(n):
                h = ResidualBlock(
                    features=self._channels(64 * 2**s),
                    strides=2 if s > 0 and b == 0 else 1,
                    block=block,
                    norm=norm,
                    drop=drop,
                    act=act,
                    conv=conv,
                    norm_position=self.norm_position,
                    use_bias=self.use_bias,
                    zero_init=self.zero_init_residual,
                    name=f"stage{s + 1}_block{b + 1}",
                )(h, train=train)
        feats = global_avg_pool(h)
        logits = self.head(feats, train=train)
        return (logits, feats) if return_features else logits

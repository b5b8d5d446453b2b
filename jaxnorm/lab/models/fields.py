"""What a model of the zoo takes, read from the model itself: its fields (the ``model_kwargs`` a config may set, for
``--config.model_kwargs.FIELD=VALUE`` and ``python train.py --help``) and the inputs it convolves over (a 2-D CNN on
1-D data is refused before training).

>>> fields = model_fields('cnn1d')
>>> fields['channels'].type, fields['channels'].default
('Sequence[int]', (32, 32, 32))
>>> check_model_kwargs('cnn1d', {'chanels': (32, 64)})
Traceback (most recent call last):
...
ValueError: unknown config key 'chanels' (did you mean 'channels'?): model_kwargs.chanels is not a field of the
model cnn1d (CNN1D); its fields: channels, kernel_size, strides, ...
"""

from __future__ import annotations

import dataclasses
import difflib
from collections.abc import Mapping, Sequence
from typing import Any, NamedTuple

__all__ = [
    "SET_BY_CONFIG",
    "ModelField",
    "check_model_config",
    "check_model_inputs",
    "check_model_kwargs",
    "input_kind",
    "model_class",
    "model_fields",
    "models_for_inputs",
    "spatial_dims",
]

# fields the trainer fills from the config's own keys (or the dataset, or the parallel mode), never from model_kwargs
SET_BY_CONFIG = {
    "num_classes": "the dataset's number of classes",
    "norm": "--config.norm",
    "norm_position": "--config.norm_position",
    "dropout": "--config.dropout",
    "dropout_rate": "--config.dropout_rate",
    "activation": "--config.activation",
    "kernel_norm": "--config.kernel_norm",
    "axis_name": "--config.parallel and --config.sync_bn",
}


class ModelField(NamedTuple):
    """One field of a model: its name, its annotation as written in the class, and the registered model's default
    (``'resnet18'`` has ``depth`` 18, ``'ioffe_mlp'`` the sigmoid activation)."""

    name: str
    type: str
    default: Any


def _default_model(name: str):
    """The model ``name`` built with no arguments (its registered defaults), or None when its constructor needs
    some; an unknown name is a ValueError listing the models."""
    from jaxnorm.lab import models

    try:
        return models.build_model(name)
    except TypeError:
        return None


def model_class(name: str) -> type | None:
    """The class of the registered model ``name`` (None when its constructor cannot be called without arguments)."""
    model = _default_model(name)
    return None if model is None else type(model)


def _type_name(annotation: Any) -> str:
    return annotation if isinstance(annotation, str) else getattr(annotation, "__name__", str(annotation))


def model_fields(name: str) -> dict[str, ModelField] | None:
    """``{field: ModelField}`` of the model ``name`` that ``config.model_kwargs`` may set, in declaration order:
    every dataclass field except Flax's ``parent``/``name`` and those in :data:`SET_BY_CONFIG`. None when the
    fields cannot be known (a registered constructor that needs arguments); then ``model_kwargs`` is not checked."""
    model = _default_model(name)
    if model is None or not dataclasses.is_dataclass(model):
        return None
    mro = type(model).__mro__

    def declared_at(field: str) -> int:  # the model's own fields first, then those it inherits
        return next((i for i, c in enumerate(mro) if field in c.__dict__.get("__annotations__", {})), len(mro))

    fields = [f for f in dataclasses.fields(model) if f.name not in ("parent", "name") and f.name not in SET_BY_CONFIG]
    return {
        f.name: ModelField(f.name, _type_name(f.type), getattr(model, f.name))
        for f in sorted(fields, key=lambda f: declared_at(f.name))
    }


# ---- values against annotations -----------------------------------------------------------------------------------


def _alternatives(annotation: str) -> list[str]:
    """``'str | Sequence[int | str]'`` → ``['str', 'Sequence[int | str]']`` (the top-level members of a union)."""
    parts, depth, current = [], 0, ""
    for ch in annotation:
        depth += (ch == "[") - (ch == "]")
        if ch == "|" and depth == 0:
            parts.append(current.strip())
            current = ""
        else:
            current += ch
    parts.append(current.strip())
    return parts


def _accepts(annotation: str, value: Any) -> bool:
    """Whether ``value`` fits the annotation ``annotation`` (as written: ``'float | None'``, ``'Sequence[int]'``);
    annotations it does not know (``Any``, ``Callable[...]``, a class) accept anything."""
    for a in _alternatives(annotation):
        base, _, inner = a.partition("[")
        inner = inner[:-1].strip() if inner.endswith("]") else ""
        if base == "None" and value is None:
            return True
        if base == "bool" and isinstance(value, bool):
            return True
        if base == "int" and isinstance(value, int) and not isinstance(value, bool):
            return True
        if base == "float" and isinstance(value, (int, float)) and not isinstance(value, bool):
            return True
        if base == "str" and isinstance(value, str):
            return True
        if base in ("Sequence", "tuple", "list") and isinstance(value, (tuple, list)):
            element = inner.split(",")[0].strip() if base == "tuple" else inner
            if not element or all(_accepts(element, v) for v in value):
                return True
        if base in ("Mapping", "dict") and isinstance(value, Mapping):
            return True
        if base not in ("None", "bool", "int", "float", "str", "Sequence", "tuple", "list", "Mapping", "dict"):
            return True
    return False


def _example(field: ModelField) -> str:
    """A command-line value of the field's type, quoted for bash where it needs it."""
    default = field.default
    if isinstance(default, (tuple, list)):
        return "'" + repr(tuple(default)).replace(" ", "") + "'"
    return repr(default) if not isinstance(default, str) else default


def check_model_kwargs(name: str, kwargs: Mapping[str, Any], *, check_types: bool = True) -> None:
    """Every set (not None) entry of ``kwargs`` (a config's ``model_kwargs``) is a field of the model ``name`` and
    fits its annotation (``check_types=False``: only the names); else a ValueError of one line, with a did-you-mean
    for a misspelt field."""
    fields = model_fields(name)
    cls = model_class(name)
    where = f"the model {name} ({cls.__name__})" if cls is not None else f"the model {name}"
    for key, value in kwargs.items():
        if value is None:  # unset: the model's default
            continue
        if key in SET_BY_CONFIG:
            raise ValueError(f"model_kwargs.{key}: {where} takes {key} from {SET_BY_CONFIG[key]}, not model_kwargs")
        if fields is None:
            continue
        if key not in fields:
            hint = difflib.get_close_matches(key, list(fields), n=1)
            raise ValueError(
                f"unknown config key {key!r}"
                + (f" (did you mean {hint[0]!r}?)" if hint else "")
                + f": model_kwargs.{key} is not a field of {where}; its fields: {', '.join(fields)} "
                "(python train.py --help lists them with their defaults)"
            )
        field = fields[key]
        if check_types and not _accepts(field.type, value):
            raise ValueError(
                f"model_kwargs.{key}={value!r}: the field {key} of {where} is {field.type} (default "
                f"{field.default!r}); e.g. --config.model_kwargs.{key}={_example(field)}"
            )


def spatial_dims(name: str) -> int | None:
    """The spatial axes the model ``name`` convolves over: 1 (inputs N×L×C), 2 (N×H×W×C), or None (any input: it
    flattens them, or the model does not say)."""
    cls = model_class(name)
    return getattr(cls, "_spatial_dims", None) if cls is not None else None


def input_kind(input_shape: Sequence[int | None]) -> str:
    """What examples of shape ``input_shape`` (without the batch axis) are, in words."""
    return {1: "vectors", 2: "1-D signals (L×C)", 3: "2-D images (H×W×C)"}.get(
        len(input_shape), f"{len(input_shape)}-D arrays"
    )


def _fits(dims: int | None, input_shape: Sequence[int | None]) -> bool:
    # a dataset's examples carry their channel axis (tfds images are H×W×C, MNIST-1D is 40×1); 1-D models also take
    # plain vectors as one-channel signals
    return dims is None or len(input_shape) == dims + 1 or (dims == 1 and len(input_shape) == 1)


def models_for_inputs(input_shape: Sequence[int | None]) -> tuple[list[str], list[str]]:
    """``(convolutional, flattening)``: the registered models that convolve over inputs of ``input_shape``, and
    those that take any input (they flatten it)."""
    from jaxnorm.lab import models

    conv, flat = [], []
    for name in models.MODELS:
        dims = spatial_dims(name)
        if dims is None:
            flat.append(name)
        elif _fits(dims, input_shape):
            conv.append(name)
    return conv, flat


def check_model_inputs(name: str, input_shape: Sequence[int | None], dataset: str = "the dataset") -> None:
    """A ValueError of one line when the model ``name`` cannot convolve over the examples of ``dataset`` (shape
    ``input_shape``, without the batch axis): a 2-D CNN on 1-D signals, a 1-D CNN on images. It names the model,
    the input shape and the models that fit."""
    dims = spatial_dims(name)
    if _fits(dims, input_shape):
        return
    conv, flat = models_for_inputs(input_shape)
    kind = input_kind(input_shape)
    fitting = []
    if conv:
        fitting.append(f"the models for {kind.split(' (')[0]}: {', '.join(conv)}")
    if flat:
        fitting.append(f"those that flatten their input: {', '.join(flat)}")
    other = "2-D images (H×W×C)" if dims == 2 else "1-D signals (L×C)"
    cls = model_class(name)
    raise ValueError(
        f"the model {name} ({cls.__name__ if cls else '?'}) convolves over {other}, but the inputs of {dataset} "
        f"are {kind} of shape {tuple(input_shape)}: use --config.model={(conv or flat)[0]} ({'; '.join(fitting)}), "
        f"or a dataset of {other.split(' (')[0]}"
    )


def check_model_config(
    name: str, kwargs: Mapping[str, Any], input_shape: Sequence[int | None], dataset: str = "the dataset"
) -> None:
    """The checks of a run's model before training: :func:`check_model_kwargs` and :func:`check_model_inputs`."""
    check_model_kwargs(name, kwargs)
    check_model_inputs(name, input_shape, dataset)

"""The command line of ``train.py``, which stays a thin script over this module.

* :func:`define_config` defines the ``--config`` flag so that every field of the selected model is settable as
  ``--config.model_kwargs.FIELD=VALUE`` on any config, checked against the model's own fields (did-you-mean for a
  typo). ``ml_collections`` only accepts an override whose key the config already has, so the keys given on the
  command line are declared once the config file is loaded and before the overrides are parsed.
* :func:`help_text` is ``--help``: every config key with its value, a one-line description and its allowed values
  (read from the registries: models, norms, dropouts, datasets, optimizers, schedules, probes, parallel modes), then
  the fields of the selected model.
* :func:`list_text` is ``--list``: the configs, experiments, models, norms, dropouts and datasets.
* :func:`run_summary` is what the end of a run prints: where its results are and the commands that come next.

Nothing here imports JAX until a function needs the registries, so the errors of a bad command line stay fast.
"""

from __future__ import annotations

import ast
import json
import os
import re
import shlex
import sys
from collections.abc import Sequence
from typing import Any

import ml_collections
from absl import flags
from ml_collections import config_flags

__all__ = [
    "DESCRIPTIONS",
    "ModelFieldError",
    "choices",
    "config_path",
    "declare_model_fields",
    "define_config",
    "describe",
    "help_text",
    "list_text",
    "model_kwargs_overrides",
    "run_summary",
    "selected_model",
]

# one line per config key (dotted for the probes and pretrain groups); the allowed values come from choices()
DESCRIPTIONS = {
    "seed": "the seed of initialization, data order and dropout (every draw is a function of it and the step)",
    "size": "the config file's size preset (c.sizes.NAME; small = the file's own values)",
    "sizes": "the size presets the config file declares (set in the file)",
    "dataset": "the dataset: bundled or generated offline, or any tfds dataset prepared in data_dir",
    "data_dir": "where tfds datasets live ('' = $JAXNORM_DATA_DIR, else $TFDS_DATA_DIR, else ~/tensorflow_datasets)",
    "train_split": "the split trained on (tfds split names, slices allowed: 'train[:80%]')",
    "validation_split": "a held-out split evaluated beside the test split (val_ keys), disjoint from both; '' = none",
    "batch_size": "the global training batch size",
    "eval_batch_size": "the batch size of evaluation (the last batch padded and masked)",
    "augment": "random crops and flips of the training images",
    "drop_remainder": "drop each epoch's incomplete last batch (False pads it: not with batch-statistics norms)",
    "model": "the network; its fields are --config.model_kwargs.FIELD (listed below)",
    "norm": "the normalization layer of every block",
    "norm_position": "the norm before the activation (layer, norm, act) or after it (layer, act, norm)",
    "kernel_norm": "reparametrize the hidden conv/dense kernels (weight or spectral norm), with any norm",
    "dropout": "the dropout kind, at the end of each block",
    "dropout_rate": "the dropout rate, in [0, 1)",
    "activation": "the activation function",
    "model_kwargs": "every other field of the model, by its own name (listed below)",
    "optimizer": "the optimizer (sgd, momentum and nesterov with L2 weight decay; adam with L2; adamw decoupled)",
    "learning_rate": "the peak learning rate",
    "momentum": "the optimizer's momentum (the norms' running-statistics momentum is model_kwargs.momentum)",
    "weight_decay": "the weight decay; 0 = off",
    "max_norm": "> 0: project each kernel's incoming-weight vectors onto the ball of that radius; 0 = off",
    "embedding_reg": "the weight of the embedding penalty mean ‖h(x)‖² of the head's input; 0 = off",
    "log_embedding_norm": "log embedding_norm_sq = mean ‖h(x)‖² even when embedding_reg is 0",
    "log_first_step": "also a train row after step 1 alone: the initial network's metrics (before the first update)",
    "schedule": "the learning-rate schedule",
    "warmup_steps": "steps of linear warm-up before the schedule",
    "decay_boundaries": "step schedule: fractions of num_steps where the learning rate is multiplied by decay_factor",
    "decay_factor": "step schedule: the factor at each boundary",
    "num_steps": "the number of training steps",
    "eval_every": "evaluate every N steps (and at the end)",
    "eval_population_stats": "also evaluate with population statistics recomputed over training batches",
    "population_batches": "the training batches the population statistics are computed over",
    "eval_train": "also evaluate the deterministic network on the whole training split (train_eval_ keys)",
    "log_every": "write a train row (loss, accuracy, learning rate, norms, steps/s) every N steps",
    "checkpoint_every": "save a checkpoint every N steps (and at the end)",
    "keep_checkpoints": "the number of checkpoints kept",
    "resume": "resume from the workdir's latest checkpoint (False: move the old run aside into previous-<time>/)",
    "restore_step": "the checkpoint step to resume from; -1 = the latest",
    "progress": "show a progress bar",
    "probes.every": "run the landscape probes every N steps, on the batch of that step before it; 0 = off",
    "probes.kinds": "the probes that run (a tuple)",
    "probes.ics_layers": "the layers the ics probe measures; () = every layer",
    "probes.bn_mode": "batch norm in the probed loss: each point's batch statistics (train) or the running ones (eval)",
    "pretrain.layers": "the widths of the first layers to pretrain greedily as autoencoders: '(100,100)'; () = off",
    "pretrain.steps": "pretraining steps per layer",
    "pretrain.kind": "the autoencoders' kind",
    "pretrain.corruption": "the masking-noise fraction (denoising)",
    "pretrain.rho": "the target mean activation (sparse)",
    "pretrain.beta": "the weight of the sparsity penalty (sparse)",
    "pretrain.learning_rate": "the pretraining learning rate (adam)",
    "parallel": "data parallelism over the devices (auto: global on several devices)",
    "data_workers": "input-pipeline worker processes (Grain); 0 = read in this process",
    "shard_params": "global mode: shard every large leaf of the state over the devices (FSDP / ZeRO-3)",
    "shard_params_min_size": "leaves with fewer elements stay replicated under shard_params",
    "compilation_cache": "the persistent XLA compilation cache (a sweep compiles each step once)",
    "compilation_cache_dir": "the compilation cache's directory ('' = $JAXNORM_CACHE_DIR, else ~/.cache/jaxnorm/xla)",
    "sync_bn": "batch statistics over the global batch (False: per device)",
    "coordinator_address": "host:port of process 0, for multi-process runs",
    "num_processes": "the processes of a multi-process run (-1: detected from the cluster)",
    "process_id": "this process's index in a multi-process run",
    "heartbeat_timeout": "seconds before a lost process makes the others fail instead of hang",
}

_GROUPS = ("probes", "pretrain")  # the config's nested groups of keys
MODEL_KWARGS = "model_kwargs"


class ModelFieldError(Exception):
    """A ``--config.model_kwargs.FIELD`` that the selected model does not have (not a ValueError: absl would wrap it
    in its own message)."""


# ---- the command line before ml_collections parses it -----------------------------------------------------------

_OVERRIDE = re.compile(r"^--?(?:no)?config\.([^=\s]+)(?:=(.*))?$", re.S)
_CONFIG = re.compile(r"^--?config(?:=(.*))?$", re.S)


def _overrides(argv: Sequence[str]) -> list[tuple[str, str | None]]:
    """``[(dotted key, value or None), ...]`` of the ``--config.KEY=VALUE`` (or ``--config.KEY VALUE``) arguments."""
    out = []
    for i, arg in enumerate(argv):
        m = _OVERRIDE.match(arg)
        if m:
            value = m.group(2)
            if value is None and i + 1 < len(argv) and not argv[i + 1].startswith("-"):
                value = argv[i + 1]
            out.append((m.group(1), value))
    return out


def config_path(argv: Sequence[str], default: str) -> str:
    """The config file of the command line (``--config FILE`` or ``--config=FILE``), else ``default``."""
    path = default
    for i, arg in enumerate(argv):
        m = _CONFIG.match(arg)
        if m:
            path = m.group(1) if m.group(1) is not None else (argv[i + 1] if i + 1 < len(argv) else path)
    return path


def model_kwargs_overrides(argv: Sequence[str]) -> list[str]:
    """The keys under ``model_kwargs`` that the command line sets: ``['channels', 'norm_kwargs.convention']``."""
    prefix = MODEL_KWARGS + "."
    return [k[len(prefix) :] for k, _ in _overrides(argv) if k.startswith(prefix)]


def selected_model(config: ml_collections.ConfigDict, argv: Sequence[str] = ()) -> str:
    """The model a command line trains: its last ``--config.model=``, else the model of the size preset it selects
    (``--config.size=NAME``), else the config file's."""
    given = [v for k, v in _overrides(argv) if k == "model" and v is not None]
    if given:
        return given[-1]
    sizes = [v for k, v in _overrides(argv) if k == "size" and v is not None]
    size = sizes[-1] if sizes else config.get("size", "small")
    preset = config.get("sizes", {}).get(size) if size != "small" else None
    if preset is not None and preset.get("model"):
        return preset.get("model")
    return config.model


def declare_model_fields(config: ml_collections.ConfigDict, argv: Sequence[str]) -> None:
    """Declare in ``config.model_kwargs`` (unlocked) every key that the command line sets there and the config lacks,
    as an unset value of any type (parsed as a Python literal: ``'(32,64)'``, ``5``, ``0.1``, ``True``, ``imagenet``),
    after checking each against the fields of the selected model (:class:`ModelFieldError`, with a did-you-mean)."""
    keys = model_kwargs_overrides(argv)
    if not keys or MODEL_KWARGS not in config:
        return
    from jaxnorm.lab.models import fields as fields_lib

    name = selected_model(config, argv)
    for key in keys:
        field = key.split(".")[0]
        try:
            fields_lib.check_model_kwargs(name, {field: True}, check_types=False)
        except ValueError as e:
            if "unknown model" in str(e):  # the model's name is checked, and listed, with the rest of the config
                break
            raise ModelFieldError(str(e)) from None
    for key in keys:
        node = config[MODEL_KWARGS]
        *parents, leaf = key.split(".")
        for part in parents:
            if part not in node or node[part] is None:
                node[part] = ml_collections.ConfigDict()
            node = node[part]
        if leaf not in node:
            node[leaf] = ml_collections.config_dict.placeholder(object)


class _DeclaringParser(flags.ArgumentParser):
    """The config file parser of ``ml_collections``, then the ``model_kwargs`` keys of the command line declared (see
    :func:`declare_model_fields`) before ``ml_collections`` defines a flag per override."""

    def __init__(self, inner: flags.ArgumentParser, argv: Sequence[str]):
        self._inner = inner
        self._argv = list(argv)

    def parse(self, argument):
        config = self._inner.parse(argument)
        if isinstance(config, ml_collections.ConfigDict):
            with config.unlocked():
                declare_model_fields(config, self._argv)
        return config

    def flag_type(self) -> str:
        return self._inner.flag_type()


def define_config(flag_values, argv: Sequence[str], default: str, help_string: str):
    """``(holder, argv)``: the ``--config`` flag of ``flag_values`` for the command line ``argv`` (default config
    file ``default``), and ``argv`` with ``--config=default`` added when it names none. Parse that argv."""
    argv = list(argv)
    if not any(_CONFIG.match(a) for a in argv[1:]):
        argv.insert(1, f"--config={default}")
    holder = config_flags.DEFINE_config_file(
        "config", None, help_string, flag_values=flag_values, sys_argv=argv, lock_config=True
    )
    flag_values["config"].parser = _DeclaringParser(flag_values["config"].parser, argv)
    return holder, argv


# ---- --help -------------------------------------------------------------------------------------------------------


def choices(config: ml_collections.ConfigDict | None = None) -> dict[str, tuple]:
    """``{config key: its allowed values}``, read from the registries (``size``: those of ``config``)."""
    from jaxnorm import probes
    from jaxnorm.lab import models
    from jaxnorm.lab.train import config as config_lib
    from jaxnorm.lab.train import parallel, pretrain

    out = {
        "dataset": datasets(),
        "model": tuple(models.MODELS),
        "norm": models.norm_names(),
        "norm_position": tuple(models.NORM_POSITIONS),
        "kernel_norm": tuple(models.KERNEL_NORMS),
        "dropout": models.dropout_names(),
        "activation": tuple(models.ACTIVATIONS),
        "optimizer": tuple(config_lib.OPTIMIZERS),
        "schedule": tuple(config_lib.SCHEDULES),
        "parallel": tuple(parallel.MODES),
        "probes.kinds": probes.probe_names(),
        "probes.bn_mode": tuple(config_lib.BN_MODES),
        "pretrain.kind": tuple(pretrain.KINDS),
    }
    if config is not None and "sizes" in config:
        out["size"] = ("small", *config.sizes.keys())
    return out


def datasets() -> tuple[str, ...]:
    """The datasets known by name: the bundled and synthetic tfds builders and the generated ones."""
    from jaxnorm.lab import data

    return (*data.BUILDERS, *data.GENERATED)


def _config_comments() -> dict[str, str]:
    """``{key: comment}`` from the source of ``base_config`` (the trailing comment of ``c.KEY = ...``, else the
    comment lines above it): the description of a key that :data:`DESCRIPTIONS` lacks."""
    from jaxnorm.lab.train import config as config_lib

    with open(config_lib.__file__, encoding="utf-8") as f:
        lines = f.read().split("def base_config", 1)[-1].split("\ndef ", 1)[0].splitlines()
    out, above = {}, []
    for line in lines:
        s = line.strip()
        if s.startswith("#"):
            above.append(s.lstrip("# "))
            continue
        m = re.match(r"c\.([\w.]+)\s*=.*?(?:#\s*(.*))?$", s)
        if m:
            out[m.group(1)] = m.group(2) or " ".join(above)
        above = []
    return out


def describe(key: str, comments: dict[str, str] | None = None) -> str:
    """The one-line description of a config key: :data:`DESCRIPTIONS`, else its comment in ``base_config``."""
    if key in DESCRIPTIONS:
        return DESCRIPTIONS[key]
    comments = _config_comments() if comments is None else comments
    return " ".join(comments.get(key, "").split())


def _kind(value: Any) -> str:
    if isinstance(value, bool):
        return "True or False"
    if isinstance(value, int):
        return "an int"
    if isinstance(value, float):
        return "a number"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, tuple):
        return "a tuple, quoted: '(1,2)'"
    return type(value).__name__


def _keys(config: ml_collections.ConfigDict) -> list[str]:
    """The config's keys, groups flattened (``probes.every``), in the order of :data:`DESCRIPTIONS`, then the rest."""
    keys = []
    for k in config.keys():
        if k in _GROUPS and isinstance(config[k], ml_collections.ConfigDict):
            keys += [f"{k}.{sub}" for sub in config[k].keys()]
        else:
            keys.append(k)
    order = {k: i for i, k in enumerate(DESCRIPTIONS)}
    return sorted(keys, key=lambda k: (order.get(k, len(order)), k))


def _value(config: ml_collections.ConfigDict, key: str) -> Any:
    node = config
    for part in key.split("."):
        node = node[part]
    return node


def _short(value: Any) -> str:
    if isinstance(value, ml_collections.ConfigDict):
        return "{" + ", ".join(value.keys()) + "}"
    return repr(value)


def help_text(
    config: ml_collections.ConfigDict, argv: Sequence[str] = (), config_file: str = "", usage: str = ""
) -> str:
    """``python train.py --help``: ``usage``, then every key of ``config`` as ``--config.KEY=VALUE`` with its value,
    description and allowed values, then the fields of the selected model with their defaults."""
    allowed = choices(config)
    comments = _config_comments()
    lines = [usage.rstrip(), ""] if usage else []
    lines.append(f"Config keys of {config_file or 'the config'}, as --config.KEY=VALUE (the config's value shown):")
    for key in _keys(config):
        if key == MODEL_KWARGS:
            continue
        value = _value(config, key)
        what = f"one of: {', '.join(map(str, allowed[key]))}" if key in allowed else _kind(value)
        if key == "probes.kinds":
            what = f"a tuple of: {', '.join(allowed[key])}"
        if key == "dataset":
            what += ", or a prepared tfds dataset (mnist, cifar10, imagenet2012, ...)"
        if key == "sizes":
            what = "set in the config file"
        lines.append(f"  {key}={_short(value)}".ljust(38) + f" {describe(key, comments)} [{what}]")
    lines += ["", *model_help(config, argv)]
    return "\n".join(lines)


def model_help(config: ml_collections.ConfigDict, argv: Sequence[str] = ()) -> list[str]:
    """The lines of ``--help`` that list the fields of the selected model."""
    from jaxnorm.lab.models import fields as fields_lib

    name = selected_model(config, argv)
    try:
        fields = fields_lib.model_fields(name)
        cls = fields_lib.model_class(name)
    except ValueError as e:
        return [f"Model fields: {e}"]
    if fields is None:
        return [f"The model {name} does not say its fields: --config.model_kwargs.FIELD=VALUE is passed on unchecked"]
    given = config.get(MODEL_KWARGS) or ml_collections.ConfigDict()
    lines = [
        f"Fields of the model {name} ({cls.__name__ if cls else '?'}), as --config.model_kwargs.FIELD=VALUE "
        "(None: the model's default; tuples quoted: --config.model_kwargs.FIELD='(32,64)'; "
        "--config.model=NAME --help lists another model's):"
    ]
    for f in fields.values():
        value = given.get(f.name)
        shown = f"{f.name}={_short(value)}" if value is not None else f"{f.name}={_default(f.default)}"
        origin = " (the config's value)" if value is not None else ""
        lines.append(f"  {shown}".ljust(38) + f" {f.type}{origin}")
    others = "; ".join(f"{k} from {v}" for k, v in fields_lib.SET_BY_CONFIG.items())
    lines.append(f"  (not model_kwargs: {others})")
    return lines


def _default(value: Any) -> str:
    return value.__name__ if isinstance(value, type) else repr(value)


# ---- --list --------------------------------------------------------------------------------------------------------


def _first_docstring_line(path: str) -> str:
    """The first line of a Python file's docstring, read without running it."""
    try:
        with open(path, encoding="utf-8") as f:
            doc = ast.get_docstring(ast.parse(f.read())) or ""
    except (OSError, SyntaxError):
        return ""
    return doc.strip().splitlines()[0] if doc.strip() else ""


def _files(directory: str) -> list[tuple[str, str]]:
    if not os.path.isdir(directory):
        return []
    names = sorted(n for n in os.listdir(directory) if n.endswith(".py") and not n.startswith("_"))
    return [(os.path.join(directory, n), _first_docstring_line(os.path.join(directory, n))) for n in names]


def _experiments_dir(root: str) -> str:
    from jaxnorm.lab import report

    try:
        return report.experiments_dir(os.path.join(root, report.EXPERIMENTS_DIR))
    except FileNotFoundError:
        return ""


def list_text(root: str) -> str:
    """``python train.py --list``: the configs (``root/configs``) and experiments (``root/experiments``) with the
    first line of their docstrings, and the models, norms, dropouts and datasets of the registries."""
    from jaxnorm.lab import data, models
    from jaxnorm.lab.models import fields as fields_lib

    rel = os.path.relpath
    lines = ["Configs (python train.py --config FILE):"]
    lines += [f"  {rel(p, root)}".ljust(36) + f" {doc}" for p, doc in _files(os.path.join(root, "configs"))]
    exp = _experiments_dir(root)
    lines += ["", "Experiments (python -m jaxnorm.lab.sweep FILE, python -m jaxnorm.lab.report --only NAME; train.py"]
    lines[-1] += " --config FILE runs the base point):"
    lines += [f"  {rel(p, root)}".ljust(36) + f" {doc}" for p, doc in (_files(exp) if exp else [])]
    lines += ["", "Models (--config.model=NAME; --config.model=NAME --help lists its fields):"]
    for name in models.MODELS:
        cls = fields_lib.model_class(name)
        dims = fields_lib.spatial_dims(name)
        takes = {1: "1-D signals N×L×C", 2: "2-D images N×H×W×C"}.get(dims or 0, "any input, flattened")
        lines.append(f"  {name}".ljust(36) + f" {cls.__name__ if cls else ''}: {takes}")
    lines += ["", "Norms (--config.norm=NAME): " + ", ".join(models.norm_names())]
    lines += ["Dropouts (--config.dropout=NAME): " + ", ".join(models.dropout_names())]
    lines += ["", "Datasets (--config.dataset=NAME; offline, prepared on first use):"]
    for name, builder in data.BUILDERS.items():
        lines.append(f"  {name}".ljust(36) + " " + (builder.__doc__ or "").strip().splitlines()[0])
    for name, fn in data.GENERATED.items():
        lines.append(f"  {name}".ljust(36) + " " + (fn.__doc__ or "").strip().splitlines()[0])
    lines.append("  any tfds dataset prepared in data_dir".ljust(36) + " mnist, cifar10, imagenet2012, ...")
    lines += ["", "Every config key, its allowed values and the model's fields: python train.py --help"]
    return "\n".join(lines)


# ---- the end of a run ---------------------------------------------------------------------------------------------


def _command(argv: Sequence[str]) -> str | None:
    """The shell command that ran ``train.py`` with ``argv``, or None when ``argv`` is not train.py's."""
    if not argv or os.path.basename(argv[0]) != "train.py":
        return None
    script = argv[0]
    if os.path.isabs(script) and os.path.abspath(script).startswith(os.getcwd() + os.sep):
        script = os.path.relpath(script)
    return shlex.join(["python", script, *argv[1:]])


def run_summary(workdir: str, result: dict, argv: Sequence[str] | None = None) -> str:
    """What the end of a run prints after ``final eval``: the workdir, the metrics file, the final metrics, the
    checkpoints, and the commands for plots, probes on the trained state, TensorBoard and resuming. ``argv``: the
    command line (default ``sys.argv``), repeated as the resume command when it is train.py's."""
    from jaxnorm.lab.train import checkpoint as ckpt_lib
    from jaxnorm.lab.train import metrics as metrics_lib

    argv = sys.argv if argv is None else argv
    q = shlex.quote(workdir)
    saved = ckpt_lib.saved_steps(workdir)
    final = ", ".join(f"{k} {v:.4f}" for k, v in result.items())
    probe = (  # double quotes inside: shlex.quote wraps it in single quotes, readably
        "from jaxnorm.lab.train import loop; from jaxnorm import probes; import jax; "
        f"exp, state = loop.restore({json.dumps(workdir)}); "
        "batch = jax.tree.map(jax.numpy.asarray, loop.train_batch(exp, 0)); "
        'probe = probes.make_probe_fn(exp.eval_model, probes=("santurkar",), lr=exp.config.learning_rate, '
        "loss=exp.loss); "
        "print(probe(state, batch, jax.random.key(0)))"
    )
    command = _command(argv)
    lines = [
        f"run finished at step {saved[-1] if saved else '?'} in {workdir}: {final}",
        f"  metrics      {os.path.join(workdir, metrics_lib.METRICS_FILE)} (a JSON row per log and eval step; "
        "jaxnorm.lab.train.metrics.read_metrics reads it)",
        f"  checkpoints  {os.path.join(workdir, 'checkpoints')} (latest step {saved[-1] if saved else 'none'}), "
        f"config {os.path.join(workdir, 'config.json')}",
        "next:",
        f"  plots        python -m jaxnorm.lab.plots {q}   (PNGs into {os.path.join(workdir, 'plots')})",
        f"  probes       python -c {shlex.quote(probe)}",
        "               (loop.restore(WORKDIR) gives the experiment and trained state; or train with "
        "--config.probes.every=N)",
        f"  tensorboard  tensorboard --logdir {shlex.quote(os.path.join(workdir, metrics_lib.TENSORBOARD_DIR))}   "
        "(pip install 'jaxnorm[tensorboard]')",
        f"  resume       {command or 'rerun the same command'}   (it resumes from the latest checkpoint)",
    ]
    return "\n".join(lines)


def apply_xla_cpu(model: str) -> str:
    """Apply jaxnorm's measured XLA:CPU setting for ``model`` (:func:`jaxnorm.xla_cpu.apply`, before JAX's backend
    starts) and return the one line that says so, or '' when nothing was added."""
    from jaxnorm import xla_cpu
    from jaxnorm.lab.models.fields import spatial_dims

    added = xla_cpu.apply(spatial_dims(model))
    if not added:
        return ""
    return (
        f"XLA:CPU: {' '.join(added)} (measured faster for 2-D CNNs on x86-64; JAXNORM_XLA_CPU=off keeps XLA's defaults)"
    )

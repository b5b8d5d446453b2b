"""The base training config every ``configs/*.py`` starts from, and its validation.

A config is an ``ml_collections.ConfigDict``; experiment files call :func:`base_config` and override fields, so every
config has the same keys and an unknown key (a typo in a file or on the command line) is an error that lists the
valid ones.
"""

from __future__ import annotations

import difflib
import math

import ml_collections

from jaxnorm._checks import check_choice, check_positive_int, check_rate
from jaxnorm.lab.models.components import KERNEL_NORMS
from jaxnorm.lab.train.parallel import check_mode

OPTIMIZERS = ("sgd", "momentum", "nesterov", "adam", "adamw")
SCHEDULES = ("constant", "step", "cosine")

# keys that may change between a run and its resumption without changing its results
RESUMABLE_CHANGES = (
    "resume",
    "restore_step",
    "num_steps",
    "schedule_steps",  # with num_steps: checked on resumption by the schedule horizon (checkpoint.check_extension)
    "log_every",
    "eval_every",
    "checkpoint_every",
    "keep_checkpoints",
    "data_dir",
    "progress",
    "parallel",
    "coordinator_address",
    "num_processes",
    "process_id",
    "heartbeat_timeout",
    "shard_params",
    "shard_params_min_size",
    "compilation_cache",
    "compilation_cache_dir",
    "data_workers",
)

# keys added after runs had been recorded, with the value that reproduces those runs: while a key has that value it
# is left out of a run's identity (result_affecting), so earlier results and checkpoints, whose configs lack the key,
# still match and are neither retrained nor refused
ADDED_KEY_DEFAULTS = {
    "kernel_norm": "none",
    "shard_params": False,
    "shard_params_min_size": 2**12,
    "compilation_cache": True,
    "compilation_cache_dir": "",
    "data_workers": 0,
    "probes.bn_mode": "train",  # a dotted key: one of a group's keys
    "train_split": "train",
    "validation_split": "",
    "eval_train": False,
    "log_embedding_norm": False,
    "schedule_steps": 0,
    "log_first_step": False,
}
BN_MODES = ("train", "eval")

# keys of earlier runs' config.json that are now model fields: (old key, model field, old value meaning "the model's
# default"); read back, such a config is the one it would be written as today (see upgrade)
MOVED_TO_MODEL_KWARGS = (("norm_momentum", "momentum", None), ("num_groups", "num_groups", 0))

# the running-statistics momentum of the batch-statistics norms in every run, stated here only: each config inherits
# it through base_config (the norm layers' own default, as Flax's, is 0.99; a config may set another value)
BN_MOMENTUM = 0.9


def base_config() -> ml_collections.ConfigDict:
    c = ml_collections.ConfigDict()
    c.seed = 0
    # size presets: an experiment file declares c.sizes.<name> = {key: value, ...}; --config.size=<name> applies them
    # (keys also given explicitly on the command line or by a sweep's grid win). 'small' = the file's own values.
    c.size = "small"
    c.sizes = ml_collections.ConfigDict()
    # data
    c.dataset = "mnist1d"
    c.data_dir = ""  # '' = $JAXNORM_DATA_DIR, $TFDS_DATA_DIR or ~/tensorflow_datasets
    # tfds split names, slices allowed: the split trained on, and a held-out split evaluated with the test split
    # (val_loss, val_accuracy in the eval rows) to choose hyperparameters on instead of the test split: 'validation'
    # for mnist1d_10k; for digits (no validation split) train_split='train[:80%]', validation_split='train[80%:]'.
    # '' = no validation split. It must share no example with the train or the test split.
    c.train_split = "train"
    c.validation_split = ""
    c.batch_size = 128
    c.eval_batch_size = 500
    c.augment = False
    c.drop_remainder = True
    # model
    c.model = "cnn1d"
    c.norm = "batch"
    c.norm_position = "before"
    # reparametrize the hidden conv/dense kernels: none | weight (Salimans & Kingma 2016) | spectral (Miyato et al.
    # 2018, its power-iteration state in batch_stats); combines with any norm (see jaxnorm.lab.models.ZooModel)
    c.kernel_norm = "none"
    c.dropout = "none"
    c.dropout_rate = 0.0
    c.activation = "relu"
    # every other field of the model, by the model's own name and with the model's own default when absent: norm
    # options (momentum, num_groups, epsilon, ...) and architecture (channels, depth, width, ...); see
    # jaxnorm.lab.models.ZooModel and the model's class
    c.model_kwargs = ml_collections.ConfigDict()
    # declared (unset: None) so that the command line can set them on any config; None = the model's default
    c.model_kwargs.momentum = ml_collections.FieldReference(BN_MOMENTUM, field_type=float)
    c.model_kwargs.num_groups = ml_collections.config_dict.placeholder(int)
    c.model_kwargs.epsilon = ml_collections.config_dict.placeholder(float)
    # optimization
    c.optimizer = "momentum"
    c.learning_rate = 0.1
    c.momentum = 0.9
    c.weight_decay = 5e-4
    c.max_norm = 0.0  # > 0: project each kernel's incoming-weight vectors onto ‖w‖₂ <= max_norm (Srivastava §5.1)
    # Dauphin & Cubuk (2021) embedding regularization: + embedding_reg · mean_x ‖h(x)‖² (h = the head's input)
    c.embedding_reg = 0.0
    c.log_embedding_norm = False  # log embedding_norm_sq = mean_x ‖h(x)‖² at every λ, also 0 (the loss is unchanged)
    c.schedule = "cosine"
    c.warmup_steps = 0
    c.decay_boundaries = (0.5, 0.75)  # step schedule: fractions of num_steps where the LR is multiplied by decay_factor
    c.decay_factor = 0.1
    c.num_steps = 1000
    # the horizon of the step and cosine schedules (0 = num_steps); steps after it run at the schedule's final value.
    # Set to the old num_steps to extend a run without changing the learning rate of the steps it took
    c.schedule_steps = 0
    # evaluation, logging, checkpoints
    c.eval_every = 500
    c.eval_population_stats = False  # also evaluate with recomputed population statistics (Ioffe & Szegedy §3.1)
    c.population_batches = 20
    # also evaluate the deterministic network (eval mode: no dropout, running statistics) on the whole training split
    # (train_eval_loss, train_eval_accuracy). The train accuracy logged during training is the training-mode one,
    # averaged over the minibatches of a log window while the weights moved: under dropout it is the thinned
    # network's, lower than the deterministic network's, so a gap computed from it favours dropout
    c.eval_train = False
    c.log_every = 50
    # also a train row after the first step alone: its metrics are the initial network's (computed before the
    # step's update), e.g. ‖h‖² at initialization; a separate row, not averaged into the first log window's
    c.log_first_step = False
    c.checkpoint_every = 500
    c.keep_checkpoints = 3
    c.resume = True
    c.restore_step = -1  # -1 = latest; or a step whose checkpoint should be restored
    c.progress = True
    # landscape probes on the current batch, before its train step (see jaxnorm.probes.make_probe_fn)
    c.probes = ml_collections.ConfigDict()
    c.probes.every = 0  # 0 = off
    # santurkar (grid of 8 step sizes in [0.5, 4] x the current LR), santurkar_random, ics, top_eigenvalues,
    # hessian_trace, directional_curvature, spectral_density, loss_slice_1d, loss_slice_2d, activation_percentiles,
    # sharpness (lambda_max against the optimizer's stability threshold, 2/lr for SGD: the edge of stability)
    c.probes.kinds = ("santurkar", "sharpness")
    c.probes.ics_layers = ()  # () = every layer
    # batch norm in the probed loss: 'train' (each probed point's own batch statistics, as Santurkar et al.) or
    # 'eval' (the running statistics); written into every probe row as bn_mode
    c.probes.bn_mode = "train"
    # greedy layer-wise autoencoder pretraining of the first dense layers
    # (Bengio et al. 2007; see jaxnorm.lab.train.pretrain)
    c.pretrain = ml_collections.ConfigDict()
    c.pretrain.layers = ()  # hidden sizes of the dense layers to pretrain, e.g. (100, 100); () = off
    c.pretrain.steps = 500  # per layer
    c.pretrain.kind = "denoising"  # denoising | sparse | both
    c.pretrain.corruption = 0.3  # masking-noise fraction (denoising)
    c.pretrain.rho = 0.05  # target mean activation (sparse)
    c.pretrain.beta = 0.1  # weight of the sparsity penalty
    c.pretrain.learning_rate = 1e-3  # adam
    # data parallelism (see jaxnorm.lab.train.parallel)
    c.parallel = "auto"  # auto (global on several devices) | none | global | shard_map | pmap
    c.data_workers = 0  # input pipeline worker processes (Grain); 0 = read in this process (the CPU default)
    c.shard_params = False  # global mode: shard every large leaf of the state over the devices (FSDP / ZeRO-3)
    c.shard_params_min_size = 2**12  # leaves with fewer elements stay replicated under shard_params
    # the persistent XLA compilation cache: a sweep compiles each step once, not once per seed
    c.compilation_cache = True
    c.compilation_cache_dir = ""  # "" = $JAXNORM_CACHE_DIR, else $XDG_CACHE_HOME/jaxnorm/xla, else ~/.cache/...
    c.sync_bn = True  # batch statistics over the global batch (psum of sums and counts); False: per device
    c.coordinator_address = ""  # host:port of process 0, for multi-process runs (jax.distributed)
    c.num_processes = 1  # -1: let jax.distributed detect the cluster (TPU pods, SLURM)
    c.process_id = 0
    c.heartbeat_timeout = 30  # seconds before a lost process makes the others fail instead of hang
    return c


def validate(config: ml_collections.ConfigDict) -> None:
    """Unknown keys and names are errors that list what is valid."""
    base = base_config()
    unknown = sorted(set(config.keys()) - set(base.keys()))
    if unknown:
        hints = {k: difflib.get_close_matches(k, base.keys(), n=1) for k in unknown}
        hint = "; ".join(f"{k!r} (did you mean {v[0]!r}?)" for k, v in hints.items() if v)
        raise ValueError(
            f"unknown config keys {unknown}{' — ' + hint if hint else ''}. Valid keys: {sorted(base.keys())}"
        )
    check_choice("optimizer", config.optimizer, OPTIMIZERS)
    check_choice("schedule", config.schedule, SCHEDULES)
    check_mode(config.parallel)
    check_positive_int("config", "shard_params_min_size", config.shard_params_min_size)
    check_positive_int("config", "data_workers", config.data_workers, 0)
    check_positive_int("config", "schedule_steps", config.schedule_steps, 0)
    check_choice("kernel_norm", config.kernel_norm, KERNEL_NORMS)
    for key in (
        "batch_size",
        "eval_batch_size",
        "num_steps",
        "log_every",
        "eval_every",
        "checkpoint_every",
        "keep_checkpoints",
        "population_batches",
    ):
        check_positive_int("config", key, config[key])
    if not math.isfinite(config.learning_rate) or config.learning_rate <= 0:
        raise ValueError(f"config.learning_rate must be a finite number > 0, got {config.learning_rate}")
    for key in ("momentum", "weight_decay", "max_norm", "embedding_reg"):
        if not math.isfinite(config[key]) or config[key] < 0:
            raise ValueError(f"config.{key} must be a finite number >= 0 (0 = off), got {config[key]}")
    if config.momentum >= 1:
        raise ValueError(f"config.momentum must be < 1 (the optimizer's momentum; 0.9 is usual), got {config.momentum}")
    if config.probes.every < 0:
        raise ValueError(f"config.probes.every must be >= 0 (0 = no probes), got {config.probes.every}")
    check_choice("probes.bn_mode", config.probes.bn_mode, BN_MODES)
    for group in ("probes", "pretrain"):
        unknown_sub = sorted(set(config[group].keys()) - set(base[group].keys()))
        if unknown_sub:
            raise ValueError(
                f"unknown config keys {[group + '.' + k for k in unknown_sub]}. "
                f"Valid: {sorted(group + '.' + k for k in base[group].keys())}"
            )
    if config.size != "small" and config.size not in config.sizes:
        raise ValueError(
            f"config.size={config.size!r} is not declared by this config; sizes: {['small', *config.sizes.keys()]}"
        )
    check_rate("config.dropout_rate", config.dropout_rate)
    check_splits(config.train_split, config.validation_split)


def check_splits(train_split: str, validation_split: str) -> None:
    """What can be checked of the split names without the dataset (the dataset checks that it has them and that
    the validation split shares no example with the train or test split, in ``jaxnorm.lab.data.load``)."""
    if not isinstance(train_split, str) or not train_split:
        raise ValueError(
            f"config.train_split must name a split of the dataset ('train', 'train[:80%]'), got {train_split!r}"
        )
    if not isinstance(validation_split, str):
        raise ValueError(f"config.validation_split must be a split name or '' (none), got {validation_split!r}")
    if validation_split == train_split:
        raise ValueError(
            f"config.validation_split={validation_split!r} is train_split itself: a validation split "
            "must be held out from training; e.g. train_split='train[:80%]' with "
            "validation_split='train[80%:]' (digits), or validation_split='validation' (mnist1d_10k)"
        )


def resolve_size(config: ml_collections.ConfigDict, explicit=()) -> ml_collections.ConfigDict:
    """A copy of ``config`` with the preset ``config.sizes[config.size]`` applied ('small' = no change), except the
    keys in ``explicit`` (dotted names set on the command line or by a sweep), which keep their values. Applying it
    twice with the same or a larger ``explicit`` is a no-op."""
    out = ml_collections.ConfigDict(config.to_dict())
    if config.size == "small":
        return out
    if config.size not in config.sizes:
        raise ValueError(
            f"--config.size={config.size!r}: this config declares the sizes "
            f"{['small', *config.sizes.keys()]}; add c.sizes.{config.size} = {{...}} to its file"
        )
    preset = config.sizes[config.size].to_dict()
    explicit = set(explicit)
    for key, value in _flatten(preset).items():
        if key in explicit:
            continue
        node, *path = key.split(".")
        target = out
        for part in [node, *path][:-1]:
            target = target[part]
        leaf = key.split(".")[-1]
        if leaf not in target and not key.startswith("model_kwargs."):  # model_kwargs is free-form
            raise ValueError(f"config.sizes.{config.size} sets the unknown key {key!r}")
        target[leaf] = tuple(value) if isinstance(value, list) else value
    return out


def _flatten(d: dict, prefix: str = "") -> dict:
    out = {}
    for k, v in d.items():
        if isinstance(v, dict) and v:
            out.update(_flatten(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out


def upgrade(d: dict) -> dict:
    """A config read back from an earlier run's ``config.json`` with its keys as they are named today: the norm
    options that were top-level keys (``norm_momentum``, ``num_groups``) become ``model_kwargs`` entries, and unset
    (None) ``model_kwargs`` entries are dropped (the model's default either way), and keys added since get the
    value that reproduces the run (``ADDED_KEY_DEFAULTS``)."""
    d = dict(d)
    kwargs = {k: v for k, v in (d.get("model_kwargs") or {}).items() if v is not None}  # None: the model's default
    for old, field, default in MOVED_TO_MODEL_KWARGS:
        if old in d:
            value = d.pop(old)
            if value != default:
                kwargs.setdefault(field, value)
    if kwargs or "model_kwargs" in d:
        d["model_kwargs"] = kwargs
    for key, value in ADDED_KEY_DEFAULTS.items():  # keys added since: the value that reproduces the run
        group, _, sub = key.rpartition(".")
        if not group:
            d.setdefault(key, value)
        elif isinstance(d.get(group), dict) and sub not in d[group]:
            d[group] = {**d[group], sub: value}
    return d


def result_affecting(config: ml_collections.ConfigDict | dict) -> dict:
    """The config (or a config already read back as a dict) without the keys that may change on resumption, and
    without the later-added keys that still have the value of the runs recorded before them."""
    d = upgrade(config.to_dict() if isinstance(config, ml_collections.ConfigDict) else dict(config))
    return {
        k: v
        for k, v in d.items()
        if k not in RESUMABLE_CHANGES and not (k in ADDED_KEY_DEFAULTS and v == ADDED_KEY_DEFAULTS[k])
    }

"""The training loop: config -> data -> model -> jitted steps -> metrics and checkpoints.

Every check that can fail on bad input (config keys and names, dataset, batch size, model) runs before anything is
written to the workdir. The batch of step ``t`` and its dropout key are pure functions of (seed, t), so a resumed
run is bit-identical to an uninterrupted one.
"""

from __future__ import annotations

import contextlib
import dataclasses
import errno
import json
import os
import sys
from typing import Any

import flax.serialization
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from jaxnorm import nn as jnn
from jaxnorm import probes as probes_lib
from jaxnorm.lab import data as data_lib
from jaxnorm.lab import models as models_lib
from jaxnorm.lab import rng
from jaxnorm.lab.train import checkpoint as ckpt_lib
from jaxnorm.lab.train import config as config_lib
from jaxnorm.lab.train import metrics as metrics_lib
from jaxnorm.lab.train import optim, parallel, steps
from jaxnorm.lab.train import pretrain as pretrain_lib
from jaxnorm.lab.train import stage as stage_lib
from jaxnorm.lab.train import workdir as workdir_lib
from jaxnorm.lab.train.stage import NonFiniteLossError


@dataclasses.dataclass
class Experiment:
    """Everything a run is built from, checked before the workdir is touched."""

    config: Any
    dataset: Any
    model: Any  # the training model (its batch-statistics norms sync over 'batch' in parallel modes)
    eval_model: Any  # the same network without collectives, for eval and population statistics
    tx: Any
    schedule: Any
    dp: parallel.DataParallel

    @property
    def loss(self) -> str:
        return "mse" if self.dataset.info.task == "regression" else "cross_entropy"


def model_kwargs(config, num_classes: int) -> dict:
    kw = dict(
        num_classes=num_classes,
        norm=config.norm,
        norm_position=config.norm_position,
        dropout=config.dropout,
        dropout_rate=config.dropout_rate,
        activation=config.activation,
    )
    if config.kernel_norm != "none":  # only when set: a registered model need not know the field
        kw["kernel_norm"] = config.kernel_norm
    kw.update({k: v for k, v in config.model_kwargs.to_dict().items() if v is not None})  # None: the model's default
    return kw


def build(config) -> Experiment:
    """The experiment of ``config``, checked (keys, names, dataset, batch size, model) before anything is written."""
    config_lib.validate(config)
    return _build(config)


def _build(config) -> Experiment:
    dp = parallel.DataParallel.create(
        config.parallel,
        sync_bn=config.sync_bn,
        shard_params=config.shard_params,
        min_shard_size=config.shard_params_min_size,
    )
    parallel.check_batch_size(config.batch_size, dp.num_devices)
    # the split names are checked here (the dataset has them, the validation split is disjoint from the others),
    # before the workdir is touched
    dataset = data_lib.load(
        config.dataset,
        config.data_dir or None,
        train_split=config.train_split,
        validation_split=config.validation_split or None,
    )
    models_lib.check_model_config(config.model, config.model_kwargs.to_dict(), dataset.info.input_shape, config.dataset)
    n = dataset.info.num_train
    if config.batch_size > n:
        raise ValueError(
            f"batch_size={config.batch_size} is larger than the {config.dataset} training set "
            f"({n} examples); use batch_size <= {n}"
        )
    if not config.drop_remainder and models_lib.norm_spec(config.norm).batch_stats:
        raise ValueError(
            "drop_remainder=False pads the last batch of each epoch, and a batch-statistics norm would count the "
            "padding in its statistics; keep drop_remainder=True with norm="
            f"{config.norm!r}, or use a per-example norm"
        )
    kwargs = model_kwargs(config, dataset.info.num_classes)
    eval_model = models_lib.build_model(config.model, **kwargs)
    sync = dp.axis_name is not None and config.sync_bn
    model = models_lib.build_model(config.model, **{**kwargs, "axis_name": dp.axis_name}) if sync else eval_model
    tx, schedule = optim.make_optimizer(config)
    return Experiment(config, dataset, model, eval_model, tx, schedule, dp)


def _train_batch(exp: Experiment, step: int) -> dict:
    c = exp.config
    return data_lib.batch_at(
        exp.dataset.train, step, c.batch_size, seed=c.seed, augment=c.augment, drop_remainder=c.drop_remainder
    )


def input_pipeline(exp: Experiment, start: int, checkpointer=None) -> data_lib.GrainBatches:
    """The training batches from step ``start`` on, through Grain (:func:`jaxnorm.lab.data.train_batches`): this
    process's slice of ``_train_batch(exp, t)`` for every step ``t``, read ahead (in ``data_workers`` worker
    processes when > 0). When resuming, the position saved with the checkpoint of ``start`` is checked against the
    run's options."""
    c = exp.config
    batches = data_lib.train_batches(
        exp.dataset.train,
        c.batch_size,
        seed=c.seed,
        augment=c.augment,
        drop_remainder=c.drop_remainder,
        start_step=start,
        workers=c.data_workers,
    )
    saved = checkpointer.extra(start) if checkpointer is not None and start in checkpointer.steps() else None
    if saved and "input_pipeline" in saved:
        batches.set_state(saved["input_pipeline"])
    return batches


def evaluate(exp: Experiment, eval_step, variables, split: data_lib.Split | None = None) -> dict:
    """Mean loss (and accuracy, for classification) of ``variables`` in eval mode over every example of ``split``
    (default: the test split) exactly once, in batches of ``eval_batch_size`` (at most the split), the last one
    padded and masked."""
    split = exp.dataset.test if split is None else split
    sums = {"loss_sum": 0.0, "correct": 0, "count": 0}
    bs = min(exp.config.eval_batch_size, len(split))
    for batch in data_lib.eval_batches(split, bs):
        out = jax.device_get(eval_step(variables, batch))
        for k in sums:
            sums[k] += out[k]
    result = {"loss": sums["loss_sum"] / sums["count"]}
    if exp.loss == "cross_entropy":
        result["accuracy"] = sums["correct"] / sums["count"]
    return result


def eval_splits(exp: Experiment) -> dict[str, data_lib.Split]:
    """The splits every evaluation measures, by the prefix of their eval-row keys: the test split (no prefix:
    ``loss``, ``accuracy``, as in every earlier run), the validation split (``val_``) when ``validation_split`` is
    set, and the training split (``train_eval_``) when ``eval_train`` is on."""
    splits = {"": exp.dataset.test}
    if exp.dataset.validation is not None:
        splits["val_"] = exp.dataset.validation
    if exp.config.eval_train:
        splits["train_eval_"] = exp.dataset.train
    return splits


def _evaluate_splits(exp: Experiment, eval_step, variables) -> dict:
    """:func:`evaluate` of ``variables`` on every split of :func:`eval_splits`, with its keys prefixed."""
    return {
        f"{prefix}{k}": v
        for prefix, split in eval_splits(exp).items()
        for k, v in evaluate(exp, eval_step, variables, split).items()
    }


def population_variables(exp: Experiment, variables) -> dict:
    """``variables`` with batch statistics recomputed as population statistics over training batches."""
    c = exp.config
    batches = (_train_batch(exp, i)["x"] for i in range(c.population_batches))
    return jnn.population_batch_stats(
        exp.eval_model.apply, variables, batches, rngs={"dropout": steps.dropout_key(c.seed, 0)}
    )


def make_probes(exp: Experiment, shapes):
    """``probe(state, batch, step) -> dict`` running the configured probes eagerly (each probe's programs are
    compiled once), on the global batch with the network without collectives (so BN sees the global batch, as sync
    BN does), or None when probes are off. Probes never change the state. ``shapes``: the model's variables as
    ``jax.eval_shape`` gives them (to check the probed layers' names)."""
    p = exp.config.probes
    if not p.every:
        return None
    options: dict = {}
    for kind in set(p.kinds) & set(probes_lib.probe_names()):  # each kind's config keys (make_probe_fn names others)
        for key, option in probes_lib.probe_kind(kind).config_keys.items():
            value = p.get(key)
            if value is None or (isinstance(value, (tuple, list)) and not value):
                continue  # unset: the kind's default
            if option == "layers":
                valid = list(shapes["params"])
                bad = [name for name in value if name not in valid]
                if bad:
                    raise ValueError(f"probes.{key}: {bad} are not layers of {exp.config.model}; valid: {valid}")
                value = list(value)
            options.setdefault(kind, {})[option] = value
    if "sharpness" in p.kinds:  # the threshold of the optimizer that takes the step (optim.make_optimizer's)
        c = exp.config
        options["sharpness"] = {
            "sgd": {},
            "momentum": {"momentum": c.momentum, "momentum_kind": "heavy_ball"},
            "nesterov": {"momentum": c.momentum, "momentum_kind": "nesterov"},
            "adam": {"momentum": 0.9, "momentum_kind": "ema", "preconditioner": "adam"},
            "adamw": {"momentum": 0.9, "momentum_kind": "ema", "preconditioner": "adam"},
        }[c.optimizer]
    bn_mode = p.bn_mode
    probe_fn = probes_lib.make_probe_fn(
        exp.eval_model, probes=tuple(p.kinds), lr=exp.schedule, options=options, loss=exp.loss, train=bn_mode == "train"
    )
    base_key = rng.rng_stream(exp.config.seed, "probes")

    def probe(state, batch, step):
        out = probe_fn(state, {k: jnp.asarray(v) for k, v in batch.items()}, jax.random.fold_in(base_key, step))
        return {**out, "bn_mode": bn_mode}  # which landscape was probed, with every row

    return probe


def _summarize(rows: list[dict]) -> dict:
    rows = jax.device_get(rows)
    out = {k: float(np.mean([r[k] for r in rows])) for k in rows[0]}
    out["learning_rate"] = float(rows[-1]["learning_rate"])
    out["param_norm"] = float(rows[-1]["param_norm"])
    return out


def _stage(c, directory: str) -> stage_lib.Stage:
    def every(*periods):
        return lambda done: any(done % n == 0 for n in periods)

    def log_at(done):
        return every(c.log_every, c.checkpoint_every, c.eval_every)(done) or (c.log_first_step and done == 1)

    return stage_lib.Stage(
        name="training",
        step_label="step",
        split="train",
        total=c.num_steps,
        checkpoint_dir=directory,
        log_at=log_at,
        checkpoint_at=every(c.checkpoint_every),
        eval_at=every(c.eval_every),
        summarize=_summarize,
        detail=lambda m: f" (learning rate {float(jax.device_get(m['learning_rate'])):.4g})",
        hint="Lower --config.learning_rate, add warm-up (--config.warmup_steps) or a normalization layer",
    )


def cache_dir(config) -> str:
    """The persistent compilation cache's directory: ``compilation_cache_dir``, else ``$JAXNORM_CACHE_DIR``, else
    JAX's own (``$JAX_COMPILATION_CACHE_DIR``), else ``$XDG_CACHE_HOME/jaxnorm/xla`` (``~/.cache/jaxnorm/xla``): per
    user, shared by every run and sweep."""
    if config.compilation_cache_dir:
        return os.path.expanduser(config.compilation_cache_dir)
    if os.environ.get("JAXNORM_CACHE_DIR"):
        return os.path.expanduser(os.environ["JAXNORM_CACHE_DIR"])
    if jax.config.jax_compilation_cache_dir:  # JAX's own setting ($JAX_COMPILATION_CACHE_DIR) is kept
        return jax.config.jax_compilation_cache_dir
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return os.path.join(base, "jaxnorm", "xla")


def compilation_cache(config) -> None:
    """Turn JAX's persistent compilation cache on (``compilation_cache=True``, the default) for this process: a
    program compiled once (the train step of one config, for every seed of a sweep) is read back from disk. The
    cache is keyed by the program and the compiler, so it never serves a stale executable; an unwritable
    directory leaves the cache off with a warning instead of failing the run."""
    if not config.compilation_cache:
        return
    directory = cache_dir(config)
    try:
        os.makedirs(directory, exist_ok=True)
    except OSError as e:
        print(f"warning: compilation cache off: cannot create {directory} ({e.strerror})", file=sys.stderr)
        return
    if jax.config.jax_compilation_cache_dir != directory:
        jax.config.update("jax_compilation_cache_dir", directory)
    # JAX's default keeps only programs that took over 1 s; a small model's step compiles in well under that, and
    # so do the ~40 small programs (init, eval, metrics) a run also compiles. Keeping all of them: the default run's
    # warm start 5.1 s -> 3.6 s (at a 0.1 s threshold), for about 360 KB of cache per config
    if jax.config.jax_persistent_cache_min_compile_time_secs > 0:
        jax.config.update("jax_persistent_cache_min_compile_time_secs", 0)


def train_and_evaluate(config, workdir: str, explicit=()) -> dict:
    """Train ``config`` in ``workdir`` (resuming from its latest checkpoint) and return the final eval metrics.

    ``config.size`` selects a preset of the config file (``config.sizes``); keys named in ``explicit`` (set on the
    command line) keep their values. With several processes, every process trains on its slice of each global batch
    and only process 0 writes metrics, the config and checkpoints."""
    config = config_lib.resolve_size(config, explicit)
    config_lib.validate(config)
    parallel.initialize_distributed(config)  # before anything touches the devices
    if jax.process_index() == 0:  # a busy workdir is refused before the data and the model are built
        workdir_lib.refuse_if_in_use(workdir)
    compilation_cache(config)
    exp = _build(config)
    c, dp = exp.config, exp.dp
    example = _train_batch(exp, 0)["x"]
    shapes = jax.eval_shape(lambda x: exp.eval_model.init(jax.random.key(0), x, train=False), example)
    # the probes and the pretraining plan are checked against the model before the workdir is touched
    probe = make_probes(exp, shapes)
    pretrain_lib.plan(c, shapes["params"])
    primary = jax.process_index() == 0
    if primary:
        workdir_lib.check(workdir)
    state = steps.create_state(exp.eval_model, exp.tx, example, c.seed)
    with contextlib.ExitStack() as stack:
        watchdog = stack.enter_context(parallel.PeerWatchdog(c.heartbeat_timeout)) if jax.process_count() > 1 else None
        if primary:  # held until the run ends; taken before resume=False moves anything
            stack.enter_context(workdir_lib.locked(workdir))
        resume = ckpt_lib.check_workdir(workdir, c) if primary else os.path.exists(os.path.join(workdir, "config.json"))
        checkpointer = stack.enter_context(
            contextlib.closing(ckpt_lib.Checkpointer(workdir, c.keep_checkpoints, sharded=dp.shard_params))
        )
        if resume and c.restore_step != -1 and c.restore_step not in checkpointer.steps():
            raise ckpt_lib.CheckpointError(
                f"no checkpoint for step {c.restore_step} in {checkpointer.directory}; "
                f"available: {checkpointer.steps()}"
            )
        if primary:  # only once every check has passed: a failed command leaves config.json as it was
            ckpt_lib.save_config(workdir, c)
        writer = stack.enter_context(contextlib.closing(metrics_lib.MetricWriter(workdir, enabled=primary)))
        progress_on = c.progress and primary
        if not checkpointer.steps() and c.pretrain.layers:  # stage 1 (until fine-tuning has a checkpoint)
            params = pretrain_lib.pretrain(exp, state.variables(), workdir, writer, primary, progress=progress_on)
            state = state.replace(params=params, opt_state=exp.tx.init(params))
        if resume and checkpointer.steps():
            restored = checkpointer.restore(_restore_target(dp, state), c.restore_step)
            state = flax.serialization.from_state_dict(state, restored)
            print(f"resumed from step {int(state.step)} in {checkpointer.directory}")
            if watchdog is not None:
                watchdog.last_checkpoint = int(state.step)

        train_step = dp.compile(
            steps.make_train_step(
                exp.model,
                exp.tx,
                exp.schedule,
                c.seed,
                axis_name=dp.axis_name,
                sync_bn=c.sync_bn,
                loss=exp.loss,
                embedding_reg=c.embedding_reg,
                log_embedding=c.log_embedding_norm,
            )
        )
        eval_step = jax.jit(steps.make_eval_step(exp.eval_model, exp.loss))
        dropout_base = rng.rng_stream(c.seed, "dropout")  # an input, not a constant: one program for every seed
        start = int(state.step)
        writer.rewind_to(start)  # the rows (and TensorBoard points) of steps that run again are dropped
        progress = stack.enter_context(
            contextlib.closing(metrics_lib.Progress(c.num_steps, start, enabled=progress_on))
        )

        batches = stack.enter_context(contextlib.closing(input_pipeline(exp, start, checkpointer)))

        ahead = {}  # the next step's batch, already on its way to the devices

        def step_fn(dstate, step):
            placed = ahead.pop(step, None)
            if placed is None:
                if batches.step != step:  # the stage asks for consecutive steps; a pure function of it anyway
                    batches.set_state({**batches.get_state(), "step": step})
                placed = dp.put_local_batch(next(batches))  # this process's rows of batch `step`
            if probe is not None and step % c.probes.every == 0:  # the probes see the whole global batch
                writer.write(step, "probe", probe(dp.get_state(dstate), _train_batch(exp, step), step))
            out = train_step(dstate, placed, dropout_base)  # dispatched: the devices compute while the host ...
            if step + 1 < c.num_steps:  # ... reads the next batch and starts its transfer (prefetch to device)
                ahead[step + 1] = dp.put_local_batch(next(batches))
            return out

        def save(dstate, done):
            extra = {"input_pipeline": {**batches.get_state(), "step": done}}
            if dp.shard_params:  # every process writes the shards it holds, nothing is gathered
                checkpointer.save(done, flax.serialization.to_state_dict(dstate), extra=extra)
            elif primary:
                checkpointer.save(done, flax.serialization.to_state_dict(dp.get_state(dstate)), extra=extra)
            if watchdog is not None:
                watchdog.last_checkpoint = done

        dstate, last_eval = stage_lib.run_stage(
            _stage(c, checkpointer.directory),
            dp.put_state(state),
            start,
            step_fn,
            save,
            writer=writer,
            progress=progress,
            evaluate=lambda d: _evaluate_all(exp, eval_step, dp.get_state(d)),
        )
        if last_eval is None:  # nothing left to train: evaluate the restored state
            last_eval = _evaluate_all(exp, eval_step, dp.get_state(dstate))
    return last_eval


def _restore_target(dp: parallel.DataParallel, state) -> dict:
    """What a checkpoint is restored into: host arrays, or (``shard_params``) the shapes in the shardings the run
    keeps the state in, so that each process reads only its shards, whatever the device count that wrote them."""
    target = flax.serialization.to_state_dict(state)
    if not dp.shard_params:
        return target
    return jax.tree.map(
        lambda v, sh: jax.ShapeDtypeStruct(np.shape(v), np.asarray(v).dtype, sharding=sh),
        target,
        dp.state_sharding(target),
    )


def load_experiment(workdir: str) -> Experiment:
    """The experiment of a run directory (its ``config.json``), on this process's devices without data parallelism."""
    path = os.path.join(workdir, "config.json")
    if not os.path.exists(path):
        raise FileNotFoundError(f"{path} not found: is {str(workdir)!r} a jaxnorm run directory?")
    with open(path) as f:
        config = ml_collections.ConfigDict(config_lib.upgrade(json.load(f)))
    config.parallel = "none"
    return build(config)


def initial_state(exp: Experiment) -> steps.TrainState:
    """The state a run of ``exp`` starts from (step 0: its seed's initialization)."""
    return steps.create_state(exp.eval_model, exp.tx, _train_batch(exp, 0)["x"], exp.config.seed)


def train_batch(exp: Experiment, step: int) -> dict:
    """The global training batch of ``step`` (a pure function of the seed and the step)."""
    return _train_batch(exp, step)


def restore(workdir: str, step: int = -1) -> tuple[Experiment, steps.TrainState]:
    """The experiment and the trained state of a run directory (its ``config.json`` and the checkpoint of ``step``,
    -1 = the latest), on this process's devices without data parallelism: for analysis after training."""
    exp, states = restore_trajectory(workdir, [step])
    return exp, states[0][1]


def restore_trajectory(workdir: str, which=None) -> tuple[Experiment, list[tuple[int, steps.TrainState]]]:
    """The experiment and ``[(step, state), ...]`` of a run directory: the initial state (step 0) and every kept
    checkpoint (``which=None``), or the checkpoints of the steps in ``which`` (-1 = the latest), each verified.
    The points of a trajectory for :func:`jaxnorm.probes.trajectory_surface` (keep more of them with
    ``--config.keep_checkpoints``)."""
    exp = load_experiment(workdir)
    init = initial_state(exp)
    checkpointer = ckpt_lib.Checkpointer(workdir, exp.config.keep_checkpoints)
    try:
        if not checkpointer.steps():
            raise ckpt_lib.CheckpointError(f"{workdir} has no checkpoint to restore")
        wanted = checkpointer.steps() if which is None else list(which)
        states = [(0, init)] if which is None else []
        for s in wanted:
            restored = checkpointer.restore(flax.serialization.to_state_dict(init), s)
            state = flax.serialization.from_state_dict(init, restored)
            states.append((int(state.step), state))
    finally:
        checkpointer.close()
    return exp, states


def predict(exp: Experiment, variables, split: data_lib.Split | None = None) -> np.ndarray:
    """The model's outputs (eval mode) on the whole ``split`` (default: the test split), in order, as one N×…
    array."""
    split = exp.dataset.test if split is None else split
    apply = jax.jit(lambda v, x: exp.eval_model.apply(v, x, train=False))
    bs = min(exp.config.eval_batch_size, len(split))
    outs = []
    for batch in data_lib.eval_batches(split, bs):
        out = np.asarray(jax.device_get(apply(variables, batch["x"])))
        outs.append(out[np.asarray(batch["mask"])])
    return np.concatenate(outs)


def _evaluate_all(exp: Experiment, eval_step, state) -> dict:
    """One eval row: the splits of :func:`eval_splits` with the running statistics, and again with recomputed
    population statistics (``population_`` keys) when ``eval_population_stats`` is on and the model has any."""
    result = _evaluate_splits(exp, eval_step, state.variables())
    if exp.config.eval_population_stats and state.batch_stats:
        pop = _evaluate_splits(exp, eval_step, population_variables(exp, state.variables()))
        result.update({f"population_{k}": v for k, v in pop.items()})
    return result


def main(config, workdir: str, explicit=()) -> int:
    """CLI entry point: returns the process exit status; known errors are one clear line, not a traceback."""
    try:
        result = train_and_evaluate(config, workdir, explicit)
    except stage_lib.Terminated as e:
        print(str(e))
        return 143
    except KeyboardInterrupt as e:
        print(str(e) or "interrupted")
        return 130
    except (
        ValueError,
        KeyError,
        ckpt_lib.CheckpointError,
        NonFiniteLossError,
        data_lib.DatasetNotPreparedError,
        workdir_lib.WorkdirError,
        parallel.DistributedError,
    ) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    except jax.errors.JaxRuntimeError as e:
        if jax.process_count() == 1:
            raise
        # a collective whose peer is gone: one line, then exit at once (a normal shutdown would wait on the peer)
        saved = ckpt_lib.saved_steps(workdir)
        print(
            f"error: process {jax.process_index()} of {jax.process_count()}: a peer process stopped responding "
            f"({' '.join(str(e).split())[:120]}); last checkpoint step {saved[-1] if saved else 'none'}. Restart "
            "every process with the same command to resume",
            file=sys.stderr,
            flush=True,
        )
        os._exit(1)
    except OSError as e:
        if e.errno != errno.ENOSPC:
            raise
        print(
            f"error: disk full while writing {e.filename or workdir}: free space on that file system and rerun "
            "the same command to resume",
            file=sys.stderr,
        )
        return 1
    print("final eval: " + "  ".join(f"{k} {v:.4f}" for k, v in result.items()))
    if jax.process_index() == 0:  # where the results are and what comes next (jaxnorm.lab.cli.run_summary)
        from jaxnorm.lab import cli

        print(cli.run_summary(workdir, result), flush=True)
    return 0

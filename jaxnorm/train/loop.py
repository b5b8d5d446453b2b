"""The training loop: config -> data -> model -> jitted steps -> metrics and checkpoints.

Every check that can fail on bad input (config keys and names, dataset, batch size, model) runs before anything is
written to the workdir. The batch of step ``t`` and its dropout key are pure functions of (seed, t), so a resumed
run is bit-identical to an uninterrupted one.
"""

from __future__ import annotations

import dataclasses
import os
import time
from typing import Any

import flax.serialization
import jax
import jax.numpy as jnp
import numpy as np

from jaxnorm import data as data_lib
from jaxnorm import models as models_lib
from jaxnorm import nn as jnn
from jaxnorm import probes as probes_lib
from jaxnorm.train import checkpoint as ckpt_lib
from jaxnorm.train import config as config_lib
from jaxnorm.train import metrics as metrics_lib
from jaxnorm.train import optim, parallel, pretrain as pretrain_lib, steps


class NonFiniteLossError(FloatingPointError):
    """The training loss became NaN or Inf."""


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
        num_classes=num_classes, norm=config.norm, norm_position=config.norm_position, dropout=config.dropout,
        dropout_rate=config.dropout_rate, activation=config.activation,
    )
    if config.norm_momentum is not None:
        kw["momentum"] = config.norm_momentum
    if config.num_groups:
        kw["num_groups"] = config.num_groups
    if config.kernel_norm != "none":  # only when set: a registered model need not know the field
        kw["kernel_norm"] = config.kernel_norm
    kw.update(config.model_kwargs.to_dict())
    return kw


def build(config) -> Experiment:
    config_lib.validate(config)
    dp = parallel.DataParallel.create(config.parallel)
    parallel.check_batch_size(config.batch_size, dp.num_devices)
    dataset = data_lib.load(config.dataset, config.data_dir or None)
    n = dataset.info.num_train
    if config.batch_size > n:
        raise ValueError(f"batch_size={config.batch_size} is larger than the {config.dataset} training set "
                         f"({n} examples); use batch_size <= {n}")
    if not config.drop_remainder and models_lib.norm_spec(config.norm).batch_stats:
        raise ValueError(
            "drop_remainder=False pads the last batch of each epoch, and a batch-statistics norm would count the "
            "padding in its statistics; keep drop_remainder=True with norm="
            f"{config.norm!r}, or use a per-example norm")
    kwargs = model_kwargs(config, dataset.info.num_classes)
    eval_model = models_lib.build_model(config.model, **kwargs)
    sync = dp.axis_name is not None and config.sync_bn
    model = models_lib.build_model(config.model, **{**kwargs, "axis_name": dp.axis_name}) if sync else eval_model
    tx, schedule = optim.make_optimizer(config)
    return Experiment(config, dataset, model, eval_model, tx, schedule, dp)


def _train_batch(exp: Experiment, step: int) -> dict:
    c = exp.config
    return data_lib.batch_at(exp.dataset.train, step, c.batch_size, seed=c.seed, augment=c.augment,
                             drop_remainder=c.drop_remainder)


def evaluate(exp: Experiment, eval_step, variables) -> dict:
    sums = {"loss_sum": 0.0, "correct": 0, "count": 0}
    bs = min(exp.config.eval_batch_size, exp.dataset.info.num_test)
    for batch in data_lib.eval_batches(exp.dataset.test, bs):
        out = jax.device_get(eval_step(variables, batch))
        for k in sums:
            sums[k] += out[k]
    result = {"loss": sums["loss_sum"] / sums["count"]}
    if exp.loss == "cross_entropy":
        result["accuracy"] = sums["correct"] / sums["count"]
    return result


def population_variables(exp: Experiment, variables) -> dict:
    """``variables`` with batch statistics recomputed as population statistics over training batches."""
    c = exp.config
    batches = (_train_batch(exp, i)["x"] for i in range(c.population_batches))
    return jnn.population_batch_stats(exp.eval_model.apply, variables, batches,
                                      rngs={"dropout": steps.dropout_key(c.seed, 0)})


def make_probes(exp: Experiment, example_x):
    """``probe(state, batch, step) -> dict`` running the configured probes eagerly (each probe's programs are
    compiled once), on the global batch with the network without collectives (so BN sees the global batch, as sync
    BN does), or None when probes are off. Probes never change the state."""
    p = exp.config.probes
    if not p.every:
        return None
    options = {}
    if "ics" in p.kinds and p.ics_layers:
        shapes = jax.eval_shape(lambda x: exp.eval_model.init(jax.random.key(0), x, train=False), example_x)
        valid = list(shapes["params"])
        bad = [name for name in p.ics_layers if name not in valid]
        if bad:
            raise ValueError(f"probes.ics_layers: {bad} are not layers of {exp.config.model}; valid: {valid}")
        options["ics"] = {"layers": list(p.ics_layers)}
    probe_fn = probes_lib.make_probe_fn(exp.eval_model, probes=tuple(p.kinds), lr=exp.schedule, options=options,
                                        loss=exp.loss)

    def probe(state, batch, step):
        key = jax.random.fold_in(jax.random.key(exp.config.seed + 2), step)
        return probe_fn(state, {k: jnp.asarray(v) for k, v in batch.items()}, key)

    return probe


def _check_finite(pending: list) -> None:
    for step, m in pending:
        loss = float(jax.device_get(m["loss"]))
        if not np.isfinite(loss):
            raise NonFiniteLossError(
                f"the training loss is {loss} at step {step} (learning rate "
                f"{float(jax.device_get(m['learning_rate'])):.4g}); no checkpoint was written after it. "
                "Lower --config.learning_rate, add warm-up (--config.warmup_steps) or a normalization layer")


def _summarize(pending: list) -> dict:
    rows = jax.device_get([m for _, m in pending])
    out = {k: float(np.mean([r[k] for r in rows])) for k in rows[0]}
    out["learning_rate"] = float(rows[-1]["learning_rate"])
    out["param_norm"] = float(rows[-1]["param_norm"])
    return out


def train_and_evaluate(config, workdir: str, explicit=()) -> dict:
    """Train ``config`` in ``workdir`` (resuming from its latest checkpoint) and return the final eval metrics.

    ``config.size`` selects a preset of the config file (``config.sizes``); keys named in ``explicit`` (set on the
    command line) keep their values. With several processes, every process trains on its slice of each global batch
    and only process 0 writes metrics, the config and checkpoints."""
    config_lib.validate(config)
    config = config_lib.resolve_size(config, explicit)
    parallel.initialize_distributed(config)
    exp = build(config)
    c, dp = exp.config, exp.dp
    example = _train_batch(exp, 0)["x"]
    probe = make_probes(exp, example)  # checks probe names and layers before the workdir is touched
    init_params = jax.eval_shape(lambda x: exp.eval_model.init(jax.random.key(0), x, train=False), example)
    pretrain_lib.plan(c, init_params["params"])  # checks the pretraining plan against the model, same reason
    primary = jax.process_index() == 0
    resume = ckpt_lib.check_workdir(workdir, c) if primary else os.path.exists(os.path.join(workdir, "config.json"))
    if primary:
        ckpt_lib.save_config(workdir, c)
    state = steps.create_state(exp.eval_model, exp.tx, example, c.seed)
    checkpointer = ckpt_lib.Checkpointer(workdir, c.keep_checkpoints)
    writer = metrics_lib.MetricWriter(workdir, enabled=primary)
    if not checkpointer.steps() and c.pretrain.layers:  # stage 1 (until fine-tuning has a checkpoint)
        try:
            params = pretrain_lib.pretrain(exp, state.variables(), workdir, writer, primary)
        except KeyboardInterrupt:
            writer.close()
            checkpointer.close()
            raise
        state = state.replace(params=params, opt_state=exp.tx.init(params))
    if resume and checkpointer.steps():
        restored = checkpointer.restore(flax.serialization.to_state_dict(state), c.restore_step)
        state = flax.serialization.from_state_dict(state, restored)
        print(f"resumed from step {int(state.step)} in {checkpointer.directory}")

    train_step = dp.compile(steps.make_train_step(exp.model, exp.tx, exp.schedule, c.seed, axis_name=dp.axis_name,
                                                  sync_bn=c.sync_bn, loss=exp.loss, embedding_reg=c.embedding_reg))
    eval_step = jax.jit(steps.make_eval_step(exp.eval_model, exp.loss))
    start = int(state.step)
    progress = metrics_lib.Progress(c.num_steps, start, enabled=c.progress and primary)
    pending: list = []
    last_eval: dict = {}
    t_window = time.perf_counter()
    dstate = dp.put_state(state)

    def save(at: int) -> None:
        if primary:
            checkpointer.save(at, flax.serialization.to_state_dict(dp.get_state(dstate)))

    try:
        for step in range(start, c.num_steps):
            batch = _train_batch(exp, step)
            if probe is not None and step % c.probes.every == 0:
                writer.write(step, "probe", probe(dp.get_state(dstate), batch, step))
            dstate, m = train_step(dstate, dp.put_batch(batch))
            pending.append((step, m))
            done = step + 1
            is_last = done == c.num_steps
            if done % c.log_every == 0 or is_last or done % c.checkpoint_every == 0 or done % c.eval_every == 0:
                _check_finite(pending)
                summary = _summarize(pending)
                now = time.perf_counter()
                summary["steps_per_sec"] = len(pending) / (now - t_window)
                writer.write(done, "train", summary)
                progress.update(done, f"loss {summary['loss']:.4f}")
                pending, t_window = [], now
            if done % c.eval_every == 0 or is_last:
                last_eval = _evaluate_all(exp, eval_step, dp.get_state(dstate))
                writer.write(done, "eval", last_eval)
                t_window = time.perf_counter()  # eval time does not count against steps/s
            if done % c.checkpoint_every == 0 or is_last:
                save(done)
        if start >= c.num_steps and not last_eval:
            last_eval = _evaluate_all(exp, eval_step, dp.get_state(dstate))
    except KeyboardInterrupt:
        progress.close()
        _check_finite(pending)
        save(int(dp.get_state(dstate).step))
        writer.close()
        checkpointer.close()
        raise KeyboardInterrupt(
            f"interrupted at step {int(dp.get_state(dstate).step)}; checkpoint saved in {checkpointer.directory}. "
            "Rerun the same command to resume.") from None
    finally:
        progress.close()
    writer.close()
    checkpointer.close()
    return last_eval


def restore(workdir: str, step: int = -1) -> tuple[Experiment, steps.TrainState]:
    """The experiment and the trained state of a run directory (its ``config.json`` and the checkpoint of ``step``,
    -1 = the latest), on this process's devices without data parallelism: for analysis after training."""
    import json

    import ml_collections

    path = os.path.join(workdir, "config.json")
    if not os.path.exists(path):
        raise FileNotFoundError(f"{path} not found: is {workdir!r} a jaxnorm run directory?")
    with open(path) as f:
        config = ml_collections.ConfigDict(json.load(f))
    config.parallel = "none"
    exp = build(config)
    example = _train_batch(exp, 0)["x"]
    state = steps.create_state(exp.eval_model, exp.tx, example, config.seed)
    checkpointer = ckpt_lib.Checkpointer(workdir, config.keep_checkpoints)
    try:
        if not checkpointer.steps():
            raise ckpt_lib.CheckpointError(f"{workdir} has no checkpoint to restore")
        restored = checkpointer.restore(flax.serialization.to_state_dict(state), step)
    finally:
        checkpointer.close()
    return exp, flax.serialization.from_state_dict(state, restored)


def predict(exp: Experiment, variables) -> np.ndarray:
    """The model's outputs (eval mode) on the whole test split, in order, as one N×… array."""
    apply = jax.jit(lambda v, x: exp.eval_model.apply(v, x, train=False))
    bs = min(exp.config.eval_batch_size, exp.dataset.info.num_test)
    outs = []
    for batch in data_lib.eval_batches(exp.dataset.test, bs):
        out = np.asarray(jax.device_get(apply(variables, batch["x"])))
        outs.append(out[np.asarray(batch["mask"])])
    return np.concatenate(outs)


def _evaluate_all(exp: Experiment, eval_step, state) -> dict:
    result = evaluate(exp, eval_step, state.variables())
    if exp.config.eval_population_stats and state.batch_stats:
        pop = evaluate(exp, eval_step, population_variables(exp, state.variables()))
        result.update({f"population_{k}": v for k, v in pop.items()})
    return result


def main(config, workdir: str, explicit=()) -> int:
    """CLI entry point: returns the process exit status; known errors are one clear line, not a traceback."""
    try:
        result = train_and_evaluate(config, workdir, explicit)
    except KeyboardInterrupt as e:
        print(str(e) or "interrupted")
        return 130
    except (ValueError, KeyError, ckpt_lib.CheckpointError, NonFiniteLossError, data_lib.DatasetNotPreparedError) as e:
        print(f"error: {e}", file=__import__("sys").stderr)
        return 1
    print("final eval: " + "  ".join(f"{k} {v:.4f}" for k, v in result.items()))
    return 0

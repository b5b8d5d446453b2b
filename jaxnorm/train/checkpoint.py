"""Orbax checkpoints of the training state, with the run's config saved beside them."""

from __future__ import annotations

import json
import os
import shutil
import time
from typing import Any

import jax
import orbax.checkpoint as ocp

from jaxnorm.train.config import ADDED_KEY_DEFAULTS, result_affecting


class CheckpointError(RuntimeError):
    """A checkpoint that cannot be read, or a workdir that holds a different run."""


def _config_path(workdir: str) -> str:
    return os.path.join(workdir, "config.json")


def check_workdir(workdir: str, config) -> bool:
    """Whether ``workdir`` holds a run to resume. Refuses one with a different config unless ``resume=False``,
    in which case the old run is moved aside (into ``previous-<time>/``), never deleted."""
    path = _config_path(workdir)
    if not os.path.exists(path):
        return False
    with open(path) as f:
        old = json.load(f)
    if not config.resume:
        aside = os.path.join(workdir, f"previous-{time.strftime('%Y%m%d-%H%M%S')}")
        os.makedirs(aside)
        for name in os.listdir(workdir):
            if not name.startswith("previous-"):
                shutil.move(os.path.join(workdir, name), aside)
        print(f"resume=False: the earlier run in {workdir} was moved to {aside}")
        return False
    new = json.loads(json.dumps(result_affecting(config)))
    old = result_affecting(old)  # also drops later-added keys at the value of the runs recorded before them
    diff = sorted(k for k in set(old) | set(new) if old.get(k) != new.get(k))
    if diff:
        def shown(d, k):  # a later-added key left out at its default shows that default
            return d.get(k, ADDED_KEY_DEFAULTS.get(k))

        details = ", ".join(f"{k}: {shown(old, k)!r} -> {shown(new, k)!r}" for k in diff[:8])
        raise CheckpointError(
            f"{workdir} holds a run with a different config ({details}). Use a new --workdir, or pass "
            "--config.resume=False to start over (the old run is moved into previous-<time>/, not deleted)."
        )
    return True


def save_config(workdir: str, config) -> None:
    os.makedirs(workdir, exist_ok=True)
    tmp = _config_path(workdir) + ".tmp"
    with open(tmp, "w") as f:
        f.write(config.to_json(indent=2, sort_keys=True))
    os.replace(tmp, _config_path(workdir))


class Checkpointer:
    """Keeps the last ``keep`` checkpoints of the state under ``WORKDIR/checkpoints/<step>``."""

    def __init__(self, workdir: str, keep: int):
        self.directory = os.path.abspath(os.path.join(workdir, "checkpoints"))
        kw = {}
        if jax.process_count() > 1:
            # process 0 alone writes (the state is replicated); each process reads on its own, with no barrier
            me = jax.process_index()
            kw["multiprocessing_options"] = ocp.options.MultiprocessingOptions(primary_host=me, active_processes={me})
        os.makedirs(self.directory, exist_ok=True)
        options = ocp.CheckpointManagerOptions(max_to_keep=keep, create=not kw, enable_async_checkpointing=False,
                                               **kw)
        self.manager = ocp.CheckpointManager(self.directory, options=options)

    def steps(self) -> list[int]:
        return sorted(self.manager.all_steps())

    def save(self, step: int, state: Any) -> None:
        if step in self.manager.all_steps():
            return
        self.manager.save(step, args=ocp.args.StandardSave(jax.device_get(state)))
        self.manager.wait_until_finished()

    def restore(self, target: Any, step: int = -1) -> Any:
        """Restore into the structure of ``target`` (latest, or ``step``); clear errors for missing or broken ones."""
        steps = self.steps()
        if not steps:
            raise CheckpointError(f"no checkpoint in {self.directory}")
        if step == -1:
            step = steps[-1]
        elif step not in steps:
            raise CheckpointError(f"no checkpoint for step {step} in {self.directory}; available: {steps}")
        try:
            return self.manager.restore(step, args=ocp.args.StandardRestore(target))
        except Exception as e:  # orbax raises many types for truncated/corrupt files
            earlier = [s for s in steps if s != step]
            raise CheckpointError(
                f"the checkpoint of step {step} in {self.directory} is unreadable ({type(e).__name__}: "
                f"{str(e)[:200]}). Earlier checkpoints are kept: {earlier or 'none'}; restore one with "
                f"--config.restore_step=N, or move the broken directory away."
            ) from e

    def close(self) -> None:
        self.manager.close()

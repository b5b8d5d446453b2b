"""Data parallelism: one code path per mode, all with axis name ``'batch'``.

- ``'none'``: ``jax.jit`` on one device.
- ``'pmap'``: ``jax.pmap`` over the local devices; the state is replicated per device.
- ``'sharding'``: ``jax.jit`` of a ``shard_map`` over a device ``Mesh`` with axis ``'batch'``: the state is replicated
  (``NamedSharding(mesh, P())``) and the global batch sharded along its first axis (``P('batch')``) — the path JAX
  recommends now that ``pmap`` is in maintenance.
- ``'auto'``: ``'sharding'`` when there is more than one device, ``'none'`` otherwise.

The step itself (see :func:`jaxnorm.train.steps.make_train_step`) is the same function in every mode; with several
processes (``jax.distributed``) each process feeds its own slice of the global batch. Checkpoints always hold the
unreplicated state, so a run can resume on a different number of devices.
"""

from __future__ import annotations

import dataclasses
import os
import sys
import threading
import time
from typing import Any, Callable

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from jaxnorm._checks import check_choice

MODES = ("auto", "none", "pmap", "sharding")
AXIS = "batch"


def resolve_mode(mode: str) -> str:
    check_choice("parallel mode", mode, MODES)
    if mode == "auto":
        return "sharding" if jax.device_count() > 1 else "none"
    return mode


def initialize_distributed(config) -> None:
    """``jax.distributed.initialize`` from ``coordinator_address``/``num_processes``/``process_id``, or with JAX's
    own cluster detection when ``num_processes=-1``. A no-op for one process."""
    if config.num_processes == -1:  # let JAX detect the cluster (TPU pods, SLURM, Open MPI, ...)
        if not getattr(jax.distributed, "is_initialized", lambda: False)():
            jax.distributed.initialize()
        return
    if config.num_processes <= 1 and not config.coordinator_address:
        return
    # nothing here may touch the XLA backend (jax.devices(), jax.process_count(), ...) before initialize()
    if getattr(jax.distributed, "is_initialized", lambda: False)():
        return
    if not config.coordinator_address or config.num_processes < 2 or not 0 <= config.process_id < config.num_processes:
        raise ValueError(
            f"multi-process training needs coordinator_address (host:port), num_processes >= 2 and 0 <= process_id "
            f"< num_processes; got {config.coordinator_address!r}, {config.num_processes}, {config.process_id}")
    jax.config.update("jax_cpu_collectives_implementation", "gloo")  # CPU collectives across processes
    timeout = config.heartbeat_timeout * 3
    try:
        jax.distributed.initialize(
            coordinator_address=config.coordinator_address, num_processes=config.num_processes,
            process_id=config.process_id, heartbeat_timeout_seconds=config.heartbeat_timeout,
            initialization_timeout=timeout, shutdown_timeout_seconds=config.heartbeat_timeout)
    except Exception as e:  # noqa: BLE001 - XLA raises its runtime error type for every connection failure
        raise DistributedError(
            f"process {config.process_id} of {config.num_processes}: not every process connected to the coordinator "
            f"{config.coordinator_address} within the initialization timeout ({timeout} s = 3 × heartbeat_timeout); "
            f"start all {config.num_processes} processes with the same --config.coordinator_address "
            f"({type(e).__name__}: {' '.join(str(e).split())[:120]})") from None


class DistributedError(RuntimeError):
    """A multi-process run that cannot start, or whose peers stopped responding."""


class PeerWatchdog:
    """Exits this process with one line when a peer stops responding, instead of hanging in a collective or letting
    XLA abort with a core dump.

    Every process bumps its own counter in the coordination service's key-value store once a second and watches the
    others'; a peer whose counter has not moved for ``timeout`` seconds (or a coordinator that no longer answers) is
    reported as ``error: process K of N stopped responding; last checkpoint step S`` and the process exits with
    status 1. ``last_checkpoint`` is kept up to date by the caller."""

    def __init__(self, timeout: float, interval: float = 1.0):
        from jax._src import distributed  # the client of jax.distributed: no public handle to it exists

        self.client = getattr(getattr(distributed, "global_state", None), "client", None)  # None: watchdog off
        self.me, self.n = jax.process_index(), jax.process_count()
        self.timeout, self.interval = timeout, interval
        self.last_checkpoint: int | None = None
        self._stop = threading.Event()
        self._last_answer = time.monotonic()

    def __enter__(self):
        if self.client is not None and self.n > 1:
            threading.Thread(target=self._beat, daemon=True).start()
            threading.Thread(target=self._watch_coordinator, daemon=True).start()
        return self

    def __exit__(self, *exc):
        self._stop.set()

    def _die(self, who: int) -> None:
        if self._stop.is_set():
            return
        print(f"error: process {who} of {self.n} stopped responding (no heartbeat for {self.timeout:.0f} s); last "
              f"checkpoint step {self.last_checkpoint if self.last_checkpoint is not None else 'none'}. Restart "
              "every process with the same command to resume", file=sys.stderr, flush=True)
        os._exit(1)

    def _beat(self) -> None:
        seen = {k: (None, None) for k in range(self.n) if k != self.me}  # the clock starts at a peer's first beat
        beat = 0
        while not self._stop.wait(self.interval):
            now = time.monotonic()
            try:
                beat += 1
                self.client.key_value_set(f"jaxnorm/alive/{self.me}", str(beat), allow_overwrite=True)
                for k, (value, since) in seen.items():
                    try:
                        v = self.client.key_value_try_get(f"jaxnorm/alive/{k}")
                    except Exception:  # noqa: BLE001 - not written yet
                        v = value
                    seen[k] = (v, now) if v != value else (value, since)
                self._last_answer = time.monotonic()
            except Exception:  # noqa: BLE001 - the coordinator (process 0) is gone
                self._die(0)
            for k, (_, since) in seen.items():
                if since is not None and now - since > self.timeout:
                    self._die(k)

    def _watch_coordinator(self) -> None:
        while not self._stop.wait(self.interval):  # a key-value call that hangs: the coordinator is unreachable
            if time.monotonic() - self._last_answer > self.timeout:
                self._die(0)


def check_batch_size(batch_size: int, num_devices: int) -> None:
    if batch_size % num_devices:
        lower = batch_size - batch_size % num_devices
        raise ValueError(
            f"the global batch_size={batch_size} is not divisible by the {num_devices} devices "
            f"({jax.process_count()} process(es) × {jax.local_device_count()} local); use a multiple of "
            f"{num_devices} such as {max(lower, num_devices)} or {lower + num_devices}")


def _host(x):
    """A host numpy copy of one replica of ``x`` (works for arrays not fully addressable by this process)."""
    if isinstance(x, jax.Array):
        return np.asarray(x.addressable_data(0))
    return np.asarray(x)


@dataclasses.dataclass
class DataParallel:
    """Places states and batches for one mode and compiles the step for it."""

    mode: str
    mesh: Mesh | None = None

    @classmethod
    def create(cls, mode: str) -> "DataParallel":
        mode = resolve_mode(mode)
        mesh = Mesh(np.asarray(jax.devices()), (AXIS,)) if mode == "sharding" else None
        return cls(mode, mesh)

    @property
    def axis_name(self) -> str | None:
        return None if self.mode == "none" else AXIS

    @property
    def num_devices(self) -> int:
        return 1 if self.mode == "none" else jax.device_count()

    def local_slice(self, batch: dict) -> dict:
        """This process's contiguous slice of a global batch (the whole batch for one process)."""
        p, n = jax.process_index(), jax.process_count()
        if n == 1:
            return batch
        size = len(batch["y"]) // n
        return {k: v[p * size:(p + 1) * size] for k, v in batch.items()}

    def put_batch(self, batch: dict) -> Any:
        check_batch_size(len(batch["y"]), self.num_devices)
        local = self.local_slice(batch)
        if self.mode == "none":
            return local
        if self.mode == "pmap":
            d = jax.local_device_count()
            return {k: v.reshape((d, v.shape[0] // d) + v.shape[1:]) for k, v in local.items()}
        sharding = NamedSharding(self.mesh, P(AXIS))
        return {k: jax.make_array_from_process_local_data(sharding, np.asarray(v)) for k, v in local.items()}

    def put_state(self, state: Any) -> Any:
        if self.mode == "none":
            return state
        if self.mode == "pmap":
            d = jax.local_device_count()  # one copy per local device; pmap places them
            return jax.tree.map(lambda v: np.broadcast_to(np.asarray(v), (d,) + np.shape(v)), state)
        sharding = NamedSharding(self.mesh, P())
        return jax.tree.map(lambda v: jax.make_array_from_process_local_data(sharding, np.asarray(v)), state)

    def get_state(self, state: Any) -> Any:
        """The unreplicated state on the host (what checkpoints and eval use)."""
        if self.mode == "none":
            return state
        if self.mode == "pmap":
            return jax.tree.map(lambda v: _host(v[0]), state)
        return jax.tree.map(_host, state)

    def compile(self, step: Callable) -> Callable:
        """``step(state, batch) -> (state, metrics)`` compiled for this mode; metrics come back unreplicated."""
        if self.mode == "none":
            return jax.jit(step)
        if self.mode == "pmap":
            pstep = jax.pmap(step, axis_name=AXIS)

            def run(state, batch):
                state, metrics = pstep(state, batch)
                return state, jax.tree.map(lambda m: m[0], metrics)

            return run
        shard_map = getattr(jax, "shard_map", None)
        if shard_map is None:  # older JAX
            from jax.experimental.shard_map import shard_map
        specs = dict(mesh=self.mesh, in_specs=(P(), P(AXIS)), out_specs=(P(), P()))
        try:  # outputs are psum'd/pmean'd, hence replicated; skip the static replication check (renamed over time)
            mapped = shard_map(step, check_vma=False, **specs)
        except TypeError:
            mapped = shard_map(step, check_rep=False, **specs)
        return jax.jit(mapped)

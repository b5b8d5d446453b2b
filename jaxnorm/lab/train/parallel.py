"""Data parallelism: one code path per mode, all with the mesh/axis name ``'batch'``.

- ``'none'``: ``jax.jit`` on one device.
- ``'global'``: ``jax.jit`` of the global-view step over arrays sharded with ``NamedSharding(mesh, P('batch'))`` on a
  ``jax.make_mesh`` mesh (JAX's recommended path). The step is the single-device step: batch norm reduces over
  the global batch with ordinary reductions (XLA inserts the collectives), dropout draws one mask for the global
  batch from one key, so neither depends on the device count. With ``shard_params`` every large leaf of the state
  (parameters and optimizer moments) is sharded along its largest divisible axis (FSDP / ZeRO-3 style) and
  gathered by XLA where used.
- ``'shard_map'`` (formerly ``'sharding'``): ``jax.jit`` of a ``shard_map`` over the mesh: explicit per-device code
  with ``axis_name='batch'`` (sync BN by ``psum``, or per-device "ghost" statistics with ``sync_bn=False``); the
  dropout key is folded with the device index.
- ``'pmap'``: ``jax.pmap`` over the local devices (in maintenance upstream; kept because runs use it).
- ``'auto'``: ``'global'`` when there is more than one device (``'shard_map'`` with ``sync_bn=False``, which needs
  per-device code), ``'none'`` otherwise.

With several processes (``jax.distributed``) each process feeds its own slice of the global batch. Checkpoints
of a replicated state hold one host copy, written by process 0; with ``shard_params`` every process writes its
shards (nothing is gathered). Either kind resumes on any number of devices, with or without ``shard_params``.
"""

from __future__ import annotations

import dataclasses
import os
import sys
import threading
import time
from collections.abc import Callable
from typing import Any

import jax
import numpy as np
from jax.sharding import AxisType, Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

from jaxnorm._checks import check_choice

MODES = ("auto", "none", "global", "shard_map", "pmap")
ALIASES = {"sharding": "shard_map"}  # the names of earlier versions, still accepted (config.json of old runs)
AXIS = "batch"
FSDP_MIN_SIZE = 2**12  # leaves with fewer elements stay replicated under shard_params (biases, norm scales)
_PMAP_NOTE = []  # printed once per process


def check_mode(mode: str) -> str:
    """``mode`` with an old alias replaced; a ValueError listing the modes if it is not one."""
    return check_choice("parallel mode", ALIASES.get(mode, mode), MODES)


def resolve_mode(mode: str, sync_bn: bool = True) -> str:
    """The concrete mode of ``mode`` on this machine (``'auto'`` → ``'global'``, ``'shard_map'`` or ``'none'``)."""
    mode = check_mode(mode)
    if mode == "auto":
        if jax.device_count() == 1:
            return "none"
        return "global" if sync_bn else "shard_map"
    if mode == "global" and not sync_bn:
        raise ValueError(
            "parallel='global' computes batch statistics over the global batch; sync_bn=False "
            "(per-device statistics) needs per-device code: use parallel='shard_map' or 'pmap'"
        )
    return mode


def fsdp_spec(shape, num_devices: int, min_size: int = FSDP_MIN_SIZE, where: str = "a leaf") -> P:
    """The FSDP partition of one leaf: along its largest axis divisible by ``num_devices`` (the first of equal
    ones), replicated when it has fewer than ``min_size`` elements. A large leaf with no divisible axis is a
    ValueError naming its shape and the device count."""
    shape = tuple(shape)
    if num_devices == 1 or int(np.prod(shape, dtype=np.int64)) < min_size:
        return P()
    axes = [i for i, n in enumerate(shape) if n % num_devices == 0]
    if not axes:
        raise ValueError(
            f"shard_params: {where} of shape {shape} has no axis divisible by the {num_devices} devices; use a "
            f"device count that divides one of {shape}, raise shard_params_min_size above its {int(np.prod(shape))} "
            "elements to replicate it, or set shard_params=False"
        )
    best = max(axes, key=lambda i: (shape[i], -i))
    return P(*([None] * best + [AXIS]))


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
            f"< num_processes; got {config.coordinator_address!r}, {config.num_processes}, {config.process_id}"
        )
    jax.config.update("jax_cpu_collectives_implementation", "gloo")  # CPU collectives across processes
    timeout = config.heartbeat_timeout * 3
    try:
        jax.distributed.initialize(
            coordinator_address=config.coordinator_address,
            num_processes=config.num_processes,
            process_id=config.process_id,
            heartbeat_timeout_seconds=config.heartbeat_timeout,
            initialization_timeout=timeout,
            shutdown_timeout_seconds=config.heartbeat_timeout,
        )
    except Exception as e:
        raise DistributedError(
            f"process {config.process_id} of {config.num_processes}: not every process connected to the coordinator "
            f"{config.coordinator_address} within the initialization timeout ({timeout} s = 3 × heartbeat_timeout); "
            f"start all {config.num_processes} processes with the same --config.coordinator_address "
            f"({type(e).__name__}: {' '.join(str(e).split())[:120]})"
        ) from None


class DistributedError(RuntimeError):
    """A multi-process run that cannot start, or whose peers stopped responding."""


class PeerWatchdog:
    """Exits this process with one line when a peer stops responding, instead of hanging in a collective or letting
    XLA abort with a core dump.

    Every process bumps its own counter in the coordination service's key-value store once a second and watches the
    others'; a peer whose counter has not moved for ``timeout`` seconds (or a coordinator that no longer answers) is
    reported as ``error: process ME of N: peer process K stopped responding ...; last checkpoint step S`` and the
    process exits with status 1. ``last_checkpoint`` is kept up to date by the caller."""

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
        print(
            f"error: process {self.me} of {self.n}: {'the coordinator, ' if who == 0 else ''}peer process {who} "
            f"stopped responding (no heartbeat for {self.timeout:.0f} s); last "
            f"checkpoint step {self.last_checkpoint if self.last_checkpoint is not None else 'none'}. Restart "
            "every process with the same command to resume",
            file=sys.stderr,
            flush=True,
        )
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
                    except Exception:
                        v = value
                    seen[k] = (v, now) if v != value else (value, since)
                self._last_answer = time.monotonic()
            except Exception:
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
            f"{num_devices} such as {max(lower, num_devices)} or {lower + num_devices}"
        )


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
    shard_params: bool = False
    min_shard_size: int = FSDP_MIN_SIZE
    _state_sharding: Any = None  # the state's shardings in 'global' mode, set by put_state

    @classmethod
    def create(
        cls, mode: str, *, sync_bn: bool = True, shard_params: bool = False, min_shard_size: int = FSDP_MIN_SIZE
    ) -> DataParallel:
        mode = resolve_mode(mode, sync_bn)
        if shard_params and mode not in ("global", "none"):
            raise ValueError(
                f"shard_params=True shards the state over the mesh of parallel='global'; parallel="
                f"{mode!r} replicates it per device: use parallel='global' (or 'auto')"
            )
        if mode == "pmap" and not _PMAP_NOTE:
            _PMAP_NOTE.append(True)
            print(
                "note: jax.pmap is in maintenance mode upstream; parallel='global' (jit over sharded arrays) is "
                "JAX's recommended path",
                file=sys.stderr,
            )
        mesh = None
        if mode in ("global", "shard_map"):
            mesh = jax.make_mesh((jax.device_count(),), (AXIS,), (AxisType.Auto,))
        return cls(mode, mesh, shard_params and mode == "global", min_shard_size)

    @property
    def axis_name(self) -> str | None:
        """The axis the step's collectives name: only the per-device modes have one."""
        return AXIS if self.mode in ("pmap", "shard_map") else None

    @property
    def num_devices(self) -> int:
        return 1 if self.mode == "none" else jax.device_count()

    def local_slice(self, batch: dict) -> dict:
        """This process's contiguous slice of a global batch (the whole batch for one process)."""
        p, n = jax.process_index(), jax.process_count()
        if n == 1:
            return batch
        size = len(batch["y"]) // n
        return {k: v[p * size : (p + 1) * size] for k, v in batch.items()}

    def put_batch(self, batch: dict) -> Any:
        """A global batch on the devices (each process placing its :meth:`local_slice`)."""
        check_batch_size(len(batch["y"]), self.num_devices)
        return self.put_local_batch(self.local_slice(batch))

    def put_local_batch(self, local: dict) -> Any:
        """This process's slice of a global batch (what the input pipeline gives each process) on the devices."""
        check_batch_size(len(local["y"]) * jax.process_count(), self.num_devices)
        if self.mode == "none":
            return jax.device_put(local)  # asynchronous: the transfer overlaps the step that is running
        if self.mode == "pmap":
            d = jax.local_device_count()
            return {k: v.reshape((d, v.shape[0] // d) + v.shape[1:]) for k, v in local.items()}
        sharding = NamedSharding(self.mesh, P(AXIS))
        return {k: jax.make_array_from_process_local_data(sharding, np.asarray(v)) for k, v in local.items()}

    def state_sharding(self, state: Any) -> Any:
        """The tree of shardings the state lives in ('global' mode): replicated, or FSDP with ``shard_params``."""

        def one(path, v):
            spec = (
                fsdp_spec(np.shape(v), self.num_devices, self.min_shard_size, jax.tree_util.keystr(path))
                if self.shard_params
                else P()
            )
            return NamedSharding(self.mesh, spec)

        return jax.tree_util.tree_map_with_path(one, state)

    def put_state(self, state: Any) -> Any:
        if self.mode == "none":
            return state
        if self.mode == "pmap":
            d = jax.local_device_count()  # one copy per local device; pmap places them
            return jax.tree.map(lambda v: np.broadcast_to(np.asarray(v), (d,) + np.shape(v)), state)
        if self.mode == "global":
            self._state_sharding = self.state_sharding(state)
            shardings = self._state_sharding
        else:
            shardings = jax.tree.map(lambda _: NamedSharding(self.mesh, P()), state)

        def place(v, sh):
            if isinstance(v, jax.Array) and v.sharding == sh:
                return v  # restored from a sharded checkpoint straight into place
            # every process holds the whole (host) value: each device takes its shard of it
            return jax.make_array_from_callback(np.shape(v), sh, lambda idx: np.asarray(v)[idx])

        return jax.tree.map(place, state, shardings)

    def get_state(self, state: Any) -> Any:
        """The state on the host, unreplicated and unsharded (what checkpoints and eval use)."""
        if self.mode == "none":
            return state
        if self.mode == "pmap":
            return jax.tree.map(lambda v: _host(v[0]), state)
        if self.shard_params:
            return jax.tree.map(_gather, state)
        return jax.tree.map(_host, state)

    def compile(self, step: Callable) -> Callable:
        """``step(state, batch, *extra) -> (state, metrics)`` compiled for this mode; ``extra`` arguments (a key)
        are replicated; metrics come back unreplicated. One program per number of extra arguments."""
        programs: dict[int, Callable] = {}

        def run(state, batch, *extra):
            n = len(extra)
            if n not in programs:
                programs[n] = self._compile(step, n)
            return programs[n](state, batch, *extra)

        return run

    def _compile(self, step: Callable, n_extra: int) -> Callable:
        if self.mode == "none":
            return jax.jit(step)
        if self.mode == "pmap":
            pstep = jax.pmap(step, axis_name=AXIS, in_axes=(0, 0) + (None,) * n_extra)

            def run(state, batch, *extra):
                state, metrics = pstep(state, batch, *extra)
                return state, jax.tree.map(lambda m: m[0], metrics)

            return run
        if self.mode == "global":
            if self._state_sharding is None:
                raise ValueError("DataParallel('global'): place the state with put_state before the first step")
            # the state keeps the shardings put_state gave it, step after step
            return jax.jit(step, out_shardings=(self._state_sharding, NamedSharding(self.mesh, P())))
        shard_map = getattr(jax, "shard_map", None)
        if shard_map is None:  # older JAX
            from jax.experimental.shard_map import shard_map
        specs = dict(mesh=self.mesh, in_specs=(P(), P(AXIS)) + (P(),) * n_extra, out_specs=(P(), P()))
        try:  # outputs are psum'd/pmean'd, hence replicated; skip the static replication check (renamed over time)
            mapped = shard_map(step, check_vma=False, **specs)
        except TypeError:
            mapped = shard_map(step, check_rep=False, **specs)
        return jax.jit(mapped)


def _gather(x):
    """A sharded array as one host numpy array (every process gets the whole value)."""
    if isinstance(x, jax.Array) and not x.is_fully_addressable:
        from jax.experimental import multihost_utils

        return np.asarray(multihost_utils.process_allgather(x, tiled=True))
    return np.asarray(x)

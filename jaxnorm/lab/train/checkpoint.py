"""Orbax checkpoints of the training state, with the run's config saved beside them."""

from __future__ import annotations

import ast
import contextlib
import errno
import hashlib
import json
import math
import os
import re
import shutil
import sys
import time
from typing import Any

import jax
import ml_collections
import numpy as np
import orbax.checkpoint as ocp

from jaxnorm.lab.train import optim
from jaxnorm.lab.train.config import ADDED_KEY_DEFAULTS, result_affecting, upgrade


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
        old = old_full = json.load(f)
    if not config.resume:
        aside = os.path.join(workdir, f"previous-{time.strftime('%Y%m%d-%H%M%S')}")
        os.makedirs(aside)
        for name in os.listdir(workdir):
            if not name.startswith("previous-") and name != ".lock":  # the lock of this run stays
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
    check_extension(workdir, ml_collections.ConfigDict(upgrade(old_full)), config)
    return True


def check_extension(workdir: str, old, new) -> None:
    """A change of ``num_steps`` (or ``schedule_steps``) on resumption is never silent.

    The step and cosine schedules span :func:`optim.horizon` steps, so a new horizon would change the learning rate
    of the steps already taken: the result would match neither run. That is refused (:class:`CheckpointError`, one
    line naming the jump and the two ways forward). When the horizon stays (a constant schedule, or
    ``schedule_steps`` pinned to the old horizon), the run goes on and says so: the steps past the horizon run at the
    schedule's final learning rate."""
    if old.num_steps == new.num_steps and optim.horizon(old) == optim.horizon(new):
        return
    taken = max(saved_steps(workdir), default=0)
    if taken == 0:  # no step taken: nothing to keep consistent
        return
    old_lr, new_lr = optim.learning_rate_schedule(old), optim.learning_rate_schedule(new)
    if optim.depends_on_horizon(new) and optim.horizon(old) != optim.horizon(new):
        last = taken - 1
        raise CheckpointError(
            f"{workdir} holds {taken} steps of a {new.schedule} schedule over {optim.horizon(old)} steps; "
            f"num_steps={new.num_steps} would change the learning rate of the steps already taken (step {last}: "
            f"{float(old_lr(last)):.3g} -> {float(new_lr(last)):.3g}). Train {new.num_steps} steps from the start "
            "with a new --workdir (or --config.resume=False, which moves this run aside), or keep the schedule of "
            f"the steps taken with --config.schedule_steps={optim.horizon(old)}: steps after "
            f"{optim.horizon(old)} then run at its final learning rate "
            f"({float(old_lr(optim.horizon(old))):.3g})"
        )
    what = (
        f"the learning rate stays {new.learning_rate:g} (constant schedule)"
        if not optim.depends_on_horizon(new)
        else f"the {new.schedule} schedule stays over {optim.horizon(new)} steps (schedule_steps); steps after "
        f"{optim.horizon(new)} run at its final learning rate ({float(new_lr(optim.horizon(new))):.3g})"
    )
    print(f"num_steps {old.num_steps} -> {new.num_steps} after {taken} steps taken: {what}")


def saved_steps(workdir: str) -> list[int]:
    """The steps with a checkpoint directory under ``WORKDIR/checkpoints``, read from the directory listing alone
    (no orbax, no verification): for messages about a run that is failing."""
    d = os.path.join(workdir, "checkpoints")
    return sorted(int(n) for n in os.listdir(d) if n.isdigit()) if os.path.isdir(d) else []


def save_config(workdir: str, config) -> None:
    """Write ``WORKDIR/config.json`` atomically: a temporary file, flushed and fsync'ed, then ``os.replace``d over
    the old one, so a crash leaves either the old or the new config, never a truncated one."""
    os.makedirs(workdir, exist_ok=True)
    path = _config_path(workdir)
    _write_atomically(path, config.to_json(indent=2, sort_keys=True))


def _write_atomically(path: str, text: str) -> None:
    tmp = path + ".tmp"
    try:
        with open(tmp, "w") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.remove(tmp)
        raise
    with contextlib.suppress(OSError):  # the rename itself durable (best effort: not every file system allows it)
        fd = os.open(os.path.dirname(path) or ".", os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


MANIFEST = "jaxnorm_manifest.json"
EXTRA = "jaxnorm_extra.json"  # metadata saved with a step (the input pipeline position)
_MANIFEST_FORMAT = "jaxnorm checkpoint manifest"
_MESSAGE_CHARS = 150  # of an orbax/TensorStore message quoted in ours (they can be pages long)


def _key_name(k) -> str:
    for attr in ("key", "idx", "name"):
        if hasattr(k, attr):
            return str(getattr(k, attr))
    return str(k)


def _leaves(tree) -> list[tuple[str, Any]]:
    """``(path, leaf)`` of every leaf, the path its keys joined by ``/`` (``params/Dense_0/kernel``)."""
    flat, _ = jax.tree_util.tree_flatten_with_path(tree)
    return [("/".join(_key_name(k) for k in path), leaf) for path, leaf in flat]


def _host_bytes(a: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(a).reshape(-1).view(np.uint8)


def _digest(a: np.ndarray) -> str:
    return hashlib.sha256(_host_bytes(a)).hexdigest()


def _short(e: BaseException, strip: str = "") -> str:
    """``Type: message`` on one line, the message cut to ~150 characters (no TensorStore dump)."""
    msg = re.sub(r'(Error opening "\w+" driver: )+', "", " ".join(str(e).split()))  # TensorStore's wrappers
    if strip:
        msg = msg.replace(strip + os.sep, "").replace(strip, ".")
    if len(msg) > _MESSAGE_CHARS:
        msg = msg[: _MESSAGE_CHARS - 3] + "..."
    return f"{type(e).__name__}: {msg}" if msg else type(e).__name__


def _disk_full(e: BaseException) -> bool:
    """Whether ``e`` (or an exception it was raised from) is ENOSPC; TensorStore reports it as a ValueError."""
    seen = set()
    while e is not None and id(e) not in seen:
        seen.add(id(e))
        if isinstance(e, OSError) and e.errno == errno.ENOSPC:
            return True
        if "No space left on device" in str(e) or "os_error_code='28'" in str(e):
            return True
        e = e.__cause__ or e.__context__
    return False


def _not_the_checkpoint(e: BaseException) -> bool:
    """Read failures that say nothing about the checkpoint's bytes (memory, permissions): never moved aside."""
    msg = str(e)
    return (
        isinstance(e, (MemoryError, PermissionError))
        or "PERMISSION_DENIED" in msg
        or "RESOURCE_EXHAUSTED" in msg
        or "Out of memory" in msg
    )


class _ClosedLoopFilter:
    """When a read fails, orbax closes its event loop while TensorStore callbacks are still pending; each then prints
    an 'Event loop is closed' traceback (through ``sys.unraisablehook``) after our one line, sometimes a moment after
    the restore has returned. Only those are dropped, from a Checkpointer's first restore until its ``close``."""

    def __init__(self):
        self.previous, self.active = sys.unraisablehook, True
        sys.unraisablehook = self

    def __call__(self, unraisable):
        exc = unraisable.exc_value
        if not (self.active and isinstance(exc, RuntimeError) and str(exc) == "Event loop is closed"):
            self.previous(unraisable)

    def remove(self):
        self.active = False  # (if another hook was installed over this one, this one stays, passing all through)
        if sys.unraisablehook is self:
            sys.unraisablehook = self.previous


class _Bad(Exception):
    """A checkpoint found corrupt; ``str`` is the reason."""


class Checkpointer:
    """Keeps the last ``keep`` checkpoints of the state under ``WORKDIR/checkpoints/<step>``, each verified.

    After orbax has written a step, ``<step>/jaxnorm_manifest.json`` records the sha256 of every leaf's bytes with
    its dtype and shape (keyed by the leaf's path, written atomically); ``restore`` checks every restored leaf
    against it, so a flipped bit that orbax/TensorStore decodes without complaint is still caught. A checkpoint
    without a manifest (written before manifests existed) is restored as before, unverified.

    A bad checkpoint (unreadable, truncated or missing file, checksum mismatch, missing manifest entry) is named in
    one line and moved aside to ``<step>`` -> ``corrupt-<step>`` (by process 0 only; the others skip it). Asked for
    the latest, ``restore`` then falls back to the newest good earlier checkpoint; asked for a given step, it raises
    :class:`CheckpointError`. A checkpoint that is intact but holds a different tree than the target (other code)
    is an error and stays where it is.

    With several processes, process 0 alone writes (the state is replicated) and each process reads on its own;
    every process verifies what it reads, so all fall back to the same step when a checkpoint is corrupt.

    ``sharded=True`` (the state sharded over the devices, ``shard_params``): the state's ``jax.Array`` s are written
    as they lie, each process writing the shards its devices hold (orbax, with every process taking part: a file
    system every process sees), nothing gathered to one host. Each process then records the sha256 of the shards it
    wrote in its own manifest part ``jaxnorm_manifest.<k>-of-<n>.json``; a step with a part missing (a save cut
    short) is corrupt. A restore into any sharding, or into host arrays (replicated, on any device count), checks
    every saved shard the process holds whole, and the processes agree on the verdict before falling back.
    """

    def __init__(self, workdir: str, keep: int, sharded: bool = False):
        self.directory = os.path.abspath(os.path.join(workdir, "checkpoints"))
        self._keep = keep
        self._kw = {}
        self._sharded = sharded
        self._collective = sharded and jax.process_count() > 1  # every process writes, reads and moves in step
        if jax.process_count() > 1 and not sharded:
            # process 0 alone writes (the state is replicated); each process reads on its own, with no barrier
            me = jax.process_index()
            self._kw["multiprocessing_options"] = ocp.options.MultiprocessingOptions(
                primary_host=me, active_processes={me}
            )
        self._writer = jax.process_index() == 0
        self._skipped: set[int] = set()  # corrupt steps another process (process 0) moves aside
        self._quiet: _ClosedLoopFilter | None = None
        os.makedirs(self.directory, exist_ok=True)
        self.manager = self._manager()

    def _manager(self) -> ocp.CheckpointManager:
        options = ocp.CheckpointManagerOptions(
            max_to_keep=self._keep, create=not self._kw, enable_async_checkpointing=False, **self._kw
        )
        return ocp.CheckpointManager(self.directory, options=options)

    def _reload(self) -> None:
        """A fresh manager: orbax caches the steps it has seen, and would skip a save of a step moved away."""
        self.manager.close()
        self.manager = self._manager()

    def _step_dir(self, step: int) -> str:
        return os.path.join(self.directory, str(step))

    def steps(self) -> list[int]:
        return sorted(s for s in self.manager.all_steps() if s not in self._skipped)

    def save(self, step: int, state: Any, extra: dict | None = None) -> None:
        """Write ``state`` as checkpoint ``step`` (a no-op if that step exists), then its manifest and ``extra``
        (small JSON-serializable metadata such as the input pipeline's position, read back by :meth:`extra`). A full
        disk is a one-line :class:`CheckpointError` and the half-written step is removed."""
        if step in self.manager.all_steps():
            return
        # sharded: the arrays as they lie on the devices (orbax writes each process's shards); else one host copy
        data = _no_numpy_scalars(state) if self._sharded else jax.device_get(state)
        try:
            # force: a step below the latest (after restore_step=N, or after a corrupt one was moved aside) is saved
            self.manager.save(step, args=ocp.args.StandardSave(data), force=True)
            self.manager.wait_until_finished()
            if extra is not None and self._writer:
                _write_atomically(os.path.join(self._step_dir(step), EXTRA), json.dumps(extra, indent=1))
            self._write_manifest(step, data)
            self._barrier(f"jaxnorm_save_{step}")  # every part is written before any process goes on
        except Exception as e:
            if not _disk_full(e):
                raise
            self._remove_partial(step)
            nbytes = sum(int(np.prod(np.shape(leaf))) * np.dtype(leaf.dtype).itemsize for _, leaf in _leaves(data))
            raise CheckpointError(
                f"disk full while writing checkpoint step {step} to {self.directory}: No space left on device "
                f"(ENOSPC, from {type(e).__name__}); "
                f"the partial step was removed; free at least ~{max(1, math.ceil(nbytes / 1e6))} MB and rerun "
                "(it resumes from the last checkpoint)"
            ) from None
        self._skipped.discard(step)

    def extra(self, step: int) -> dict | None:
        """The ``extra`` metadata saved with checkpoint ``step`` (None for a checkpoint written without it)."""
        path = os.path.join(self._step_dir(step), EXTRA)
        if not os.path.exists(path):
            return None
        with open(path) as f:
            return json.load(f)

    def _write_manifest(self, step: int, data: Any) -> None:
        """The whole-leaf manifest (version 1) of a host state, or this process's part (version 2: the shards it
        wrote, each with its index) of a sharded one."""
        if not self._sharded:
            leaves = {}
            for path, leaf in _leaves(data):
                a = np.asarray(leaf)
                leaves[path] = {"dtype": str(a.dtype), "shape": list(a.shape), "sha256": _digest(a)}
            manifest = {"format": _MANIFEST_FORMAT, "version": 1, "step": step, "leaves": leaves}
            _write_atomically(os.path.join(self._step_dir(step), MANIFEST), json.dumps(manifest, indent=1))
            return
        me, n = jax.process_index(), jax.process_count()
        leaves = {}
        for path, leaf in _leaves(data):
            if isinstance(leaf, jax.Array):  # the shards orbax writes from this process: replica 0 of each
                shards = [
                    {"index": _region(s.index, leaf.shape), "sha256": _digest(np.asarray(s.data))}
                    for s in leaf.addressable_shards
                    if s.replica_id == 0
                ]
            else:  # a host value, written by process 0
                shards = [] if me else [{"index": _region((), np.shape(leaf)), "sha256": _digest(np.asarray(leaf))}]
            leaves[path] = {"dtype": str(leaf.dtype), "shape": list(np.shape(leaf)), "shards": shards}
        manifest = {
            "format": _MANIFEST_FORMAT,
            "version": 2,
            "step": step,
            "process": me,
            "processes": n,
            "leaves": leaves,
        }
        _write_atomically(os.path.join(self._step_dir(step), _part_name(me, n)), json.dumps(manifest, indent=1))

    def _read_manifest(self, step: int) -> dict | None:
        """``{path: {"dtype", "shape", "shards": [(region, sha256), ...]}}`` from the step's manifest or its parts
        merged, None for a step written without one; a ValueError for one unreadable, garbled or incomplete."""
        d = self._step_dir(step)
        if os.path.exists(os.path.join(d, MANIFEST)):
            with open(os.path.join(d, MANIFEST)) as f:
                m = json.load(f)
            _check_format(m, {"dtype", "shape", "sha256"})
            return {p: {**v, "shards": [(_region((), v["shape"]), v["sha256"])]} for p, v in m["leaves"].items()}
        parts = sorted(n for n in os.listdir(d) if _PART.fullmatch(n))
        if not parts:
            return None
        entries, seen, count = {}, set(), None
        for name in parts:
            with open(os.path.join(d, name)) as f:
                m = json.load(f)
            _check_format(m, {"dtype", "shape", "shards"})
            seen.add(m["process"])
            count = m["processes"]
            for p, v in m["leaves"].items():
                e = entries.setdefault(p, {"dtype": v["dtype"], "shape": v["shape"], "shards": []})
                e["shards"] += [(tuple(tuple(r) for r in s["index"]), s["sha256"]) for s in v["shards"]]
        missing = sorted(set(range(count)) - seen)
        if missing:
            raise ValueError(f"manifest part of process(es) {missing[:4]} of {count} missing (a save cut short)")
        return entries

    def _barrier(self, name: str) -> None:
        if self._collective:
            from jax.experimental import multihost_utils

            multihost_utils.sync_global_devices(name)

    def _remove_partial(self, step: int) -> None:
        if self._writer:
            for name in os.listdir(self.directory):
                if name == str(step) or name.startswith(f"{step}.orbax-checkpoint-tmp"):
                    shutil.rmtree(os.path.join(self.directory, name), ignore_errors=True)
        self._reload()

    def restore(self, target: Any, step: int = -1) -> Any:
        """Restore into the structure of ``target`` (latest, or ``step``), verified against the step's manifest.

        Latest (``step=-1``): a corrupt checkpoint is moved aside to ``corrupt-<step>`` with one printed line and the
        newest good earlier one is restored; none left is a :class:`CheckpointError`. A given ``step`` that is
        corrupt is moved aside and raised as a :class:`CheckpointError` naming the reason and the steps left."""
        steps = self.steps()
        if not steps:
            raise CheckpointError(f"no checkpoint in {self.directory}")
        target = _no_numpy_scalars(target)
        if step != -1:
            if step not in steps:
                raise CheckpointError(f"no checkpoint for step {step} in {self.directory}; available: {steps}")
            try:
                return self._restore_agreed(target, step)
            except _Bad as bad:
                aside = self._set_aside(step)
                left = self.steps()
                which = "Earlier" if all(s < step for s in left) else "Remaining"
                raise CheckpointError(
                    f"checkpoint step {step} in {self.directory} is corrupt ({bad}); {aside}. {which} checkpoints "
                    f"are kept: {left or 'none'}; restore one with --config.restore_step=N"
                ) from None
        lines = []
        for s in reversed(steps):
            try:
                restored = self._restore_agreed(target, s)
            except _Bad as bad:
                lines.append(f"checkpoint step {s} in {self.directory} is corrupt ({bad}); {self._set_aside(s, True)}")
                continue
            for line in lines:
                print(f"{line}; resuming from step {s}")
            return restored
        for line in lines:
            print(line)
        where = "moved aside to corrupt-<step>" if self._writer else "left for process 0 to move aside"
        raise CheckpointError(
            f"no good checkpoint remains in {self.directory}: steps {steps} are corrupt ({where}); pass "
            "--config.resume=False to start over (the run is moved into previous-<time>/), or use a new --workdir"
        )

    def _set_aside(self, step: int, full_path: bool = False) -> str:
        """Move a corrupt step out of orbax's sight (process 0); the phrase that says where it went. Sharded, with
        several processes, all wait for the move and then reload, so that they save (collectively) the same steps."""
        if not self._writer:
            if not self._collective:
                self._skipped.add(step)
                return "left for process 0 to move aside"
            self._barrier(f"jaxnorm_aside_{step}")
            self._reload()
            return "moved aside by process 0"
        src, name = self._step_dir(step), f"corrupt-{step}"
        n = 1
        while os.path.lexists(os.path.join(self.directory, name)):
            n += 1
            name = f"corrupt-{step}-{n}"
        try:
            os.rename(src, os.path.join(self.directory, name))
        except OSError as e:
            self._skipped.add(step)
            self._barrier(f"jaxnorm_aside_{step}")
            return f"could not move it aside ({_short(e, self.directory)})"
        self._barrier(f"jaxnorm_aside_{step}")
        self._reload()
        return f"moved to {os.path.join(self.directory, name) if full_path else name}"

    def _restore_verified(self, target: Any, step: int) -> Any:
        """The restored state, or :class:`_Bad` naming why checkpoint ``step`` is corrupt; a read failure that is
        not the checkpoint's fault (another tree, memory, permissions) is a :class:`CheckpointError`."""
        manifest, manifest_error = None, None
        try:
            manifest = self._read_manifest(step)
        except Exception as e:  # truncated, garbled, not ours, a part missing
            manifest_error = f"manifest unreadable: {_short(e, self.directory)}"
        try:
            if self._quiet is None:
                self._quiet = _ClosedLoopFilter()
            restored = self.manager.restore(step, args=ocp.args.StandardRestore(target))
        except Exception as e:  # orbax raises many types for truncated/corrupt files
            self._check_not_a_mismatch(step, target, manifest, e)
            raise _Bad(f"data unreadable: {_short(e, self.directory)}") from None
        if manifest_error:
            raise _Bad(manifest_error)
        if manifest is not None:
            self._verify(restored, manifest)
        return restored

    def _restore_agreed(self, target: Any, step: int) -> Any:
        """:meth:`_restore_verified`, with every process's verdict shared (sharded, several processes): each checks
        the shards it holds, so one that finds a bad shard makes all fall back together."""
        try:
            restored, reason = self._restore_verified(target, step), None
        except _Bad as bad:
            restored, reason = None, str(bad)
        if self._collective:
            from jax.experimental import multihost_utils

            flags = np.asarray(multihost_utils.process_allgather(np.int32(reason is not None)))
            if reason is None and flags.any():
                reason = f"process {int(np.argmax(flags))} found it corrupt"
        if reason is not None:
            raise _Bad(reason)
        return restored

    def _check_not_a_mismatch(self, step: int, target: Any, manifest: dict | None, e: Exception) -> None:
        """Raise a :class:`CheckpointError` (the checkpoint left in place) if orbax failed for a reason other than
        the checkpoint's bytes: a tree that differs from ``target`` (by the manifest, else orbax's own metadata),
        memory or permissions."""
        if _not_the_checkpoint(e):
            raise CheckpointError(
                f"could not read checkpoint step {step} in {self.directory} "
                f"({_short(e, self.directory)}); it was left in place"
            ) from None
        saved = set(manifest) if manifest is not None else _orbax_tree_paths(self._step_dir(step))
        if saved is None:
            return  # orbax's metadata is unreadable too: corrupt
        wanted = {p for p, _ in _leaves(target)}
        if saved != wanted:
            only_saved, only_wanted = sorted(saved - wanted)[:3], sorted(wanted - saved)[:3]
            raise CheckpointError(
                f"checkpoint step {step} in {self.directory} holds a different tree than the state restored into "
                f"(only in the checkpoint: {only_saved}; only in the state: {only_wanted}); it was left in place: "
                "restore it with the code that wrote it, or use a new --workdir"
            ) from None

    @staticmethod
    def _verify(restored: Any, entries: dict) -> None:
        """Every saved shard (the whole leaf, for a host checkpoint) that this process holds whole in ``restored``
        against its sha256; the shards held only by other processes are theirs to check."""
        bad = []
        for path, leaf in _leaves(restored):
            entry = entries.get(path)
            if entry is None:
                raise _Bad(f"no manifest entry for {path}")
            if list(np.shape(leaf)) != list(entry["shape"]):
                raise _Bad(f"{path} has shape {np.shape(leaf)}, the manifest says {tuple(entry['shape'])}")
            if str(leaf.dtype) != entry["dtype"]:
                continue  # converted to the target's dtype on restore: its bytes are not the saved ones
            pieces = _held_pieces(leaf)
            for region, sha in entry["shards"]:
                a = _assemble(region, pieces)
                if a is not None and _digest(a) != sha:
                    bad.append(path)
                    break
        if bad:
            more = f" and {len(bad) - 3} more" if len(bad) > 3 else ""
            raise _Bad(f"checksum mismatch in {', '.join(bad[:3])}{more}")

    def close(self) -> None:
        self.manager.close()
        if self._quiet is not None:
            self._quiet.remove()
            self._quiet = None


def _no_numpy_scalars(tree):
    """``tree`` with numpy scalars as 0-d arrays (orbax refuses ``np.generic`` leaves)."""
    return jax.tree.map(lambda x: np.asarray(x) if isinstance(x, np.generic) else x, tree)


_PART = re.compile(r"jaxnorm_manifest\.(\d+)-of-(\d+)\.json")


def _part_name(process: int, count: int) -> str:
    return f"jaxnorm_manifest.{process}-of-{count}.json"


def _check_format(manifest: dict, fields: set) -> None:
    if manifest.get("format") != _MANIFEST_FORMAT or not all(fields <= set(v) for v in manifest["leaves"].values()):
        raise ValueError("not a jaxnorm manifest")


def _region(index: tuple, shape) -> tuple:
    """A shard's index (a tuple of slices, shorter for trailing whole axes) as ``((start, stop), ...)``."""
    index = tuple(index) + (slice(None),) * (len(shape) - len(index))
    return tuple(tuple(int(v) for v in sl.indices(n)[:2]) for sl, n in zip(index, shape))


def _held_pieces(leaf) -> list[tuple[tuple, np.ndarray]]:
    """``(region, values)`` of the distinct parts of ``leaf`` on this process: the whole of a host or fully
    addressable array, else each addressable shard once."""
    if not isinstance(leaf, jax.Array) or leaf.is_fully_addressable:
        a = np.asarray(leaf)
        return [(_region((), a.shape), a)]
    pieces = {}
    for s in leaf.addressable_shards:
        pieces.setdefault(_region(s.index, leaf.shape), s)
    return [(r, np.asarray(s.data)) for r, s in pieces.items()]


def _assemble(region: tuple, pieces: list) -> np.ndarray | None:
    """The values of ``region`` from the disjoint ``pieces``, or None if they do not cover it all (another
    process holds the rest)."""
    region = tuple(tuple(r) for r in region)
    for where, values in pieces:  # the common case: one piece holds it (the same or a coarser sharding)
        if all(a <= lo and hi <= b for (lo, hi), (a, b) in zip(region, where)):
            return values[tuple(slice(lo - a, hi - a) for (lo, hi), (a, _) in zip(region, where))]
    out = None
    covered = 0
    for where, values in pieces:
        cut = [(max(lo, a), min(hi, b)) for (lo, hi), (a, b) in zip(region, where)]
        if any(lo >= hi for lo, hi in cut):
            continue
        if out is None:
            out = np.empty([hi - lo for lo, hi in region], values.dtype)
        out[tuple(slice(lo - r0, hi - r0) for (lo, hi), (r0, _) in zip(cut, region))] = values[
            tuple(slice(lo - a, hi - a) for (lo, hi), (a, _) in zip(cut, where))
        ]
        covered += int(np.prod([hi - lo for lo, hi in cut]))
    return out if out is not None and covered == int(np.prod([hi - lo for lo, hi in region])) else None


def _orbax_tree_paths(step_dir: str) -> set[str] | None:
    """The leaf paths orbax recorded for a step (its ``default/_METADATA``, less the empty containers it records as
    nodes), or None if that cannot be read."""
    try:
        with open(os.path.join(step_dir, "default", "_METADATA")) as f:
            tree = json.load(f)["tree_metadata"]
        return {
            "/".join(str(k) for k in ast.literal_eval(key))
            for key, entry in tree.items()
            if not entry.get("value_metadata", {}).get("skip_deserialize", False)
        }
    except Exception:
        return None

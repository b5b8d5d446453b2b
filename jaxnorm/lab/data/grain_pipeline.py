"""The training input pipeline on Grain: this process's slice of :func:`~jaxnorm.lab.data.batch_at`'s batches,
read ahead
in worker processes or threads, with a position that is saved with the checkpoint.

Batch ``t`` is the same pure function of ``(seed, t)`` as in :mod:`jaxnorm.lab.data.pipeline` (epoch ``e`` visits the
examples in the order ``default_rng([seed, e]).permutation(n)``, the last partial batch of an epoch is padded and
masked when ``drop_remainder=False``, crop + flip augmentation draws from ``default_rng([seed, t, 1])``), and the
pipeline yields it bit for bit: process ``p`` of ``P`` gets rows ``[p B/P, (p+1) B/P)`` of the global batch
``batch_at(split, t, B, ...)``, which is what :meth:`jaxnorm.lab.train.parallel.DataParallel.local_slice` cuts today.
Each process reads (and decodes and augments) only those rows: the augmentation draws the whole global batch's
offsets and flips from the step's generator and applies this process's rows of them.

Grain's machinery does the work: a :class:`grain.MapDataset` over the global step numbers (element ``t`` is this
process's batch ``t``, so the stream is index-addressable: :meth:`GrainBatches.batch_at` reads any step without
iterating) maps each step to its batch through the split, which is either materialized arrays or a tfds
random-access data source (``tfds.data_source`` / ``builder.as_data_source``, decoding images with PIL or OpenCV);
``workers > 0`` decodes and augments in that many worker processes (``MapDataset.mp_prefetch`` with
``grain.MultiprocessingOptions``; each holds ``prefetch`` finished batches), ``workers=0`` (the default, right for
CPU runs and for materialized splits) reads in this process with ``prefetch`` batches read ahead by a thread. The
number of workers and the read-ahead change the speed only, never a batch.

Wiring it into the trainer (``jaxnorm.lab.train.loop``), in place of ``_train_batch(exp, step)`` per step::

    batches = train_batches(exp.dataset.train, c.batch_size, seed=c.seed, augment=c.augment,
                            drop_remainder=c.drop_remainder, start_step=start, workers=c.data_workers)
    if saved_input_state is not None:            # read back from the checkpoint being resumed
        batches.set_state(saved_input_state)     # ValueError if the run's batch size, seed, ... changed
    ...
    def step_fn(dstate, step):
        assert batches.step == step              # batch `step` is next
        local = next(batches)                    # this process's rows of batch `step` (numpy; mask marks padding)
        return train_step(dstate, place(local))  # place: DataParallel.put_batch without its local_slice

    def save(dstate, done):                      # after step done - 1: batches.step == done
        checkpointer.save(done, {..., 'input_pipeline': batches.get_state()})  # small, JSON-serializable
    ...
    batches.close()                              # stops worker processes (also done by garbage collection)

``place`` is ``put_batch``'s body applied to the slice it already has (``mode='none'``: the slice itself;
``'pmap'``: reshaped to ``(local devices, B / P / local devices, ...)``; ``'global'``/``shard_map``:
``jax.make_array_from_process_local_data(NamedSharding(mesh, P('batch')), slice)``), since ``put_batch`` takes the
global batch and cuts ``local_slice`` itself. ``GrainBatches.from_state(exp.dataset.train, saved, workers=...)``
builds the pipeline straight from a saved state. Because batch ``t`` depends on ``t`` alone,
``start_step=int(state.step)`` resumes identically even without the saved state; the state adds the check that the
options did not change (batch size, seed, shuffling, augmentation, remainder, split). ``workers``, ``prefetch`` and
the process layout may change between a run and its resumption. Probes and population statistics that need a
whole batch keep using :func:`~jaxnorm.lab.data.batch_at` (``GrainBatches.batch_at(t)`` gives this process's slice).

Workers start with ``spawn`` (importing ``jaxnorm``: a few seconds each, once) and receive the split pickled: a tfds
data source reopens its files in the worker; a materialized split is copied into each worker, so for a large
materialized split prefer ``load(..., materialize=False)`` with workers, or ``workers=0``. A script that starts
workers needs the usual ``if __name__ == '__main__':`` guard.
"""

from __future__ import annotations

import os
import sys
import warnings
from collections.abc import Mapping
from typing import Any

import grain
import numpy as np

from jaxnorm._checks import check_positive_int
from jaxnorm.lab.data import pipeline as pipeline_lib
from jaxnorm.lab.data.splits import Split

#: The ``kind`` field of a saved state.
STATE_KIND = "jaxnorm.lab.data.GrainBatches"
#: Saved fields that decide which batch a step is: a state is restored only into a pipeline with the same values.
STREAM_KEYS = ("split", "num_examples", "batch_size", "seed", "shuffle", "drop_remainder", "augment")
_NUM_STEPS = sys.maxsize  # the length of the step dataset: the stream is endless unless num_steps is given


class StepBatch:
    """``step -> this process's rows of batch_at(split, step, ...)``: the map of the Grain dataset.

    A plain module-level class holding only numpy arrays and the split, so that Grain can pickle it into worker
    processes (which start with ``spawn``: they import this module and unpickle the split; a tfds data source
    reopens its files there).
    """

    def __init__(
        self,
        split: Split,
        batch_size: int,
        *,
        seed: int,
        shuffle: bool,
        drop_remainder: bool,
        augment: bool,
        lo: int,
        hi: int,
        x_spec: tuple[tuple[int, ...], Any],
        y_spec: tuple[tuple[int, ...], Any],
    ):
        self.split, self.batch_size, self.seed = split, batch_size, seed
        self.shuffle, self.drop_remainder, self.augment = shuffle, drop_remainder, augment
        self.lo, self.hi = lo, hi
        self.x_spec, self.y_spec = x_spec, y_spec

    def __call__(self, step: int) -> dict[str, np.ndarray]:
        step = int(step)
        idx, mask = pipeline_lib.batch_indices(
            len(self.split),
            step,
            self.batch_size,
            seed=self.seed,
            shuffle=self.shuffle,
            drop_remainder=self.drop_remainder,
        )
        idx, mask = idx[self.lo : self.hi], mask[self.lo : self.hi]
        if mask.any():
            batch = pipeline_lib.read_batch(self.split, idx, mask)
        else:  # this process's rows are all padding (the last batch of an epoch with drop_remainder=False)
            (x_shape, x_dtype), (y_shape, y_dtype) = self.x_spec, self.y_spec
            batch = {
                "x": np.zeros((len(mask),) + x_shape, x_dtype),
                "y": np.zeros((len(mask),) + y_shape, y_dtype),
                "mask": mask.copy(),
            }
        if self.augment:
            # the draws of random_crop_flip on the whole global batch, in its order; these rows' share of them
            offsets, flips = pipeline_lib.crop_flip_draws(
                pipeline_lib.augmentation_rng(self.seed, step), self.batch_size
            )
            batch["x"] = pipeline_lib.crop_flip(batch["x"], offsets[self.lo : self.hi], flips[self.lo : self.hi])
        return batch


def _check_bool(name: str, value: Any) -> bool:
    if not isinstance(value, (bool, np.bool_)):
        raise ValueError(f"train_batches: {name} must be True or False, got {value!r}")
    return bool(value)


def _resolve_process(process_index: int | None, process_count: int | None) -> tuple[int, int]:
    """The explicit values, else Grain's ``ShardByJaxProcess`` (jax.process_index() / jax.process_count())."""
    if process_index is None or process_count is None:
        shard = grain.sharding.ShardByJaxProcess()
        process_index = shard.shard_index if process_index is None else process_index
        process_count = shard.shard_count if process_count is None else process_count
    process_count = check_positive_int("train_batches", "process_count", process_count)
    process_index = check_positive_int("train_batches", "process_index", process_index, 0)
    if process_index >= process_count:
        raise ValueError(
            f"train_batches: process_index={process_index} is not below process_count={process_count}; "
            f"use 0 <= process_index < {process_count}"
        )
    return process_index, process_count


def _absl_flags_parsed() -> None:
    """Grain's worker processes read absl flags of its own (``--grain_*``), which raises unless the flags were parsed.
    ``train.py`` parses them (``app.run``); elsewhere (a notebook, pytest, a benchmark) they are marked parsed with
    their defaults here, as ``app.run`` with no arguments would leave them."""
    from absl import flags  # pylint: disable=g-import-not-at-top

    if not flags.FLAGS.is_parsed():
        flags.FLAGS.mark_as_parsed()


def _wait_for_shared_memory_release() -> None:
    """Waits until Grain has unlinked the shared memory of the batches the workers had read ahead.

    Grain frees them on a background thread (in order); without the wait, a program that exits right after
    ``close()`` gets ``resource_tracker`` warnings about leaked shared memory (which it then cleans up)."""
    try:
        from grain._src.python.ipc.shared_memory_array import SharedMemoryArray  # pylint: disable=g-import-not-at-top

        pool = SharedMemoryArray._del_thread_pool  # pylint: disable=protected-access
        if pool is not None and not sys.is_finalizing():  # at exit the pool's thread may be gone: never wait then
            pool.apply_async(int).wait(timeout=10)  # a no-op queued behind the pending deletions (one thread)
    except Exception:  # pylint: disable=broad-except  (a private detail of Grain: without it, only the warnings)
        pass


class GrainBatches:
    """An iterator over this process's slices of the training batches of steps ``start_step, start_step + 1, ...``
    (see the module docstring and :func:`train_batches`, which builds it). ``step`` is the step of the next batch."""

    def __init__(
        self,
        split: Split,
        batch_size: int,
        *,
        seed: int = 0,
        shuffle: bool = True,
        drop_remainder: bool = True,
        augment: bool = False,
        start_step: int = 0,
        num_steps: int | None = None,
        workers: int = 0,
        process_index: int | None = None,
        process_count: int | None = None,
        prefetch: int = 2,
    ):
        if not isinstance(split, Split):
            raise TypeError(
                f"train_batches: split must be a jaxnorm.lab.data.Split (e.g. load(name).train), got "
                f"{type(split).__name__}"
            )
        batch_size = pipeline_lib.checked_batch_size("train_batches", batch_size, len(split), f"the split {split.name}")
        seed = check_positive_int("train_batches", "seed", seed, 0)
        shuffle, drop_remainder = _check_bool("shuffle", shuffle), _check_bool("drop_remainder", drop_remainder)
        augment = _check_bool("augment", augment)
        start_step = check_positive_int("train_batches", "start_step", start_step, 0)
        if num_steps is not None:
            num_steps = check_positive_int("train_batches", "num_steps", num_steps, 0)
        if isinstance(workers, bool) or not isinstance(workers, (int, np.integer)) or workers < 0:
            raise ValueError(f"train_batches: workers must be an int >= 0 (0 reads in this process), got {workers!r}")
        workers = int(workers)
        cores = os.cpu_count() or 1
        if workers > cores:
            warnings.warn(
                f"train_batches: workers={workers} is more than the {cores} CPU cores of this machine "
                f"(os.cpu_count()); the workers will compete for them. Use workers <= {cores}.",
                stacklevel=3,
            )
        prefetch = check_positive_int("train_batches", "prefetch", prefetch, 0)
        process_index, process_count = _resolve_process(process_index, process_count)
        if batch_size % process_count:
            lower = batch_size - batch_size % process_count
            hint = f"{lower} or {lower + process_count}" if lower else f"{process_count}"
            raise ValueError(
                f"train_batches: batch_size={batch_size} is not divisible by process_count="
                f"{process_count}; use a multiple of {process_count} such as {hint}"
            )

        x0, y0 = split.take(np.zeros(1, np.int64))  # one example: its shape and dtype, checked before any worker
        if augment and x0.ndim != 4:
            raise ValueError(
                f"train_batches: augment=True (random crop + flip) needs image examples (H, W, C); "
                f"{split.name} has examples of shape {x0.shape[1:]}. Use augment=False."
            )
        local = batch_size // process_count
        self.split = split
        self.options = dict(
            batch_size=batch_size, seed=seed, shuffle=shuffle, drop_remainder=drop_remainder, augment=augment
        )
        self.workers, self.prefetch = workers, prefetch
        self.process_index, self.process_count = process_index, process_count
        self._stop = None if num_steps is None else start_step + num_steps
        self._step = start_step
        self._fn = StepBatch(
            split,
            batch_size,
            seed=seed,
            shuffle=shuffle,
            drop_remainder=drop_remainder,
            augment=augment,
            lo=process_index * local,
            hi=(process_index + 1) * local,
            x_spec=(x0.shape[1:], x0.dtype),
            y_spec=(y0.shape[1:], y0.dtype),
        )
        #: element t is this process's batch of step t (index-addressable, endless)
        self.dataset: grain.MapDataset = grain.MapDataset.range(_NUM_STEPS).map(self._fn)
        self._iterator = None  # the Grain iterator from self._step on, opened by the first next()

    # -- iteration --------------------------------------------------------------------------------------------

    @property
    def step(self) -> int:
        """The step whose batch ``next()`` returns."""
        return self._step

    @property
    def local_batch_size(self) -> int:
        return self.options["batch_size"] // self.process_count

    def batch_at(self, step: int) -> dict[str, np.ndarray]:
        """This process's slice of batch ``step``, read in this process (no iteration, no workers)."""
        return self._fn(check_positive_int("GrainBatches.batch_at", "step", step, 0))

    def _open(self):
        stop = _NUM_STEPS if self._stop is None else self._stop
        steps = self.dataset[self._step : stop]
        if self.workers:
            _absl_flags_parsed()
            ds = steps.to_iter_dataset(grain.ReadOptions(num_threads=0, prefetch_buffer_size=0))
            return iter(
                ds.mp_prefetch(
                    grain.MultiprocessingOptions(num_workers=self.workers, per_worker_buffer_size=max(self.prefetch, 1))
                )
            )
        # one read-ahead thread: a batch is numpy work that holds the GIL for much of its time, so more threads in
        # this process would mostly wait for each other (that is what workers are for)
        return iter(
            steps.to_iter_dataset(
                grain.ReadOptions(num_threads=1 if self.prefetch else 0, prefetch_buffer_size=self.prefetch)
            )
        )

    def __iter__(self) -> GrainBatches:
        return self

    def __next__(self) -> dict[str, np.ndarray]:
        if self._stop is not None and self._step >= self._stop:
            self.close()  # the workers have nothing left to read
            raise StopIteration
        if self._iterator is None:
            self._iterator = self._open()
        batch = next(self._iterator)
        self._step += 1
        if self.workers:  # copied out of the worker's shared memory, which is then unlinked at once (not at exit)
            return {k: np.array(v) for k, v in batch.items()}
        return batch

    def close(self) -> None:
        """Stops the read-ahead (and the worker processes); a later ``next()`` starts them again at ``step``."""
        iterator, self._iterator = self._iterator, None
        if iterator is not None and hasattr(iterator, "close"):
            iterator.close()
            if self.workers:
                del iterator
                _wait_for_shared_memory_release()

    def __enter__(self) -> GrainBatches:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def __del__(self):
        try:
            self.close()
        except Exception:  # pylint: disable=broad-except  (interpreter shutdown)
            pass

    # -- checkpointing ----------------------------------------------------------------------------------------

    def get_state(self) -> dict[str, Any]:
        """The position (the next step) and the options that decide the batches: a JSON-serializable dict to save
        with the checkpoint. ``workers``, ``prefetch`` and the process layout are recorded for information only:
        they may change between a run and its resumption."""
        return {
            "kind": STATE_KIND,
            "step": self._step,
            "split": self.split.name,
            "num_examples": len(self.split),
            **self.options,
            "workers": self.workers,
            "prefetch": self.prefetch,
            "process_index": self.process_index,
            "process_count": self.process_count,
        }

    def _check_state(self, state: Mapping[str, Any]) -> int:
        if not isinstance(state, Mapping) or state.get("kind") != STATE_KIND:
            kind = state.get("kind") if isinstance(state, Mapping) else type(state).__name__
            raise ValueError(f"set_state: not a saved GrainBatches state (kind {kind!r}, expected {STATE_KIND!r})")
        missing = [k for k in ("step",) + STREAM_KEYS if k not in state]
        if missing:
            raise ValueError(f"set_state: the saved state lacks {missing}; it has {sorted(state)}")
        mine = {"split": self.split.name, "num_examples": len(self.split), **self.options}
        for key in STREAM_KEYS:
            if state[key] != mine[key]:
                raise ValueError(
                    f"set_state: the saved input pipeline state has {key}={state[key]!r} but this pipeline has "
                    f"{key}={mine[key]!r}; the saved position belongs to another stream of batches. Build the "
                    f"pipeline with {key}={state[key]!r} to resume it (or start from a step without the state)."
                )
        return check_positive_int("set_state", "step", state["step"], 0)

    def set_state(self, state: Mapping[str, Any]) -> None:
        """Moves to the saved position; refuses a state saved with other options (ValueError naming both values)."""
        step = self._check_state(state)
        self.close()
        self._step = step

    @classmethod
    def from_state(
        cls,
        split: Split,
        state: Mapping[str, Any],
        *,
        num_steps: int | None = None,
        workers: int = 0,
        process_index: int | None = None,
        process_count: int | None = None,
        prefetch: int = 2,
    ) -> GrainBatches:
        """The pipeline of a saved state (its options, its position); the speed options and layout are the caller's.
        ``num_steps`` counts from the saved step."""
        if not isinstance(state, Mapping) or not all(k in state for k in STREAM_KEYS[2:]):
            raise ValueError(f"from_state: not a saved GrainBatches state: {state!r}")
        batches = cls(
            split,
            state["batch_size"],
            seed=state["seed"],
            shuffle=state["shuffle"],
            drop_remainder=state["drop_remainder"],
            augment=state["augment"],
            workers=workers,
            process_index=process_index,
            process_count=process_count,
            prefetch=prefetch,
        )
        start = batches._check_state(state)  # pylint: disable=protected-access  (also checks split and size)
        batches._step = start  # pylint: disable=protected-access
        batches._stop = (
            None
            if num_steps is None
            else start
            + check_positive_int(  # pylint: disable=protected-access
                "from_state", "num_steps", num_steps, 0
            )
        )
        return batches

    def __repr__(self) -> str:
        o = self.options
        return (
            f"GrainBatches({self.split.name}, batch_size={o['batch_size']}, seed={o['seed']}, step={self._step}, "
            f"process {self.process_index}/{self.process_count}, workers={self.workers}, "
            f"prefetch={self.prefetch})"
        )


def train_batches(
    split: Split,
    batch_size: int,
    *,
    seed: int = 0,
    shuffle: bool = True,
    drop_remainder: bool = True,
    augment: bool = False,
    start_step: int = 0,
    num_steps: int | None = None,
    workers: int = 0,
    process_index: int | None = None,
    process_count: int | None = None,
    prefetch: int = 2,
) -> GrainBatches:
    """This process's slices of the training batches of steps ``start_step, start_step + 1, ...``, through Grain.

    Yields, for each step ``t``, rows ``[p B/P, (p+1) B/P)`` of ``batch_at(split, t, batch_size, seed=seed,
    shuffle=shuffle, drop_remainder=drop_remainder, augment=augment)``, bit for bit, as numpy
    ``{'x': float32, 'y': int32, 'mask': bool}``.

    Args:
      split: ``load(name).train`` (materialized arrays or a tfds data source, ``load(..., materialize=False)``).
      batch_size: the global batch size (all processes); divisible by ``process_count``.
      seed, shuffle, drop_remainder, augment: as in :func:`~jaxnorm.lab.data.batch_at`.
      start_step: the first step (a resumed run's ``state.step``).
      num_steps: how many batches, or None for an endless stream.
      workers: worker processes that read, decode and augment (0: in this process, the CPU default). More than
        ``os.cpu_count()`` warns.
      process_index, process_count: this process's place; default ``jax.process_index()`` /
        ``jax.process_count()`` (Grain's ``ShardByJaxProcess``).
      prefetch: batches read ahead (per worker with workers > 0); 0 reads each batch when it is asked for.

    Returns:
      A :class:`GrainBatches` iterator with ``get_state()`` / ``set_state()`` for checkpoints and ``close()``.
    """
    return GrainBatches(
        split,
        batch_size,
        seed=seed,
        shuffle=shuffle,
        drop_remainder=drop_remainder,
        augment=augment,
        start_step=start_step,
        num_steps=num_steps,
        workers=workers,
        process_index=process_index,
        process_count=process_count,
        prefetch=prefetch,
    )

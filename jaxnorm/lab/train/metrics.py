"""Metrics to ``WORKDIR/metrics.jsonl`` and TensorBoard event files (tensorboardX, no TensorFlow), and a progress
line with rate and ETA.

Resuming after a kill: :class:`MetricWriter` drops a torn last line (a row cut off mid-write) when it reopens
``metrics.jsonl``, and :meth:`MetricWriter.rewind_to` — called by a stage right after it restores a checkpoint —
forgets the rows (and TensorBoard points) of the steps that are about to be replayed, so that every ``(step, split)``
is logged once. :func:`read_metrics` ignores a torn last line (a run being written, or killed mid-write) and names the
file and line of any other damage.
"""

from __future__ import annotations

import json
import math
import os
import re
import struct
import sys
import time
from collections import Counter
from collections.abc import Callable, Iterator

import numpy as np

METRICS_FILE = "metrics.jsonl"
TENSORBOARD_DIR = "tensorboard"
PRETRAIN_SPLIT = "pretrain"  # counts pretraining steps; every other split counts training steps
BEFORE_STEP_SPLITS = ("probe",)  # rows at step s are written before step s runs (the others after it finished)


class MetricWriter:
    """One JSON object per line: ``{"step": s, "split": "train"|"eval"|..., name: value, ...}``, flushed per row;
    the finite scalars also go to TensorBoard as ``<split>/<name>``. Only the process with ``enabled=True`` (process
    0) touches any file: with ``enabled=False`` every method is a no-op.

    Opening an existing ``metrics.jsonl`` repairs its end first (atomically: a tmp file and ``os.replace``): a last
    line that is not a JSON object is dropped; a complete row that only lacks its newline is kept and ends with one.
    The TensorBoard ``SummaryWriter`` is created at the first write, so that :meth:`rewind` can open it with
    ``purge_step``; each one writes a new event file.
    """

    def __init__(self, workdir: str, enabled: bool = True):
        self.enabled = enabled
        self.path = os.path.join(workdir, METRICS_FILE)
        self.tb_dir = os.path.join(workdir, TENSORBOARD_DIR)
        self._tb = None
        self._file = None
        self._purge_step = None  # for the next SummaryWriter
        if enabled:
            os.makedirs(workdir, exist_ok=True)
            if os.path.exists(self.path):
                _repair_tail(self.path)
            self._file = open(self.path, "a")

    def write(self, step: int, split: str, values: dict) -> None:
        if not self.enabled:
            return
        row = {"step": int(step), "split": split}
        for k, v in values.items():
            row[k] = np.asarray(v).item() if np.ndim(v) == 0 else np.asarray(v).tolist()
        self._file.write(json.dumps(row) + "\n")
        self._file.flush()
        tb = self._summary_writer()
        for tag, v in _scalars(split, row):
            tb.add_scalar(tag, v, int(step))

    def rewind(self, keep: Callable[[dict], bool], purge_step: int | None = None) -> tuple[int, int | None]:
        """Keep only the rows for which ``keep(row)`` is true, in ``metrics.jsonl`` and in TensorBoard; returns
        ``(rows dropped, purge step P or None)``. A stage that resumes calls :meth:`rewind_to`.

        ``metrics.jsonl`` is rewritten atomically with the kept lines, unchanged and in order (when some go).

        TensorBoard, the way its own ``purge_step`` does it: a new event file starts with a ``SessionLog.START`` at
        step P (tensorboardX ``SummaryWriter(purge_step=P)``), which TensorBoard's Python loader reads as "drop every
        point at step >= P" — of every tag of the run, whatever counter its steps count. So the kept rows at steps
        >= P are written again after it (with their old wall time where their old point is still there): e.g. the
        pretraining rows (their own counter), or the train row of the restored step when the probe row of that step
        goes. TensorBoard's default (Rust) loader ignores START events and drops instead a tag's points at and after
        the step of each newer point of that tag: the rewritten rows and the replay do that.

        P is found by reading the event files: the largest step from which writing the kept rows again makes both
        loaders show exactly those rows — at or below every point that differs (a dropped row's; one whose row was
        never written; one lost from tensorboardX's write queue when the process was killed) and, per tag, at or
        below a kept point before it, so that the Rust loader drops that tag's stale points at once (a tag with no
        kept point before its first stale one shows them there until the replay writes the tag again). None when the
        files already agree: nothing is written. ``purge_step``: purge from that step at the latest.
        """
        if not self.enabled:
            return 0, None
        self._file.flush()
        with open(self.path, "rb") as f:
            data = f.read()
        lines, torn = _parse(self.path, data, torn_ok=True)
        kept = [(line, row) for line, row in lines if keep(row)]
        dropped = len(lines) - len(kept)
        if dropped or torn or (data and not data.endswith(b"\n")):
            _replace(self.path, b"".join(line + b"\n" for line, _ in kept))
            self._file.close()
            self._file = open(self.path, "a")
        rows = [row for _, row in kept]
        if self._tb is not None:
            self._tb.close()  # its queued events reach the file before the files are read
            self._tb = None
        events = _read_events(self.tb_dir)
        step = _purge_step(events, rows)
        if purge_step is not None:
            step = int(purge_step) if step is None else min(step, int(purge_step))
        if step is not None:
            wall = {(tag, s, v): w for kind, tag, s, v, w in events if kind == "scalar"}
            self._purge_step = step
            tb = self._summary_writer()
            for row in rows:
                if isinstance(row.get("step"), int) and row["step"] >= step:
                    for tag, v in _scalars(row.get("split"), row):
                        w = wall.get((_clean_tag(tag), row["step"], _f32(v)))
                        tb.add_scalar(tag, v, row["step"], walltime=w)
            tb.close()  # the purge is on disk before training goes on
            self._tb = None
        return dropped, step

    def rewind_to(self, step: int, stage: str = "train") -> tuple[int, int | None]:
        """:meth:`rewind` for a stage restored at ``step`` (its checkpoint after ``step`` steps): see
        :func:`kept_after_restore`. Call it once ``step`` is known, also when no checkpoint was restored
        (``step=0``: the rows of an attempt killed before its first checkpoint go)."""
        return self.rewind(kept_after_restore(step, stage))

    def close(self) -> None:
        if self.enabled:
            if self._file is not None:
                self._file.close()
                self._file = None
            if self._tb is not None:
                self._tb.close()
                self._tb = None

    def _summary_writer(self):
        if self._tb is None:
            from tensorboardX import SummaryWriter  # imported lazily: only the writing process needs it

            # TensorBoard reads a run's event files in name order; tensorboardX names them by the whole second and
            # opens them with 'wb': the suffix keeps a second writer within the same second from truncating the
            # first one's file, and sorts it after it
            self._tb = SummaryWriter(self.tb_dir, purge_step=self._purge_step, filename_suffix=f".{time.time_ns()}")
            self._purge_step = None
        return self._tb


def kept_after_restore(step: int, stage: str = "train") -> Callable[[dict], bool]:
    """The rows that stay when ``stage`` resumes from its checkpoint after ``step`` steps (steps ``step …`` run
    again). ``'train'``: the pretraining rows, the rows written after a finished step (train, eval) up to ``step``
    and the rows written before a step runs (probe) before ``step``. ``'pretrain'``: the rows of the training steps
    and the pretraining rows up to ``step``."""
    if stage not in ("train", "pretrain"):
        raise ValueError(f"stage must be 'train' or 'pretrain', got {stage!r}")
    step = int(step)

    def keep(row: dict) -> bool:
        split, s = row.get("split"), row.get("step")
        if not isinstance(s, (int, float)):
            return True
        if (split == PRETRAIN_SPLIT) != (stage == "pretrain"):
            return True  # the other counter's rows
        return s < step if split in BEFORE_STEP_SPLITS else s <= step

    return keep


def read_metrics(workdir: str) -> list[dict]:
    """The rows of a run's ``metrics.jsonl``, in the order they were written. A last line that is not a JSON object
    (the run was killed, or is being written, mid-line) is left out; any other such line is a ValueError naming the
    file and the line."""
    path = os.path.join(workdir, METRICS_FILE)
    if not os.path.exists(path):
        raise FileNotFoundError(
            f"{path} not found: is {str(workdir)!r} a jaxnorm run directory (python train.py --workdir ...)?"
        )
    with open(path, "rb") as f:
        data = f.read()
    return [row for _, row in _parse(path, data, torn_ok=True)[0]]


def _parse(path: str, data: bytes, torn_ok: bool) -> tuple[list[tuple[bytes, dict]], bool]:
    """``([(line, row), ...], torn)`` of the bytes of a ``metrics.jsonl``; blank lines are skipped. A last line that
    is not a JSON object is left out (``torn``) when ``torn_ok``; any other is a ValueError naming file and line."""
    lines = data.split(b"\n")
    last = max((i for i, line in enumerate(lines) if line.strip()), default=-1)
    out, torn = [], False
    for i, line in enumerate(lines):
        if not line.strip():
            continue
        row, err = _row(line)
        if row is None:
            if i == last and torn_ok:
                torn = True
                break
            snippet = line[:120].decode("utf-8", "replace")
            raise ValueError(
                f"{path}, line {i + 1}: not a metrics row ({err}): {snippet!r}; the file is damaged "
                "there: delete or mend that line"
            )
        out.append((line, row))
    return out, torn


def _row(line: bytes) -> tuple[dict | None, str]:
    try:
        row = json.loads(line)
    except ValueError as e:  # incl. JSONDecodeError, UnicodeDecodeError
        return None, str(e)
    return (row, "") if isinstance(row, dict) else (None, f"a JSON {type(row).__name__}, not an object")


def _repair_tail(path: str) -> None:
    """Drop a last line of ``path`` that is not a JSON object; end a last row that lacks its newline with one."""
    with open(path, "rb") as f:
        size = f.seek(0, os.SEEK_END)
        if size == 0:
            return
        f.seek(size - 1)
        newline = f.read(1) == b"\n"
        end = size - 1 if newline else size
        start = _line_start(f, end)
        f.seek(start)
        last = f.read(end - start)
    if last.strip() and _row(last)[0] is not None:
        if newline:
            return
        keep, tail = size, b"\n"  # a complete row, cut before its newline
    elif not last.strip() and newline:
        return
    else:
        keep, tail = start, b""  # torn: the run was killed (or the disk filled up) while writing it

    def chunks():
        with open(path, "rb") as f:
            left = keep
            while left > 0:
                block = f.read(min(left, 1 << 20))
                if not block:
                    break
                left -= len(block)
                yield block
        yield tail

    _replace(path, chunks())


def _line_start(f, end: int) -> int:
    """The offset just after the last newline before ``end`` in the binary file ``f`` (0 when there is none)."""
    pos = end
    while pos > 0:
        n = min(pos, 1 << 16)
        f.seek(pos - n)
        i = f.read(n).rfind(b"\n")
        if i >= 0:
            return pos - n + i + 1
        pos -= n
    return 0


def _replace(path: str, chunks) -> None:
    """Write ``path`` anew from the byte strings ``chunks``, atomically: a tmp file, fsync, ``os.replace``."""
    tmp = path + ".tmp"
    try:
        with open(tmp, "wb") as f:
            for c in [chunks] if isinstance(chunks, bytes) else chunks:
                f.write(c)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        try:
            os.remove(tmp)
        except OSError:
            pass
        raise


def _scalars(split, row: dict) -> list[tuple[str, float]]:
    """The TensorBoard points of a row: ``(<split>/<name>, value)`` of its finite scalars."""
    return [
        (f"{split}/{k}", v)
        for k, v in row.items()
        if k not in ("step", "split") and isinstance(v, (int, float)) and math.isfinite(v)
    ]


_INVALID_TAG_CHARACTERS = re.compile(r"[^-/\w\.]")


def _clean_tag(tag: str) -> str:
    """The tag as tensorboardX writes it (``tensorboardX.summary._clean_tag``)."""
    return _INVALID_TAG_CHARACTERS.sub("_", tag).lstrip("/")


def _f32(v) -> float:
    """A value as an event file holds it (``simple_value`` is a float32)."""
    with np.errstate(over="ignore"):
        return float(np.float32(v))


def _tf_records(path: str) -> Iterator[bytes]:
    """The records of a TFRecord file (an event file), up to a torn or damaged one (as TensorBoard reads them; the
    data checksums are not checked: tensorboardX's crc32c is pure Python)."""
    from tensorboardX.record_writer import masked_crc32c

    with open(path, "rb") as f:
        while True:
            header = f.read(12)
            if len(header) < 12 or struct.unpack("<I", header[8:])[0] != masked_crc32c(header[:8]):
                return
            (length,) = struct.unpack("<Q", header[:8])
            data = f.read(length)
            if len(data) < length or len(f.read(4)) < 4:
                return
            yield data


def _read_events(tb_dir: str) -> list[tuple]:
    """The START events ``('start', None, step, None, None)`` and scalar points ``('scalar', tag, step, value,
    wall_time)`` of the event files in ``tb_dir``, in TensorBoard's order (files by name, then as written)."""
    if not os.path.isdir(tb_dir):
        return []
    from google.protobuf.message import DecodeError
    from tensorboardX.proto.event_pb2 import Event, SessionLog

    out = []
    for name in sorted(os.listdir(tb_dir)):
        path = os.path.join(tb_dir, name)
        if "tfevents" not in name or not os.path.isfile(path):
            continue
        for data in _tf_records(path):
            try:
                e = Event.FromString(data)
            except DecodeError:
                break
            if e.HasField("session_log"):
                if e.session_log.status == SessionLog.START:
                    out.append(("start", None, e.step, None, None))
            elif e.HasField("summary"):
                out.extend(
                    ("scalar", v.tag, e.step, v.simple_value, e.wall_time)
                    for v in e.summary.value
                    if v.HasField("simple_value")
                )
    return out


def _tensorboard_views(events: list[tuple]) -> tuple[dict, dict]:
    """``(python, rust)``: per tag, the ``[(step, value), ...]`` that TensorBoard shows from ``events`` (see
    :func:`_read_events`) with its Python loader (a START event at step P drops every tag's points at steps >= P)
    and with its default Rust loader (START events ignored; a point at step s drops its tag's points at steps >=
    s)."""
    python, rust = {}, {}
    for kind, tag, step, value, _ in events:
        if kind == "start":
            for t, pts in python.items():
                python[t] = [p for p in pts if p[0] < step]
            continue
        python.setdefault(tag, []).append((step, value))
        pts = rust.setdefault(tag, [])
        while pts and pts[-1][0] >= step:
            pts.pop()
        pts.append((step, value))
    return python, rust


def _purge_step(events: list[tuple], rows: list[dict]) -> int | None:
    """The purge step of :meth:`MetricWriter.rewind`: the largest step P such that purging from P and writing the
    rows at steps >= P again makes both TensorBoard loaders show exactly ``rows``; None when they already do."""
    python, rust = _tensorboard_views(events)
    expected: dict[str, list] = {}
    for row in rows:
        s = row.get("step")
        if isinstance(s, int):
            for tag, v in _scalars(row.get("split"), row):
                expected.setdefault(_clean_tag(tag), []).append((s, _f32(v)))
    candidates = []
    for tag in set(python) | set(rust) | set(expected):
        want = expected.get(tag, [])
        d_python, d_rust = _first_difference(python.get(tag, []), want), _first_difference(rust.get(tag, []), want)
        if d_python is None and d_rust is None:
            continue
        d = min(d for d in (d_python, d_rust) if d is not None)
        before = [s for s, _ in want if s <= d]
        if before:  # writing this tag again from a kept point at or before d also mends the Rust loader's view
            candidates.append(max(before))
        elif d_python is not None:
            candidates.append(d_python)
    return min(candidates) if candidates else None


def _first_difference(points: list, want: list) -> int | None:
    """The smallest step at which the multisets of ``(step, value)`` differ, or None."""
    a, b = Counter(points), Counter(want)
    return min((s for s, _ in (a - b) + (b - a)), default=None)


def series(rows: list[dict], split: str, key: str) -> tuple[list, list]:
    """``(steps, values)`` of the scalar ``key`` in the rows of ``split``."""
    pts = [(r["step"], r[key]) for r in rows if r.get("split") == split and isinstance(r.get(key), (int, float))]
    return [p[0] for p in pts], [p[1] for p in pts]


class Progress:
    """``step k/n  loss …  12.3 steps/s  ETA 0:41`` on stderr: redrawn in place on a terminal, one line per
    report otherwise (CI logs)."""

    def __init__(self, total: int, start: int, enabled: bool = True):
        self.total, self.start, self.enabled = total, start, enabled
        self.t0 = time.perf_counter()
        self.tty = sys.stderr.isatty()

    def rate(self, step: int) -> float:
        dt = time.perf_counter() - self.t0
        return (step - self.start) / dt if dt > 0 else 0.0

    def update(self, step: int, info: str = "") -> None:
        if not self.enabled:
            return
        r = self.rate(step)
        eta = (self.total - step) / r if r > 0 else float("nan")
        eta_s = time.strftime("%M:%S", time.gmtime(eta)) if math.isfinite(eta) else "?"
        line = f"step {step}/{self.total}  {info}  {r:.1f} steps/s  ETA {eta_s}"
        sys.stderr.write(("\r" + line + "\033[K") if self.tty else line + "\n")
        sys.stderr.flush()

    def close(self) -> None:
        if self.enabled and self.tty:
            sys.stderr.write("\n")

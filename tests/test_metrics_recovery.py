"""metrics.jsonl and TensorBoard after a kill and a resume: a torn last line, damage in the middle, rewinding to the
restored step (every (step, split) once, in the file and in TensorBoard, whatever counter a split counts), the
disabled writer of the other processes, and a torn result.json of a sweep run."""

import json
import os
import struct

import pytest

from jaxnorm.lab import sweep
from jaxnorm.lab.train import metrics
from jaxnorm.lab.train.metrics import MetricWriter, read_metrics


def _lines(wd):
    return (wd / "metrics.jsonl").read_bytes().split(b"\n")


def _log_steps(w, start, stop, probe_every=2, eval_every=5):
    """What the training stage writes for steps ``start … stop-1``: a probe row at step s before step s runs, the
    train row (and every ``eval_every`` an eval row) at ``done = s + 1`` after it."""
    for s in range(start, stop):
        if s % probe_every == 0:
            w.write(s, "probe", {"x": float(s)})
        done = s + 1
        w.write(done, "train", {"loss": 1.0 / done, "accuracy": done / 100})
        if done % eval_every == 0:
            w.write(done, "eval", {"accuracy": done / 50})


def _log_pretrain(w, start, stop, every=5):
    for s in range(start, stop):
        if (s + 1) % every == 0:
            w.write(s + 1, "pretrain", {"loss": 10.0 / (s + 1), "layer": 0})


def _keys(rows):
    return [(r["split"], r["step"]) for r in rows]


# --- torn and damaged lines ----------------------------------------------------------------------------------------


def test_torn_last_line_is_ignored_by_read_metrics_and_dropped_on_reopen(tmp_path):
    w = MetricWriter(str(tmp_path))
    for s in (1, 2, 3):
        w.write(s, "train", {"loss": 1.0 / s})
    w.close()
    with open(tmp_path / "metrics.jsonl", "a") as f:
        f.write('{"step": 4, "split": "train", "lo')  # killed mid-write
    assert _keys(read_metrics(str(tmp_path))) == [("train", 1), ("train", 2), ("train", 3)]

    w = MetricWriter(str(tmp_path))  # reopening repairs the end before anything is appended
    assert _lines(tmp_path)[-1] == b"" and len(_lines(tmp_path)) == 4
    w.write(4, "train", {"loss": 0.25})
    w.close()
    assert _keys(read_metrics(str(tmp_path))) == [("train", s) for s in (1, 2, 3, 4)]
    assert not (tmp_path / "metrics.jsonl.tmp").exists()


@pytest.mark.parametrize(
    "tail,kept",
    [
        (b'{"step": 3, "split": "train", "loss": 0.5', 2),  # cut inside the row
        (b"\x00\x00\x00\x00", 2),  # a crash can leave zeros at the end of a file
        (b"\x00\x00\n", 2),  # not JSON, even with a newline
        (b'{"step": 3, "split": "train", "loss": 0.5}', 3),  # complete, only its newline is missing: kept
    ],
)
def test_reopen_repairs_every_kind_of_torn_end(tmp_path, tail, kept):
    good = b'{"step": 1, "split": "train", "loss": 1.0}\n{"step": 2, "split": "train", "loss": 0.7}\n'
    (tmp_path / "metrics.jsonl").write_bytes(good + tail)
    assert len(read_metrics(str(tmp_path))) == kept
    MetricWriter(str(tmp_path)).close()
    data = (tmp_path / "metrics.jsonl").read_bytes()
    assert data.endswith(b"\n") and data.startswith(good) and len(read_metrics(str(tmp_path))) == kept
    w = MetricWriter(str(tmp_path))
    w.write(9, "train", {"loss": 0.1})
    w.close()
    assert [r["step"] for r in read_metrics(str(tmp_path))] == [1, 2, 3][:kept] + [9]


def test_a_bad_line_in_the_middle_is_named_with_its_line_number(tmp_path):
    path = tmp_path / "metrics.jsonl"
    path.write_text(
        '{"step": 1, "split": "train"}\n\n{"step": 2, "split": "tr{"step": 3, "split": "train"}\n'
        '{"step": 4, "split": "train"}\n'
    )
    with pytest.raises(ValueError, match=rf"{path}, line 3: not a metrics row"):
        read_metrics(str(tmp_path))
    w = MetricWriter(str(tmp_path))  # the end is fine: opening works; rewinding reads every line
    with pytest.raises(ValueError, match=rf"{path}, line 3"):
        w.rewind_to(2)
    w.close()
    path.write_text('{"step": 1, "split": "train"}\n[1, 2]\n{"step": 2, "split": "train"}\n')
    with pytest.raises(ValueError, match=r"line 2: not a metrics row \(a JSON list, not an object\)"):
        read_metrics(str(tmp_path))


def test_a_missing_file_is_still_file_not_found(tmp_path):
    with pytest.raises(FileNotFoundError, match="a jaxnorm run directory"):
        read_metrics(str(tmp_path / "nope"))


# --- rewind ---------------------------------------------------------------------------------------------------------


def test_rewind_keeps_exactly_the_rows_of_the_predicate_and_survives_reopening(tmp_path):
    w = MetricWriter(str(tmp_path))
    _log_pretrain(w, 0, 20)
    _log_steps(w, 0, 10)
    before = read_metrics(str(tmp_path))
    lines = {json.dumps(r): line for r, line in zip(before, [x for x in _lines(tmp_path) if x])}

    def keep(r):
        return r["split"] == "pretrain" or r["step"] % 3 == 0

    dropped, _ = w.rewind(keep)
    assert dropped == sum(not keep(r) for r in before) > 0
    after = read_metrics(str(tmp_path))
    assert after == [r for r in before if keep(r)]  # the same rows, in the same order
    assert [x for x in _lines(tmp_path) if x] == [lines[json.dumps(r)] for r in after]  # lines unchanged
    w.write(99, "train", {"loss": 0.0})  # the writer appends to the new file
    w.close()
    w = MetricWriter(str(tmp_path))
    w.write(100, "train", {"loss": 0.0})
    w.close()
    assert read_metrics(str(tmp_path)) == after + [
        {"step": 99, "split": "train", "loss": 0.0},
        {"step": 100, "split": "train", "loss": 0.0},
    ]
    assert not (tmp_path / "metrics.jsonl.tmp").exists()


def test_kept_after_restore_splits_by_counter_and_by_when_a_row_is_written():
    keep = metrics.kept_after_restore(6)
    assert keep({"step": 6, "split": "train"}) and not keep({"step": 7, "split": "train"})
    assert keep({"step": 6, "split": "eval"}) and not keep({"step": 7, "split": "eval"})
    assert keep({"step": 5, "split": "probe"}) and not keep({"step": 6, "split": "probe"})  # step 6 runs again
    assert keep({"step": 1000, "split": "pretrain"})  # another counter
    keep = metrics.kept_after_restore(20, "pretrain")
    assert keep({"step": 20, "split": "pretrain"}) and not keep({"step": 21, "split": "pretrain"})
    assert keep({"step": 500, "split": "train"}) and keep({"step": 500, "split": "probe"})
    with pytest.raises(ValueError, match="stage must be"):
        metrics.kept_after_restore(3, "finetune")


def test_a_replay_after_resume_logs_every_step_and_split_once(tmp_path):
    ref = tmp_path / "ref"
    w = MetricWriter(str(ref))
    _log_steps(w, 0, 10)
    w.close()

    run = tmp_path / "run"
    w = MetricWriter(str(run))
    _log_steps(w, 0, 10)  # the checkpoint after 6 steps is the last one on disk; killed after 10
    w.close()
    with open(run / "metrics.jsonl", "a") as f:
        f.write('{"step": 10, "split": "probe", "x"')
    w = MetricWriter(str(run))
    w.rewind_to(6)
    _log_steps(w, 6, 10)  # steps 6 … 9 again
    w.close()
    rows = read_metrics(str(run))
    assert len(_keys(rows)) == len(set(_keys(rows)))
    assert sorted(_keys(rows)) == sorted(_keys(read_metrics(str(ref))))
    assert [r["step"] for r in rows if r["split"] == "train"] == list(range(1, 11))


def test_a_rewind_that_changes_nothing_rewrites_nothing(tmp_path):
    w = MetricWriter(str(tmp_path))
    _log_steps(w, 0, 6)
    w.close()
    inode = os.stat(tmp_path / "metrics.jsonl").st_ino
    files = sorted(os.listdir(tmp_path / "tensorboard"))
    w = MetricWriter(str(tmp_path))
    assert w.rewind_to(6) == (0, None)
    w.close()
    assert os.stat(tmp_path / "metrics.jsonl").st_ino == inode
    assert sorted(os.listdir(tmp_path / "tensorboard")) == files


# --- TensorBoard ----------------------------------------------------------------------------------------------------


def _events(tb_dir):
    """The scalar points and START events of the event files, in TensorBoard's order: read here with the TFRecord
    framing and tensorboardX's protos (tensorboardX has no reader), independently of jaxnorm's own reader."""
    from tensorboardX.proto.event_pb2 import Event, SessionLog

    out = []
    for name in sorted(os.listdir(tb_dir)):
        with open(os.path.join(tb_dir, name), "rb") as f:
            data = f.read()
        pos = 0
        while pos + 12 <= len(data):
            (n,) = struct.unpack("<Q", data[pos : pos + 8])
            if pos + 12 + n + 4 > len(data):
                break
            e = Event.FromString(data[pos + 12 : pos + 12 + n])
            pos += 12 + n + 4
            if e.HasField("session_log") and e.session_log.status == SessionLog.START:
                out.append(("start", e.step))
            for v in e.summary.value:
                out.append((v.tag, e.step))
    return out


def _shown(tb_dir):
    """``{loader: {tag: [steps]}}``: what TensorBoard shows, by its two rules. Python loader (file_version 2): a
    START event at step P drops the points of every tag at steps >= P. Rust loader (the default): START ignored, a
    point at step s drops the points of its tag at steps >= s."""
    python, rust = {}, {}
    for tag, step in _events(tb_dir):
        if tag == "start":
            python = {t: [s for s in steps if s < step] for t, steps in python.items()}
            continue
        python.setdefault(tag, []).append(step)
        rust[tag] = [s for s in rust.get(tag, []) if s < step] + [step]
    return {"python": python, "rust": rust}


def _assert_tensorboard_matches(wd, shown=_shown):
    rows = read_metrics(str(wd))
    want = {}
    for r in rows:
        for k, v in r.items():
            if k not in ("step", "split"):
                want.setdefault(f"{r['split']}/{k}", []).append(r["step"])
    for loader, tags in shown(str(wd / "tensorboard")).items():
        got = {t: sorted(s) for t, s in tags.items() if s}
        assert got == {t: sorted(s) for t, s in want.items()}, loader
        for tag, steps in got.items():
            assert len(steps) == len(set(steps)), (loader, tag)


def _rewound_and_replayed(wd):
    """Pretraining rows and steps 0 … 9, then a resume at step 6 that rewinds and writes steps 6 … 9 again; returns
    what ``rewind_to(6)`` returned."""
    w = MetricWriter(str(wd))
    _log_pretrain(w, 0, 40)
    _log_steps(w, 0, 10)
    w.close()
    w = MetricWriter(str(wd))
    rewound = w.rewind_to(6)
    _log_steps(w, 6, 10)
    w.close()
    return rewound


def test_tensorboard_shows_every_step_once_per_tag_after_rewind_and_replay(tmp_path):
    """The probe of the restored step runs again but its train row stays; the pretraining rows count another
    counter (steps 5 … 40, beyond the restored training step 6): one purge step for every tag must not lose them."""
    dropped, purge = _rewound_and_replayed(tmp_path)
    assert dropped == 7 and purge is not None and purge <= 6  # train/eval 7 … 10, probes 6 and 8
    _assert_tensorboard_matches(tmp_path)
    shown = _shown(str(tmp_path / "tensorboard"))["python"]
    assert shown["pretrain/loss"] == list(range(5, 41, 5))
    assert shown["train/loss"] == list(range(1, 11)) and shown["probe/x"] == [0, 2, 4, 6, 8]


def test_tensorboard_pretraining_resume_then_training(tmp_path):
    w = MetricWriter(str(tmp_path))
    _log_pretrain(w, 0, 23)  # pretraining checkpoint after 20 steps; killed at 23
    w.close()
    w = MetricWriter(str(tmp_path))
    w.rewind_to(20, "pretrain")
    _log_pretrain(w, 20, 40)
    w.rewind_to(0)  # training starts without a checkpoint: nothing to drop
    _log_steps(w, 0, 10)
    w.close()
    _assert_tensorboard_matches(tmp_path)
    assert [r["step"] for r in read_metrics(str(tmp_path)) if r["split"] == "pretrain"] == list(range(5, 41, 5))


def test_tensorboard_loses_no_point_and_keeps_no_orphan(tmp_path):
    """A point whose row never reached metrics.jsonl (killed between the two) is purged; points that never reached
    the event files (tensorboardX's queue when killed; a deleted tensorboard/) are written again from the rows."""
    w = MetricWriter(str(tmp_path))
    _log_steps(w, 0, 10)
    w._summary_writer().add_scalar("probe/x", 10.0, 10)  # killed before its row was written
    w.close()
    w = MetricWriter(str(tmp_path))
    w.rewind_to(10)
    w.close()
    _assert_tensorboard_matches(tmp_path)

    for name in os.listdir(tmp_path / "tensorboard"):
        os.remove(tmp_path / "tensorboard" / name)
    w = MetricWriter(str(tmp_path))
    _, purge = w.rewind_to(10)
    w.close()
    assert purge == 0  # everything written again
    _assert_tensorboard_matches(tmp_path)


def test_an_explicit_purge_step_purges_from_there(tmp_path):
    w = MetricWriter(str(tmp_path))
    _log_steps(w, 0, 10)
    assert w.rewind(lambda r: True, purge_step=8) == (0, 8)
    w.close()
    _assert_tensorboard_matches(tmp_path)
    assert _shown(str(tmp_path / "tensorboard"))["python"]["train/loss"] == list(range(1, 11))


# --- the other processes --------------------------------------------------------------------------------------------


def test_a_disabled_writer_writes_nothing(tmp_path):
    wd = tmp_path / "run"
    w = MetricWriter(str(wd), enabled=False)
    w.write(1, "train", {"loss": 1.0})
    assert w.rewind(lambda r: False, purge_step=0) == (0, None)
    assert w.rewind_to(0) == (0, None)
    w.close()
    assert not wd.exists()
    wd.mkdir()
    (wd / "metrics.jsonl").write_bytes(b'{"step": 1, "split": "train"}\n{"step": 2, "spl')  # not repaired either
    w = MetricWriter(str(wd), enabled=False)
    w.rewind_to(0)
    w.close()
    assert (wd / "metrics.jsonl").read_bytes().endswith(b'"spl') and os.listdir(wd) == ["metrics.jsonl"]


# --- sweeps: result.json --------------------------------------------------------------------------------------------


def test_a_torn_result_json_is_no_result_with_a_warning_naming_it(tmp_path, capsys):
    from jaxnorm.lab.train import config as config_lib

    config = config_lib.base_config()
    path = tmp_path / "result.json"
    assert sweep._status(str(tmp_path), config) is None  # no file
    for bad in (b'{"status": "finished", "config": {"se', b"", b"[]", b'{"status": "finished", "config": [1]}'):
        path.write_bytes(bad)
        assert sweep._status(str(tmp_path), config) is None
        err = capsys.readouterr().err
        assert f"warning: {path} is " in err and "resumes from its checkpoint" in err


def test_a_sweep_regenerates_a_torn_result_json(tmp_path, capsys):
    exp = tmp_path / "exp.py"
    exp.write_text(
        "from jaxnorm.lab.train.config import base_config\n"
        "def get_config():\n"
        "    c = base_config(); c.dataset = 'digits'; c.model = 'mlp'; c.norm = 'none'; c.optimizer = 'sgd'\n"
        "    c.schedule = 'constant'; c.batch_size = 32; c.num_steps = 4; c.eval_every = 4; c.log_every = 2\n"
        "    c.checkpoint_every = 4; c.model_kwargs.hidden = (8,); c.learning_rate = 0.1\n"
        "    return c\n"
        "def get_sweep(config):\n"
        "    return [{'name': 'p'}]\n"
    )
    run = lambda: sweep.run_sweep(str(exp), str(tmp_path / "w"), 1, {}, plots=False, log=lambda *_: None)  # noqa
    first = run()["runs"][0]
    result = tmp_path / "w" / "p" / "seed0" / "result.json"
    good = json.loads(result.read_text())
    result.write_text(result.read_text()[:40])  # torn
    capsys.readouterr()
    again = run()["runs"][0]
    assert f"warning: {result} is not valid JSON" in capsys.readouterr().err
    assert not again["skipped"] and again["status"] == "finished"
    assert again["test_accuracy"] == first["test_accuracy"]  # evaluated again from the final checkpoint
    assert json.loads(result.read_text())["final"] == good["final"]
    assert run()["runs"][0]["skipped"]
    rows = read_metrics(str(tmp_path / "w" / "p" / "seed0"))
    assert [r["step"] for r in rows if r["split"] == "train"] == [2, 4]


def test_tensorboards_own_loader_shows_every_step_once_after_rewind_and_replay(tmp_path):
    """The same rewind as above read by TensorBoard's own Python loader (the [tensorboard] extra, in [test])."""
    pytest.importorskip("tensorboard", reason="the tensorboard package is not installed: pip install 'jaxnorm[test]'")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    def accumulated(tb_dir):
        acc = EventAccumulator(tb_dir)
        acc.Reload()
        return {"EventAccumulator": {t: [e.step for e in acc.Scalars(t)] for t in acc.Tags()["scalars"]}}

    _rewound_and_replayed(tmp_path)
    got = accumulated(str(tmp_path / "tensorboard"))["EventAccumulator"]
    assert got and all(len(s) == len(set(s)) for s in got.values()), got  # it did read the points, each once
    _assert_tensorboard_matches(tmp_path, shown=accumulated)

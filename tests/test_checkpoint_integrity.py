"""Verified checkpoints: the sha256 manifest beside each step, and what a corrupt, truncated or missing file does
(one line, the step moved to ``corrupt-<step>``, the run resumes from the newest good earlier one)."""

import errno
import hashlib
import json
import os
import re

import numpy as np
import orbax.checkpoint as ocp
import pytest
from test_train import load_config

from jaxnorm.lab.train import checkpoint as ckpt_lib
from jaxnorm.lab.train import loop


def state(k=3, n=6):
    """A tiny state; ``n`` > 6 gives random (incompressible) weights."""
    w = np.arange(6.0).reshape(2, 3) + k if n == 6 else np.random.default_rng(k).standard_normal(n)
    return {"params": {"w": w}, "step": np.int32(k)}


def target(n=6):
    return state(0, n)


def saved(tmp_path, steps=(10, 20), n=6):
    ck = ckpt_lib.Checkpointer(str(tmp_path / "wd"), 3)
    for s in steps:
        ck.save(s, state(s, n))
    return ck


def data_files(ck, step):
    d = os.path.join(ck.directory, str(step))
    files = [os.path.join(r, f) for r, _, fs in os.walk(d) for f in fs if os.path.basename(r) == "d"]
    assert files, f"no orbax data files under {d}"
    return sorted(files, key=os.path.getsize)


def flip(path, offset=None):
    data = bytearray(open(path, "rb").read())
    data[len(data) // 2 if offset is None else offset] ^= 0xFF
    with open(path, "wb") as f:
        f.write(bytes(data))


def one_line(msg, directory=""):
    """One line, under 400 characters (beyond the checkpoint directory, which a printed line names twice)."""
    assert len(msg.splitlines()) == 1 and len(msg) < 400 + len(directory), msg
    assert "Traceback" not in msg


def assert_fell_back(ck, capsys, restored, reason):
    """Step 20 was corrupt: one printed line, moved to corrupt-20, step 10 restored; orbax no longer lists 20."""
    out = capsys.readouterr().out.strip()
    one_line(out, ck.directory)
    assert re.fullmatch(
        rf"checkpoint step 20 in {re.escape(ck.directory)} is corrupt \(.*{reason}.*\); moved to "
        rf"{re.escape(ck.directory)}/corrupt-20; resuming from step 10",
        out,
    ), out
    assert int(restored["step"]) == 10 and np.array_equal(restored["params"]["w"], state(10)["params"]["w"])
    assert sorted(os.listdir(ck.directory)) == ["10", "corrupt-20"]
    assert ck.steps() == [10] and list(ck.manager.all_steps()) == [10]
    return out


def test_manifest_records_every_leaf_and_a_clean_restore_passes(tmp_path):
    ck = saved(tmp_path)
    step_dir = os.path.join(ck.directory, "20")
    assert sorted(os.listdir(step_dir)) == [
        "_CHECKPOINT_METADATA",
        "commit_success.txt",
        "default",
        "jaxnorm_manifest.json",
    ]  # no tmp file left
    manifest = json.load(open(os.path.join(step_dir, "jaxnorm_manifest.json")))
    assert manifest["format"] == "jaxnorm checkpoint manifest" and manifest["step"] == 20
    w = state(20)["params"]["w"]
    assert manifest["leaves"] == {
        "params/w": {"dtype": "float64", "shape": [2, 3], "sha256": hashlib.sha256(w.tobytes()).hexdigest()},
        "step": {"dtype": "int32", "shape": [], "sha256": hashlib.sha256(np.int32(20).tobytes()).hexdigest()},
    }
    restored = ck.restore(target())
    assert int(restored["step"]) == 20 and np.array_equal(restored["params"]["w"], w)
    assert np.array_equal(ck.restore(target(), step=10)["params"]["w"], state(10)["params"]["w"])
    ck.save(20, state(99))  # an existing step: a no-op
    assert int(ck.restore(target())["step"]) == 20
    ck.close()


def test_flipped_byte_that_orbax_reads_without_complaint_is_caught_by_the_checksum(tmp_path, capsys):
    ck = saved(tmp_path, n=512)
    path = data_files(ck, 20)[-1]
    original = open(path, "rb").read()
    # find a byte whose flip TensorStore decodes silently into different values (most of the zstd payload)
    for offset in range(len(original) // 2, len(original)):
        flip(path, offset)
        try:
            with ocp.StandardCheckpointer() as raw:
                values = raw.restore(os.path.join(ck.directory, "20", "default"))
        except Exception:
            values = None
        if values is not None and not np.array_equal(values["params"]["w"], state(20, 512)["params"]["w"]):
            break
        with open(path, "wb") as f:
            f.write(original)
    else:
        pytest.fail("no silently decoded flip found")
    restored = ck.restore(target(512))
    out = capsys.readouterr().out.strip()
    one_line(out, ck.directory)
    assert "is corrupt (checksum mismatch in params/w); moved to" in out and out.endswith("resuming from step 10")
    assert int(restored["step"]) == 10 and np.array_equal(restored["params"]["w"], state(10, 512)["params"]["w"])
    assert ck.steps() == [10]
    ck.close()


def test_flipped_byte_in_the_largest_data_file_falls_back_and_the_step_can_be_saved_again(tmp_path, capsys):
    ck = saved(tmp_path)
    flip(data_files(ck, 20)[-1])
    assert_fell_back(ck, capsys, ck.restore(target()), "")
    ck.save(20, state(20))  # not skipped: the manager no longer knows step 20
    assert ck.steps() == [10, 20]
    assert int(ck.restore(target())["step"]) == 20
    assert capsys.readouterr().out == ""
    ck.close()


def test_truncated_file_falls_back(tmp_path, capsys):
    ck = saved(tmp_path, n=512)
    path = data_files(ck, 20)[-1]
    with open(path, "r+b") as f:
        f.truncate(os.path.getsize(path) // 2)
    restored = ck.restore(target(512))
    out = capsys.readouterr().out.strip()
    one_line(out, ck.directory)
    assert "step 20" in out and "is corrupt (data unreadable: " in out and out.endswith("resuming from step 10")
    assert int(restored["step"]) == 10 and sorted(os.listdir(ck.directory)) == ["10", "corrupt-20"]
    ck.close()


def test_deleted_file_falls_back(tmp_path, capsys):
    ck = saved(tmp_path)
    os.remove(data_files(ck, 20)[-1])
    assert_fell_back(ck, capsys, ck.restore(target()), "unreadable: ")
    ck.close()


def test_missing_manifest_entry_falls_back(tmp_path, capsys):
    ck = saved(tmp_path)
    path = os.path.join(ck.directory, "20", "jaxnorm_manifest.json")
    manifest = json.load(open(path))
    del manifest["leaves"]["params/w"]
    json.dump(manifest, open(path, "w"))
    assert_fell_back(ck, capsys, ck.restore(target()), "no manifest entry for params/w")
    ck.close()


def test_every_file_truncated_falls_back(tmp_path, capsys):
    """tests/test_train.py's truncation, through Checkpointer: the manifest is truncated too."""
    ck = saved(tmp_path)
    for root, _, files in os.walk(os.path.join(ck.directory, "20")):
        for f in files:
            open(os.path.join(root, f), "w").close()
    assert_fell_back(ck, capsys, ck.restore(target()), "unreadable: ")
    ck.close()


def test_requested_truncated_step_is_raised_in_test_train_wording(tmp_path, capsys):
    """Asked for by number, tests/test_train.py's truncated step 20 still raises what that test expected (for the
    latest it now falls back instead, see above)."""
    ck = saved(tmp_path)
    for root, _, files in os.walk(os.path.join(ck.directory, "20")):
        for f in files:
            open(os.path.join(root, f), "w").close()
    with pytest.raises(
        ckpt_lib.CheckpointError, match=r"step 20 .* unreadable.*Earlier checkpoints are kept: \[10\]"
    ) as err:
        ck.restore(target(), step=20)
    one_line(str(err.value), ck.directory)
    assert ck.steps() == [10] and sorted(os.listdir(ck.directory)) == ["10", "corrupt-20"]
    assert capsys.readouterr().out == ""
    ck.close()


def test_checkpoint_without_manifest_restores_as_before(tmp_path, capsys):
    ck = saved(tmp_path)
    os.remove(os.path.join(ck.directory, "20", "jaxnorm_manifest.json"))
    restored = ck.restore(target())
    assert int(restored["step"]) == 20 and np.array_equal(restored["params"]["w"], state(20)["params"]["w"])
    assert capsys.readouterr().out == "" and ck.steps() == [10, 20]
    ck.close()


def test_requested_corrupt_step_is_moved_aside_and_raised(tmp_path, capsys):
    ck = saved(tmp_path, steps=(10, 20, 30))
    flip(data_files(ck, 20)[-1])
    with pytest.raises(
        ckpt_lib.CheckpointError,
        match=r"step 20 .* is corrupt \(.*\); moved to corrupt-20\. "
        r"Remaining checkpoints are kept: \[10, 30\]",
    ) as err:
        ck.restore(target(), step=20)
    one_line(str(err.value), ck.directory)
    assert sorted(os.listdir(ck.directory)) == ["10", "30", "corrupt-20"] and ck.steps() == [10, 30]
    assert capsys.readouterr().out == ""
    assert int(ck.restore(target(), step=10)["step"]) == 10
    ck.save(20, state(20))  # below the latest (30): still written
    assert ck.steps() == [10, 20, 30] and int(ck.restore(target(), step=20)["step"]) == 20
    # a second corruption of the same step gets a name of its own
    flip(data_files(ck, 20)[-1])
    with pytest.raises(ckpt_lib.CheckpointError, match=r"moved to corrupt-20-2\. Remaining checkpoints"):
        ck.restore(target(), step=20)
    assert sorted(os.listdir(ck.directory)) == ["10", "30", "corrupt-20", "corrupt-20-2"]
    ck.close()


def test_no_good_checkpoint_left_is_one_line(tmp_path, capsys):
    ck = saved(tmp_path, steps=(10,))
    os.remove(data_files(ck, 10)[-1])
    with pytest.raises(
        ckpt_lib.CheckpointError,
        match=r"no good checkpoint remains in .*: steps \[10\] are "
        r"corrupt \(moved aside to corrupt-<step>\); pass "
        r"--config.resume=False",
    ) as err:
        ck.restore(target())
    one_line(str(err.value), ck.directory)
    out = capsys.readouterr().out.strip()
    one_line(out, ck.directory)
    assert out.startswith("checkpoint step 10 in") and "moved to" in out
    assert ck.steps() == [] and os.listdir(ck.directory) == ["corrupt-10"]
    ck.close()


def test_a_different_tree_is_an_error_and_the_checkpoint_stays(tmp_path):
    ck = saved(tmp_path)
    other = {"params": {"w": np.zeros((2, 3)), "b": np.zeros(3)}, "step": np.int32(0)}
    with pytest.raises(
        ckpt_lib.CheckpointError,
        match=r"step 20 .* different tree .*only in the state: "
        r"\['params/b'\].*left in place",
    ) as err:
        ck.restore(other)
    one_line(str(err.value), ck.directory)
    assert ck.steps() == [10, 20] and sorted(os.listdir(ck.directory)) == ["10", "20"]
    os.remove(os.path.join(ck.directory, "20", "jaxnorm_manifest.json"))  # told by orbax's metadata instead
    with pytest.raises(ckpt_lib.CheckpointError, match=r"different tree .*\['params/b'\].*left in place"):
        ck.restore(other)
    assert ck.steps() == [10, 20]
    ck.close()


def test_other_processes_skip_a_corrupt_step_but_never_move_it(tmp_path, capsys):
    ck = saved(tmp_path)
    ck._writer = False  # as on process 1 of a multi-process run: only process 0 writes
    flip(data_files(ck, 20)[-1])
    assert int(ck.restore(target())["step"]) == 10
    out = capsys.readouterr().out.strip()
    one_line(out, ck.directory)
    assert "left for process 0 to move aside; resuming from step 10" in out
    assert sorted(os.listdir(ck.directory)) == ["10", "20"] and ck.steps() == [10]
    ck.close()


@pytest.mark.parametrize("where", ["orbax", "manifest"])
def test_disk_full_is_one_line_and_removes_the_partial_step(tmp_path, monkeypatch, where):
    ck = saved(tmp_path, steps=(10,))
    big = {"params": {"w": np.zeros((999, 1000))}, "step": np.int32(20)}  # 7.99 MB
    if where == "orbax":

        def full(step, args, **kw):  # how TensorStore reports ENOSPC, after a part of the step is written
            partial = os.path.join(ck.directory, f"{step}.orbax-checkpoint-tmp")
            os.makedirs(os.path.join(partial, "default.orbax-checkpoint-tmp"))
            open(os.path.join(partial, "_CHECKPOINT_METADATA"), "w").close()
            raise ValueError(
                'RESOURCE_EXHAUSTED: Error writing "params.w/0" in OCDBT database at local file "'
                f'{partial}": Failed to write 261949 bytes to file 14: No space left on device '
                "[os_error_code='28']\n" + "tensorstore detail\n" * 50
            )

        monkeypatch.setattr(ck.manager, "save", full)
    else:
        real_open = open

        def full_open(path, *a, **kw):
            if str(path).endswith("jaxnorm_manifest.json.tmp"):
                raise OSError(errno.ENOSPC, "No space left on device", path)
            return real_open(path, *a, **kw)

        monkeypatch.setattr("builtins.open", full_open)
    with pytest.raises(
        ckpt_lib.CheckpointError,
        match=r"^disk full while writing checkpoint step 20 to .*: No space "
        r"left on device .*free at least ~8 MB",
    ) as err:
        ck.save(20, big)
    monkeypatch.undo()
    one_line(str(err.value), ck.directory)
    assert os.listdir(ck.directory) == ["10"] and ck.steps() == [10]
    ck.save(20, state(20))  # once there is room
    assert ck.steps() == [10, 20]
    ck.close()


def test_save_config_is_atomic_and_fsynced(tmp_path, monkeypatch):
    wd = str(tmp_path / "wd")
    ckpt_lib.save_config(wd, load_config(num_steps=20))
    synced = []
    real_fsync = os.fsync
    monkeypatch.setattr(os, "fsync", lambda fd: (synced.append(fd), real_fsync(fd)))
    monkeypatch.setattr(os, "replace", lambda *a: (_ for _ in ()).throw(OSError(errno.EIO, "I/O error")))
    with pytest.raises(OSError):
        ckpt_lib.save_config(wd, load_config(num_steps=30))
    monkeypatch.undo()
    assert synced  # the file was fsync'ed before the rename
    assert os.listdir(wd) == ["config.json"]  # no tmp file left behind
    assert json.load(open(os.path.join(wd, "config.json")))["num_steps"] == 20  # the old one, whole
    ckpt_lib.save_config(wd, load_config(num_steps=30))
    assert json.load(open(os.path.join(wd, "config.json")))["num_steps"] == 30


def test_training_resumes_from_the_earlier_checkpoint_after_a_flipped_byte(tmp_path, capsys):
    wd = str(tmp_path / "wd")
    cfg = dict(num_steps=20, checkpoint_every=10, log_every=5, eval_every=20, progress=False)
    loop.train_and_evaluate(load_config(**cfg), wd)
    d = os.path.join(wd, "checkpoints")
    assert sorted(os.listdir(d)) == ["10", "20"]
    assert all(os.path.exists(os.path.join(d, s, "jaxnorm_manifest.json")) for s in ("10", "20"))
    files = [
        os.path.join(r, f) for r, _, fs in os.walk(os.path.join(d, "20")) for f in fs if os.path.basename(r) == "d"
    ]
    flip(max(files, key=os.path.getsize))
    capsys.readouterr()
    result = loop.train_and_evaluate(load_config(**cfg), wd)
    out = capsys.readouterr().out
    lines = [line for line in out.splitlines() if "corrupt" in line]
    assert len(lines) == 1, out
    one_line(lines[0], d)
    assert re.fullmatch(
        rf"checkpoint step 20 in {re.escape(d)} is corrupt \(.+\); moved to {re.escape(d)}/corrupt-20; "
        r"resuming from step 10",
        lines[0],
    ), lines[0]
    assert f"resumed from step 10 in {d}" in out
    assert sorted(os.listdir(d)) == ["10", "20", "corrupt-20"]  # step 20 trained and saved again
    assert os.path.exists(os.path.join(d, "20", "jaxnorm_manifest.json"))
    assert 0.0 <= result["accuracy"] <= 1.0
    # the real state's tree (optax's empty states included) against orbax's metadata: a file missing from a
    # checkpoint without manifest is corruption, not a different tree
    os.remove(os.path.join(d, "20", "jaxnorm_manifest.json"))
    os.remove(
        max(
            (
                os.path.join(r, f)
                for r, _, fs in os.walk(os.path.join(d, "20"))
                for f in fs
                if os.path.basename(r) == "d"
            ),
            key=os.path.getsize,
        )
    )
    _, restored = loop.restore(wd)
    out = capsys.readouterr().out.strip()
    one_line(out, d)
    assert out.startswith(f"checkpoint step 20 in {d} is corrupt (data unreadable: ")
    assert out.endswith(f"moved to {d}/corrupt-20-2; resuming from step 10") and int(restored.step) == 10

"""Sharded checkpoints (``shard_params``): the state's shards written as they lie on 4 fake devices, a manifest part
per process with every shard's sha256, restores into host arrays and into other shardings (other device counts)
verified shard by shard, a corrupt shard or a missing part caught; a sharded run resumes sharded and replicated."""

import json
import os
import re
import shutil

import jax
import numpy as np
import pytest
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P
from test_checkpoint_integrity import data_files, flip, one_line
from test_train import load_config

from jaxnorm.lab.train import checkpoint as ckpt_lib
from jaxnorm.lab.train import loop
from jaxnorm.lab.train.metrics import read_metrics


def mesh(n):
    return jax.make_mesh((n,), ("batch",), devices=jax.devices()[:n])


def values(k):
    rng = np.random.default_rng(k)
    return {
        "params": {
            "w": rng.standard_normal((16, 8)).astype(np.float32),
            "b": rng.standard_normal(3).astype(np.float32),
        },
        "step": np.asarray(k, np.int32),
    }


def placed(k, n=4, spec=P("batch")):
    """``values(k)`` on ``n`` devices: ``w`` sharded by ``spec``, the rest replicated."""
    v = values(k)
    m = mesh(n)
    return {
        "params": {
            "w": jax.device_put(v["params"]["w"], NamedSharding(m, spec)),
            "b": jax.device_put(v["params"]["b"], NamedSharding(m, P())),
        },
        "step": jax.device_put(v["step"], NamedSharding(m, P())),
    }


def abstract(n, spec):
    v = values(0)
    m = mesh(n)
    sds = lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=NamedSharding(m, s))  # noqa: E731
    return {"params": {"w": sds(v["params"]["w"], spec), "b": sds(v["params"]["b"], P())}, "step": sds(v["step"], P())}


def host_target():
    return jax.tree.map(np.zeros_like, values(0))


def saved(tmp_path, steps=(10, 20)):
    ck = ckpt_lib.Checkpointer(str(tmp_path / "wd"), 3, sharded=True)
    for s in steps:
        ck.save(s, placed(s))
    return ck


def assert_values(restored, k):
    for (path, got), (_, want) in zip(ckpt_lib._leaves(restored), ckpt_lib._leaves(values(k))):
        np.testing.assert_array_equal(np.asarray(got), want, err_msg=path)


def test_shards_are_written_as_they_lie_with_a_manifest_part_hashing_each(tmp_path):
    ck = saved(tmp_path)
    step_dir = os.path.join(ck.directory, "20")
    assert "jaxnorm_manifest.0-of-1.json" in os.listdir(step_dir)
    assert "jaxnorm_manifest.json" not in os.listdir(step_dir)  # no whole-state copy was hashed on one host
    part = json.load(open(os.path.join(step_dir, "jaxnorm_manifest.0-of-1.json")))
    assert part["version"] == 2 and part["process"] == 0 and part["processes"] == 1
    w = values(20)["params"]["w"]
    shards = part["leaves"]["params/w"]["shards"]
    assert [s["index"] for s in shards] == [[[4 * i, 4 * i + 4], [0, 8]] for i in range(4)]  # one per device
    assert [s["sha256"] for s in shards] == [ckpt_lib._digest(w[4 * i : 4 * i + 4]) for i in range(4)]
    assert len(part["leaves"]["params/b"]["shards"]) == 1  # a replicated leaf: its replica 0 only
    # orbax recorded the sharding it was written with
    sharding = json.load(open(os.path.join(step_dir, "default", "_sharding")))
    assert any("batch" in json.dumps(v) for v in sharding.values())
    ck.close()


@pytest.mark.parametrize("n, spec", [(4, P("batch")), (2, P("batch")), (4, P(None, "batch")), (1, P())])
def test_restores_into_other_shardings_and_device_counts_verified(tmp_path, capsys, n, spec):
    ck = saved(tmp_path)
    restored = ck.restore(abstract(n, spec))
    assert capsys.readouterr().out == ""
    assert restored["params"]["w"].sharding == NamedSharding(mesh(n), spec)
    assert_values(restored, 20)
    ck.close()


def test_restores_replicated_into_host_arrays(tmp_path):
    ck = saved(tmp_path)
    restored = ck.restore(host_target())
    assert isinstance(restored["params"]["w"], np.ndarray)
    assert_values(restored, 20)
    assert_values(ck.restore(host_target(), step=10), 10)
    ck.close()
    # and through an unsharded Checkpointer (analysis after training, loop.restore)
    plain = ckpt_lib.Checkpointer(str(tmp_path / "wd"), 3)
    assert_values(plain.restore(host_target()), 20)
    plain.close()


def _tamper_part(ck, step, leaf, shard):
    path = os.path.join(ck.directory, str(step), "jaxnorm_manifest.0-of-1.json")
    part = json.load(open(path))
    part["leaves"][leaf]["shards"][shard]["sha256"] = "0" * 64
    json.dump(part, open(path, "w"))


@pytest.mark.parametrize("into", ["sharded", "host"])
def test_a_shard_whose_hash_differs_falls_back_to_the_earlier_step(tmp_path, capsys, into):
    ck = saved(tmp_path)
    _tamper_part(ck, 20, "params/w", 2)
    restored = ck.restore(abstract(4, P("batch")) if into == "sharded" else host_target())
    out = capsys.readouterr().out.strip()
    one_line(out, ck.directory)
    assert re.fullmatch(
        rf"checkpoint step 20 in {re.escape(ck.directory)} is corrupt \(checksum mismatch in "
        rf"params/w\); moved to {re.escape(ck.directory)}/corrupt-20; resuming from step 10",
        out,
    ), out
    assert_values(restored, 10)
    assert ck.steps() == [10]
    ck.save(20, placed(20))  # the step can be written again
    assert_values(ck.restore(host_target()), 20)
    ck.close()


def test_a_flipped_data_byte_in_a_sharded_step_falls_back(tmp_path, capsys):
    ck = saved(tmp_path)
    flip(data_files(ck, 20)[-1])
    restored = ck.restore(abstract(2, P("batch")))
    out = capsys.readouterr().out.strip()
    one_line(out, ck.directory)
    assert "checkpoint step 20" in out and "is corrupt (" in out and out.endswith("resuming from step 10"), out
    assert_values(restored, 10)
    ck.close()


def test_a_missing_manifest_part_is_a_save_cut_short(tmp_path, capsys):
    ck = saved(tmp_path)
    d = os.path.join(ck.directory, "20")
    part = json.load(open(os.path.join(d, "jaxnorm_manifest.0-of-1.json")))
    part["processes"] = 2  # as if written by 2 processes, the second of which died before its part
    json.dump(part, open(os.path.join(d, "jaxnorm_manifest.0-of-2.json"), "w"))
    os.remove(os.path.join(d, "jaxnorm_manifest.0-of-1.json"))
    restored = ck.restore(host_target())
    out = capsys.readouterr().out.strip()
    assert (
        "is corrupt (manifest unreadable: ValueError: manifest part of process(es) [1] of 2 missing (a save cut "
        "short)); moved to" in out
    ), out
    assert_values(restored, 10)
    ck.close()


def test_a_process_checks_the_shards_it_holds_and_leaves_the_others_to_theirs(tmp_path, monkeypatch):
    """What one of several processes does: it holds devices 0-1 of 4, so it checks shards 0-1 and not 2-3."""
    ck = saved(tmp_path)
    entries = ck._read_manifest(20)
    restored = ck.manager.restore(20, args=ckpt_lib.ocp.args.StandardRestore(abstract(4, P("batch"))))
    every = ckpt_lib._held_pieces
    monkeypatch.setattr(
        ckpt_lib,
        "_held_pieces",
        lambda leaf: (
            every(leaf)[:1]
            if leaf.ndim == 0
            else [(ckpt_lib._region(s.index, leaf.shape), np.asarray(s.data)) for s in leaf.addressable_shards[:2]]
        ),
    )

    def bad(shard):
        shards = [(r, "0" * 64 if i == shard else h) for i, (r, h) in enumerate(entries["params/w"]["shards"])]
        return {**entries, "params/w": {**entries["params/w"], "shards": shards}}

    ck._verify(restored, bad(3))  # shard 3 is on another process's devices
    with pytest.raises(ckpt_lib._Bad, match="checksum mismatch in params/w"):
        ck._verify(restored, bad(1))
    ck.close()


def test_assemble_a_region_from_pieces_or_none_when_another_process_holds_part_of_it():
    a = np.arange(64.0).reshape(8, 8)
    quarters = [(((r, r + 4), (c, c + 4)), a[r : r + 4, c : c + 4]) for r in (0, 4) for c in (0, 4)]
    np.testing.assert_array_equal(ckpt_lib._assemble(((2, 6), (0, 8)), quarters), a[2:6])  # across four pieces
    np.testing.assert_array_equal(ckpt_lib._assemble(((4, 8), (4, 6)), quarters), a[4:, 4:6])  # inside one
    assert ckpt_lib._assemble(((0, 8), (0, 8)), quarters[:3]) is None


def _train(wd, **kw):
    loop.train_and_evaluate(load_config(log_every=1, checkpoint_every=5, schedule_steps=15, **kw), str(wd))
    return [r["loss"] for r in read_metrics(str(wd)) if r["split"] == "train"]


def test_a_sharded_run_resumes_sharded_and_a_replicated_one_resumes_sharded(tmp_path):
    fsdp = dict(parallel="global", shard_params=True, shard_params_min_size=16)
    _train(tmp_path / "ref", parallel="none", num_steps=10)
    _train(tmp_path / "fsdp", num_steps=10, **fsdp)
    part = json.load(open(tmp_path / "fsdp" / "checkpoints" / "10" / "jaxnorm_manifest.0-of-1.json"))
    assert max(len(v["shards"]) for v in part["leaves"].values()) == 4  # the large leaves written as 4 shards
    shutil.copytree(tmp_path / "ref", tmp_path / "ref15")
    ref15 = _train(tmp_path / "ref15", parallel="none", num_steps=15)
    for name, source in (("sharded", "fsdp"), ("replicated", "ref")):
        shutil.copytree(tmp_path / source, tmp_path / name)
        got = _train(tmp_path / name, num_steps=15, **fsdp)
        assert [r["step"] for r in read_metrics(str(tmp_path / name)) if r["split"] == "train"] == list(range(1, 16))
        np.testing.assert_allclose(got, ref15, rtol=1e-5)

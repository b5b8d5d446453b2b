"""Experiment sweeps:
``python -m jaxnorm.lab.sweep experiments/<exp>.py --workdir runs/<exp> [--seeds N] [--config.k=v]``.

An experiment file is a training config (``get_config()``, runnable alone with ``train.py``) that also declares its
grid: ``get_sweep(config) -> [overrides, ...]``, one dict of (dotted) config keys per grid point, computed from the
size-resolved base config (so a grid can derive, e.g., the number of steps from the batch size). ``SEEDS`` in the file
is the default seed count. Every grid point runs once per seed ``F + k·S`` for ``k = 0 … seeds−1`` (``--first-seed F``,
default 0: confirmatory runs take seeds no pilot has seen; ``--seed-stride S``, default 1; 8 makes the runs' random
streams disjoint, see :mod:`jaxnorm.lab.rng`) in ``WORKDIR/<point>/seed<s>``, in this
process, one after another, or in ``--jobs N`` worker processes side by side; a run whose ``result.json`` records its
current config is skipped, an interrupted one resumes from its checkpoint. Then:

- ``WORKDIR/summary.csv``: one row per run (the grid keys, seed, status, final test/train metrics, gap, wall time);
- ``WORKDIR/summary.json``: the rows, and per grid point the mean, std (ddof=1) and count over the seeds that
  finished, with the command, the size and the commits of the code that trained the runs (``+dirty``: with
  uncommitted changes);
- ``WORKDIR/plots/``: :func:`jaxnorm.lab.plots.make_plots` over the first seed (``first_seed``) of every grid point.

A run that diverges (non-finite loss) is a result, not a failure: its status is ``diverged`` and it is left out of
the means. A run that cannot start (bad config, a workdir of another run) is ``failed`` and makes the exit status 1.
"""

from __future__ import annotations

import argparse
import ast
import concurrent.futures
import csv
import importlib.util
import json
import math
import multiprocessing
import os
import subprocess
import sys
import time
from typing import Any

import numpy as np

from jaxnorm.lab import rng as rng_lib

DEFAULT_SEEDS = 3
RESULT_FILE = "result.json"
SUMMARY_KEYS = ("test_accuracy", "test_error", "test_loss", "train_accuracy", "train_loss", "gap", "wall_s")


def load_experiment(path: str):
    """The experiment module at ``path`` (needs ``get_config`` and ``get_sweep``)."""
    if not os.path.exists(path):
        raise FileNotFoundError(f"{path}: no such experiment file (see experiments/, one file per paper)")
    name = "jaxnorm_experiment_" + os.path.splitext(os.path.basename(path))[0]
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    missing = [f for f in ("get_config", "get_sweep") if not hasattr(module, f)]
    if missing:
        raise ValueError(
            f"{path} defines no {' or '.join(missing)}: a sweep file needs get_config() (the base run) "
            "and get_sweep(config) -> list of override dicts (the grid)"
        )
    return module


def parse_overrides(args: list[str]) -> dict[str, Any]:
    """``['--config.norm=group', '--config.num_steps=10']`` → ``{'norm': 'group', 'num_steps': 10}`` (values parsed
    as Python literals, else kept as strings)."""
    out = {}
    for arg in args:
        if not arg.startswith("--config.") or "=" not in arg:
            raise ValueError(f"unexpected argument {arg!r}: overrides are --config.KEY=VALUE")
        key, value = arg[len("--config.") :].split("=", 1)
        try:
            out[key] = ast.literal_eval(value)
        except (ValueError, SyntaxError):
            out[key] = value
    return out


def _apply(config, overrides: dict):
    from jaxnorm.lab.train import config as config_lib

    flat = {}
    for key, value in overrides.items():
        flat[key] = tuple(value) if isinstance(value, list) else value
    try:
        config.update_from_flattened_dict(flat)
    except (KeyError, AttributeError) as e:
        base = config_lib.base_config()
        raise ValueError(f"unknown config key in {sorted(flat)} ({e}); valid keys: {sorted(base.keys())}") from None
    return config


def point_name(overrides: dict, varying: list[str]) -> str:
    """A directory name from the keys that vary over the grid: ``norm-batch_batch_size-32``."""
    if "name" in overrides:
        return str(overrides["name"])
    parts = [f"{k.split('.')[-1]}-{_fmt(overrides[k])}" for k in varying if k in overrides]
    return "_".join(parts) or "base"


def _fmt(v) -> str:
    if isinstance(v, float):
        return f"{v:g}"
    if isinstance(v, (tuple, list)):
        return "x".join(_fmt(x) for x in v)
    return str(v)


def plan(path: str, seeds: int | None = None, overrides: dict | None = None):
    """``(base_config, points, seeds)``: the size-resolved base config and the grid, each point a dict with its
    ``name``, ``overrides`` and ``explicit`` keys. Checks every point's config before anything runs."""
    from jaxnorm.lab.models import fields as fields_lib
    from jaxnorm.lab.train import config as config_lib

    module = load_experiment(path)
    overrides = dict(overrides or {})
    seeds = seeds if seeds is not None else getattr(module, "SEEDS", DEFAULT_SEEDS)
    if not isinstance(seeds, int) or seeds < 1:
        raise ValueError(f"--seeds must be a positive int, got {seeds!r}")
    if "seed" in overrides:
        raise ValueError(
            "--config.seed is set by the sweep (seeds F + k·S); use --seeds N, --first-seed F, --seed-stride S"
        )
    base = _apply(module.get_config(), overrides)
    config_lib.validate(base)
    base = config_lib.resolve_size(base, overrides)
    grid = [dict(g) for g in module.get_sweep(base)]
    if not grid:
        raise ValueError(f"{path}: get_sweep returned no grid points")
    keys = sorted({k for g in grid for k in g if k != "name"})
    varying = [k for k in keys if len({_fmt(g.get(k)) for g in grid}) > 1]
    points, names = [], set()
    for g in grid:
        name = point_name(g, varying)
        if name in names:
            raise ValueError(f"{path}: two grid points are both named {name!r}; give them distinct 'name' keys")
        names.add(name)
        over = {k: v for k, v in g.items() if k != "name"}
        clash = sorted(set(over) & set(overrides))
        if clash:
            raise ValueError(f"--config.{clash[0]} is a grid key of {path}; the grid sets it per point")
        cfg = _apply(config_lib.resolve_size(base, overrides), over)
        config_lib.validate(cfg)
        # the model's fields too: a misspelt --config.model_kwargs.FIELD fails here, not in every run
        fields_lib.check_model_kwargs(cfg.model, cfg.model_kwargs.to_dict())
        points.append(
            {"name": name, "overrides": over, "explicit": sorted(set(over) | set(overrides) | {"seed"}), "config": cfg}
        )
    return base, points, seeds


def _status(workdir: str, config) -> dict | None:
    """The recorded result of a finished (or diverged) run with this config, or None."""
    from jaxnorm.lab.train import config as config_lib

    result = _read_result(os.path.join(workdir, RESULT_FILE))
    if result is None:
        return None
    # both sides through result_affecting: a result recorded under earlier key names still matches
    same = config_lib.result_affecting(result.get("config") or {}) == json.loads(
        json.dumps(config_lib.result_affecting(config))
    )
    return result if same and result.get("num_steps") == config.num_steps else None


def _read_result(path: str) -> dict | None:
    """The result a run recorded in ``path``, or None when there is none. A file that is not a JSON result object
    (torn: a machine crash before it reached the disk, an interrupted copy; or edited) is no result either, with a
    warning naming it: the run resumes from its last checkpoint (a finished run is only evaluated again) and writes
    the file anew; its wall time and commit are then the rerun's."""
    try:
        with open(path, "rb") as f:
            result = json.load(f)
    except FileNotFoundError:
        return None
    except ValueError as e:  # JSONDecodeError, UnicodeDecodeError
        problem = f"not valid JSON: {e}"
    else:
        if (
            isinstance(result, dict)
            and isinstance(result.get("status"), str)
            and isinstance(result.get("config") or {}, dict)
        ):
            return result
        problem = "not a result object"
    print(
        f"warning: {path} is {problem}; treating the run as not finished (it resumes from its checkpoint and "
        "writes the file again)",
        file=sys.stderr,
    )
    return None


def _write_json(path: str, obj) -> None:
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
        json.dump(obj, f, indent=1, sort_keys=True, default=_jsonable)
    os.replace(tmp, path)


def _jsonable(v):
    if isinstance(v, (np.floating, np.integer)):
        return v.item()
    if isinstance(v, (tuple, np.ndarray)):
        return list(v)
    raise TypeError(f"not JSON serializable: {type(v).__name__}")


def _finished(config, workdir: str, explicit) -> dict | None:
    """The recorded result of the run in ``workdir`` (marked ``skipped``) when it finished with this config, else
    None (it is still to train)."""
    from jaxnorm.lab.train import config as config_lib

    done = _status(workdir, config_lib.resolve_size(config, explicit))
    return None if done is None else {**done, "skipped": True}


def run_one(config, workdir: str, explicit, commit: str = "unknown") -> dict:
    """Train one run (skipping it when finished); returns its result: status finished | diverged | failed, and the
    ``commit`` of the code that trained it (kept from the first time for a skipped run)."""
    from jaxnorm.lab.train import config as config_lib
    from jaxnorm.lab.train import loop

    done = _finished(config, workdir, explicit)
    if done is not None:
        return done
    resolved = config_lib.resolve_size(config, explicit)
    t0 = time.perf_counter()
    result = {
        "config": json.loads(json.dumps(config_lib.result_affecting(resolved))),
        "num_steps": resolved.num_steps,
        "commit": commit,
    }
    try:
        final = loop.train_and_evaluate(config, workdir, explicit)
        result.update(status="finished", final=final)
    except loop.NonFiniteLossError as e:
        result.update(status="diverged", message=str(e), final={})
    except (ValueError, KeyError, RuntimeError) as e:  # incl. CheckpointError: never written into the run
        return {**result, "status": "failed", "message": f"{type(e).__name__}: {e}", "final": {}, "skipped": False}
    result["wall_s"] = time.perf_counter() - t0
    result["cpus"] = len(_cores())  # the numbers depend on it (XLA partitions its work by the cores it has)
    _write_json(os.path.join(workdir, RESULT_FILE), result)
    return {**result, "skipped": False}


def summarize_run(workdir: str, result: dict) -> dict:
    """The final metrics of a run from its ``metrics.jsonl``: test accuracy/error/loss (last eval), the validation
    and deterministic-train metrics of that eval when the run measured them (``val_*``, ``train_eval_*``, and their
    ``population_`` versions, under their own names), the last logged train loss/accuracy (training mode, averaged
    over the last log window), and the generalization gap.

    ``gap`` is ``train_eval_accuracy − test_accuracy`` when the run evaluated the deterministic network on the
    training split (``eval_train``): both sides then measure the same network the same way. Otherwise it is the
    earlier ``train_accuracy − test_accuracy``, which is then also ``gap_minibatch`` when both exist; under dropout
    its train side is the thinned network's, lower, so it understates the gap of dropout runs."""
    from jaxnorm.lab.train.metrics import read_metrics

    row: dict[str, Any] = {"status": result["status"], "wall_s": result.get("wall_s", float("nan"))}
    if result["status"] != "finished":
        row["message"] = result.get("message", "")
        return row
    rows = read_metrics(workdir)
    evals = [r for r in rows if r.get("split") == "eval"]
    trains = [r for r in rows if r.get("split") == "train"]
    last_eval, last_train = (evals[-1] if evals else {}), (trains[-1] if trains else {})
    for k, v in last_eval.items():
        if k not in ("step", "split") and isinstance(v, (int, float)):
            # a key that names its split (val_*, train_eval_*, also after population_) keeps its name; the others
            # are the test split's
            names_split = k.removeprefix("population_").startswith(("val_", "train_eval_"))
            row[k if names_split else f"test_{k}"] = v
    if "test_accuracy" in row:
        row["test_error"] = 1.0 - row["test_accuracy"]
    for k in ("loss", "accuracy"):
        if k in last_train:
            row[f"train_{k}"] = last_train[k]
    if "test_accuracy" in row:
        if "train_eval_accuracy" in row:
            row["gap"] = row["train_eval_accuracy"] - row["test_accuracy"]
            if "train_accuracy" in row:
                row["gap_minibatch"] = row["train_accuracy"] - row["test_accuracy"]
        elif "train_accuracy" in row:
            row["gap"] = row["train_accuracy"] - row["test_accuracy"]
    return row


def aggregate(rows: list[dict]) -> list[dict]:
    """Per grid point: mean, std (ddof=1; 0 for one seed) and n over its finished seeds of every numeric metric."""
    groups: dict[str, list[dict]] = {}
    for r in rows:
        groups.setdefault(r["point"], []).append(r)
    out = []
    for point, members in groups.items():
        ok = [m for m in members if m["status"] == "finished"]
        metrics = {}
        keys = sorted({k for m in ok for k, v in m.items() if isinstance(v, (int, float)) and k != "seed"})
        for k in keys:
            vals = np.array([m[k] for m in ok if isinstance(m.get(k), (int, float))], float)
            if len(vals):
                metrics[k] = {
                    "mean": float(vals.mean()),
                    "std": float(vals.std(ddof=1)) if len(vals) > 1 else 0.0,
                    "n": len(vals),
                }
        out.append(
            {
                "point": point,
                "overrides": members[0]["overrides"],
                "seeds": len(members),
                "finished": len(ok),
                "diverged": sum(m["status"] == "diverged" for m in members),
                "failed": sum(m["status"] == "failed" for m in members),
                "metrics": metrics,
            }
        )
    return out


CODE_PATHS = (
    "jaxnorm",
    "configs",
    "experiments",
    "train.py",
    "pyproject.toml",
)  # what a run executes (not tests, docs)


def git_commit() -> str:
    """The commit of the code that ran (``+dirty`` when ``CODE_PATHS`` have uncommitted changes), or 'unknown'."""
    root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    try:
        commit = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], cwd=root, capture_output=True, text=True, timeout=10, check=True
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--", *CODE_PATHS], cwd=root, capture_output=True, text=True, timeout=10
        ).stdout.strip()
        return commit + ("+dirty" if dirty else "")
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def write_summary(workdir: str, rows: list[dict], meta: dict) -> dict:
    summary = {**meta, "runs": rows, "points": aggregate(rows)}
    _write_json(os.path.join(workdir, "summary.json"), summary)
    grid_keys = sorted({k for r in rows for k in r["overrides"]})
    fields = ["point", *grid_keys, "seed", "status", *SUMMARY_KEYS, "workdir", "message"]
    extra = sorted({k for r in rows for k in r if k not in fields and k not in ("overrides", "skipped")})
    tmp = os.path.join(workdir, "summary.csv.tmp")
    with open(tmp, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=fields + extra, extrasaction="ignore")
        w.writeheader()
        for r in rows:
            w.writerow(
                {
                    **{k: _fmt(v) for k, v in r["overrides"].items()},
                    **{k: (f"{v:.6g}" if isinstance(v, float) else v) for k, v in r.items() if k != "overrides"},
                }
            )
    os.replace(tmp, os.path.join(workdir, "summary.csv"))
    return summary


def run_sweep(
    path: str,
    workdir: str,
    seeds: int | None = None,
    overrides: dict | None = None,
    plots: bool = True,
    log=print,
    *,
    first_seed: int = 0,
    seed_stride: int = 1,
    jobs: int = 1,
) -> dict:
    """Run (or finish) every run of the experiment at ``path`` into ``workdir``, seeds ``first_seed + k·seed_stride``
    for ``k < seeds``; returns the summary dict.

    ``jobs > 1`` trains that many runs at once, each in its own worker process (spawned: one JAX runtime each),
    the CPU cores split evenly between the workers (each pinned to its share). Small runs use several cores poorly:
    on 2 cores a Ba et al. run takes 195 steps/s alone and 143 on one core, so two at once train 1.47× as fast. XLA
    partitions its work by the cores it has, so a run's numbers depend on its core count (``cpus`` in its
    ``result.json``): bit-identical between any two runs given the same count, within float32 rounding otherwise."""
    for flag, v, lo in (("--first-seed", first_seed, 0), ("--seed-stride", seed_stride, 1), ("--jobs", jobs, 1)):
        if isinstance(v, bool) or not isinstance(v, int) or not lo <= v < 2**30:
            raise ValueError(f"{flag} must be an int in [{lo}, 2**30), got {v!r}")
    if jobs > len(_cores()):
        raise ValueError(
            f"--jobs {jobs} needs as many CPU cores, this process may use {len(_cores())}: give --jobs "
            f"{len(_cores())} or less"
        )
    base, points, seeds = plan(path, seeds, overrides)
    seed_list = [first_seed + k * seed_stride for k in range(seeds)]
    if seed_list[-1] + max(rng_lib.STREAM_IDS.values()) >= 2**31:
        raise ValueError(
            f"the last seed {seed_list[-1]} (first {first_seed} + {seeds - 1} × stride {seed_stride}) leaves the int32 "
            "range of the random streams; lower --first-seed or --seed-stride"
        )
    overrides = dict(overrides or {})
    overrides.setdefault("progress", False)
    os.makedirs(workdir, exist_ok=True)
    commit = git_commit()  # the code that runs (read before, so later edits do not relabel the results)
    runs = [
        (point, seed, _apply(point["config"].copy_and_resolve_references(), {"seed": seed, "progress": False}))
        for point in points
        for seed in seed_list
    ]
    total = len(runs)
    slots: list[dict | None] = [None] * total
    t_start = time.perf_counter()

    def record(i: int, result: dict) -> None:
        point, seed, _ = runs[i]
        run_dir = os.path.join(workdir, point["name"], f"seed{seed}")
        row = {
            "point": point["name"],
            "overrides": point["overrides"],
            "seed": seed,
            "workdir": run_dir,
            "skipped": result["skipped"],
            "commit": result.get("commit", "unknown"),
            **summarize_run(run_dir, result),
        }
        slots[i] = row
        n = sum(r is not None for r in slots)
        what = "finished before" if result["skipped"] else result["status"]
        acc = f"  test accuracy {row['test_accuracy']:.4f}" if "test_accuracy" in row else ""
        msg = f"  {row.get('message', '')[:160]}" if result["status"] != "finished" else ""
        log(f"[{n}/{total}] {point['name']} seed {seed}: {what}{acc}  ({row['wall_s']:.1f} s){msg}")

    def run_dir_of(i: int) -> str:
        return os.path.join(workdir, runs[i][0]["name"], f"seed{runs[i][1]}")

    todo = []
    for i, (point, _, cfg) in enumerate(runs):
        done = _finished(cfg, run_dir_of(i), point["explicit"]) if jobs > 1 else None
        if done is not None:
            record(i, done)  # nothing to train: no worker for it
        else:
            todo.append(i)
    if jobs == 1:
        for i in todo:
            record(i, run_one(runs[i][2], run_dir_of(i), runs[i][0]["explicit"], commit))
    elif todo:
        _run_in_workers(
            [(runs[i][2], run_dir_of(i), runs[i][0]["explicit"], commit) for i in todo],
            min(jobs, len(todo)),
            lambda k, result: record(todo[k], result),
        )
    rows = [r for r in slots if r is not None]
    meta = {
        "experiment": os.path.splitext(os.path.basename(path))[0],
        "config_file": path,
        "size": base.size,
        "seeds": seeds,
        "first_seed": first_seed,
        "seed_stride": seed_stride,
        "seed_list": seed_list,
        "overrides": {k: v for k, v in overrides.items() if k != "progress"},
        "commit": ", ".join(sorted({r["commit"] for r in rows})),
        "command": "python -m jaxnorm.lab.sweep "
        + " ".join(
            [path, "--workdir", workdir, "--seeds", str(seeds)]
            + (["--first-seed", str(first_seed)] if first_seed else [])
            + (["--seed-stride", str(seed_stride)] if seed_stride != 1 else [])
            + (["--jobs", str(jobs)] if jobs != 1 else [])
            + [f"--config.{k}={v}" for k, v in overrides.items() if k != "progress"]
        ),
        "total_wall_s": sum(r["wall_s"] for r in rows if math.isfinite(r["wall_s"])),  # incl. earlier runs
        "elapsed_s": time.perf_counter() - t_start,
    }
    summary = write_summary(workdir, rows, meta)
    if plots:
        from jaxnorm.lab import plots as plots_lib

        firsts = [
            r for r in rows if r["seed"] == first_seed and os.path.exists(os.path.join(r["workdir"], "metrics.jsonl"))
        ]
        if firsts:
            summary["plots"] = plots_lib.make_plots(
                [r["workdir"] for r in firsts], os.path.join(workdir, "plots"), labels=[r["point"] for r in firsts]
            )
    return summary


def _cores() -> list[int]:
    """The CPU cores this process may run on."""
    return sorted(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else list(range(os.cpu_count() or 1))


def _pin(free) -> None:
    """A worker's start: pin it to the next free share of the cores, before its JAX runtime starts (XLA sizes its
    thread pool by the cores it may use)."""
    cores = free.get()
    if hasattr(os, "sched_setaffinity"):
        os.sched_setaffinity(0, cores)


def _run_in_workers(tasks: list[tuple], workers: int, done) -> None:
    """``run_one(*task)`` for every task in ``workers`` spawned processes (JAX's runtime is not safe to fork);
    ``done(k, result)`` in this process as each task ``k`` finishes. The datasets are prepared here first, so that
    no two workers generate the same one at once. On an exception or Ctrl-C (which the workers also receive: their
    runs save a checkpoint and stop) the runs not started are cancelled and the exception is raised once every
    worker is done."""
    from jaxnorm.lab import data as data_lib

    cores = _cores()
    share = len(cores) // workers
    ctx = multiprocessing.get_context("spawn")
    free = ctx.Queue()
    for w in range(workers):
        free.put(cores[w * share : (w + 1) * share])
    for name, data_dir in sorted({(t[0].dataset, t[0].data_dir) for t in tasks}):
        try:
            data_lib.prepare(name, data_dir or None)
        except (data_lib.DatasetNotPreparedError, data_lib.UnknownDatasetError):
            pass  # each run then fails with the message that says how to prepare it, as with jobs=1
    pool = concurrent.futures.ProcessPoolExecutor(workers, mp_context=ctx, initializer=_pin, initargs=(free,))
    try:
        futures = {pool.submit(run_one, *task): k for k, task in enumerate(tasks)}
        for fut in concurrent.futures.as_completed(futures):
            done(futures[fut], fut.result())
    except BaseException:
        pool.shutdown(wait=True, cancel_futures=True)
        raise
    pool.shutdown(wait=True)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m jaxnorm.lab.sweep", description=__doc__.split("\n\n")[0])
    p.add_argument("config", help="experiment file with get_config() and get_sweep(config)")
    p.add_argument("--workdir", required=True, help="where the runs, summary.csv/json and plots/ go")
    p.add_argument(
        "--seeds", type=int, default=None, help=f"seeds per grid point (default: the file's SEEDS or {DEFAULT_SEEDS})"
    )
    p.add_argument(
        "--first-seed", type=int, default=0, help="the first seed F (default 0); the runs take seeds F + k·S, k < N"
    )
    p.add_argument(
        "--seed-stride", type=int, default=1, help="the step S between seeds (default 1; 8 makes every stream disjoint)"
    )
    p.add_argument(
        "--jobs", type=int, default=1, help="runs trained at once, one worker process each (default 1; 2 on 2 cores)"
    )
    p.add_argument("--no-plots", action="store_true", help="skip the figures")
    args, rest = p.parse_known_args(argv)
    try:
        overrides = parse_overrides(rest)
        summary = run_sweep(
            args.config,
            args.workdir,
            args.seeds,
            overrides,
            plots=not args.no_plots,
            first_seed=args.first_seed,
            seed_stride=args.seed_stride,
            jobs=args.jobs,
        )
    except (FileNotFoundError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("interrupted; rerun the same command to finish the sweep (finished runs are skipped)")
        return 130
    failed = [r for r in summary["runs"] if r["status"] == "failed"]
    print(f"summary: {os.path.join(args.workdir, 'summary.csv')} ({len(summary['runs'])} runs, {len(failed)} failed)")
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main())

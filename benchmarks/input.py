"""Input pipeline throughput next to the train step it feeds: images/s delivered by the Grain pipeline alone
(``jaxnorm.lab.data.train_batches``, workers 0 and, on a machine with more than one core, 2), by the old numpy
``jaxnorm.lab.data.batches``, and consumed by the jitted train step, for

(a) the default run (``configs/default.py``: mnist1d, batch 128, the 1-D CNN with BN and dropout), and
(b) synthetic 32x32x3 images (``synthetic_images_32``) with crop + flip augmentation at batch 256 into a ResNet-18
    (CIFAR stem, full width) with BN; the pipeline reads the tfds data source (PNG decoding included), as for a
    prepared cifar10 or imagenet, and also the materialized arrays.

The experiment (dataset, model, optimizer, compiled step) is built by the trainer's own ``jaxnorm.lab.train.loop.build``
and ``steps.make_train_step`` on ``DataParallel.compile``, as ``train.py`` does. Prints one JSON line per figure;
``ratio`` = pipeline images/s / train-step images/s (the goal is >= 5, so the input never starves the step).
Timings are medians or means of steady-state runs and are never asserted on.

    python benchmarks/input.py [--small] [--data_dir DIR]

``--small`` times fewer batches and steps, and a quarter-width ResNet-18 (a full-width step at batch 256 takes about
half a minute on 2 CPU cores); the ``model_kwargs`` field of each line says which.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time

import jax

from jaxnorm.lab import data
from jaxnorm.lab.train import config as config_lib
from jaxnorm.lab.train import loop, steps

GOAL_RATIO = 5.0


def _default_config():
    import importlib.util  # pylint: disable=g-import-not-at-top

    path = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "configs", "default.py")
    spec = importlib.util.spec_from_file_location("jaxnorm_default_config", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.get_config()


def _resnet_config(width: float):
    c = config_lib.base_config()
    c.dataset = "synthetic_images_32"
    c.model = "resnet18"
    c.model_kwargs.width = width
    c.model_kwargs.stem = "cifar"
    c.norm = "batch"
    c.augment = True
    c.batch_size = 256
    c.optimizer = "momentum"
    c.learning_rate = 0.1
    return c


def pipeline_rate(make, batch_size: int, num_batches: int, warmup: int = 1) -> dict:
    """images/s of ``num_batches`` batches after ``warmup`` ones (the first batch's latency, worker start-up
    included, is reported apart; the others let every worker deliver once before the clock starts)."""
    it = make()
    try:
        t0 = time.perf_counter()
        next(it)
        first = time.perf_counter() - t0
        for _ in range(warmup - 1):
            next(it)
        t0 = time.perf_counter()
        for _ in range(num_batches):
            next(it)
        dt = time.perf_counter() - t0
    finally:
        if hasattr(it, "close"):
            it.close()
    return {"images_per_s": num_batches * batch_size / dt, "first_batch_s": first, "batches": num_batches}


def step_rate(exp, repeats: int) -> dict:
    """images/s the trainer's compiled train step consumes (median of ``repeats`` steps on one batch)."""
    c, dp = exp.config, exp.dp
    batch = data.batch_at(
        exp.dataset.train, 0, c.batch_size, seed=c.seed, augment=c.augment, drop_remainder=c.drop_remainder
    )
    state = dp.put_state(steps.create_state(exp.eval_model, exp.tx, batch["x"], c.seed))
    train_step = dp.compile(
        steps.make_train_step(
            exp.model,
            exp.tx,
            exp.schedule,
            c.seed,
            axis_name=dp.axis_name,
            sync_bn=c.sync_bn,
            loss=exp.loss,
            embedding_reg=c.embedding_reg,
        )
    )
    placed = dp.put_batch(batch)
    t0 = time.perf_counter()
    state, metrics = train_step(state, placed)  # compiles
    jax.block_until_ready((state, metrics))
    compile_s = time.perf_counter() - t0
    state, metrics = train_step(state, placed)
    jax.block_until_ready((state, metrics))
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        state, metrics = train_step(state, placed)
        jax.block_until_ready((state, metrics))
        times.append(time.perf_counter() - t0)
    step_s = statistics.median(times)
    return {"images_per_s": c.batch_size / step_s, "step_ms": 1e3 * step_s, "compile_s": compile_s, "repeats": repeats}


def run_case(
    name: str, config, worker_counts, num_batches: int, repeats: int, base: dict, source: bool = False
) -> None:
    """The train step of ``config`` and the pipelines over its train split as the trainer loads it (materialized
    for the bundled sets) and, with ``source``, over the tfds data source (``load(..., materialize=False)``)."""
    c = config
    config_lib.validate(c)
    exp = loop.build(c)
    splits = {"materialized": exp.dataset.train}
    if source:
        splits["tfds_source"] = data.load(c.dataset, c.data_dir or None, materialize=False).train
    step = step_rate(exp, repeats)
    common = {
        **base,
        "case": name,
        "dataset": c.dataset,
        "model": c.model,
        "norm": c.norm,
        "batch": c.batch_size,
        "augment": bool(c.augment),
        "input_shape": list(exp.dataset.info.input_shape),
        "model_kwargs": {k: v for k, v in c.model_kwargs.to_dict().items() if v is not None},
    }
    print(json.dumps({**common, "figure": "train_step", **step}), flush=True)
    opts = dict(seed=c.seed, augment=c.augment, drop_remainder=c.drop_remainder)
    for split_kind, split in splits.items():
        for workers in worker_counts:
            r = pipeline_rate(
                lambda: data.train_batches(split, c.batch_size, workers=workers, **opts),
                c.batch_size,
                num_batches,
                warmup=1 + 2 * workers,
            )
            print(
                json.dumps(
                    {
                        **common,
                        "figure": "pipeline",
                        "impl": "grain",
                        "split": split_kind,
                        "workers": workers,
                        **r,
                        "step_images_per_s": step["images_per_s"],
                        "ratio": r["images_per_s"] / step["images_per_s"],
                        "goal_ratio": GOAL_RATIO,
                    }
                ),
                flush=True,
            )
        r = pipeline_rate(lambda: data.batches(split, c.batch_size, **opts), c.batch_size, num_batches)
        print(
            json.dumps(
                {
                    **common,
                    "figure": "pipeline",
                    "impl": "numpy_batches",
                    "split": split_kind,
                    "workers": 0,
                    **r,
                    "step_images_per_s": step["images_per_s"],
                    "ratio": r["images_per_s"] / step["images_per_s"],
                    "goal_ratio": GOAL_RATIO,
                }
            ),
            flush=True,
        )


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--small", action="store_true", help="a quick run: fewer batches and steps, ResNet-18 at width 0.25")
    p.add_argument("--data_dir", default="", help="tfds data_dir (default: $JAXNORM_DATA_DIR, ... as the trainer)")
    args = p.parse_args()
    cores = os.cpu_count() or 1
    worker_counts = [0] + ([2] if cores > 1 else [])
    base = {
        "bench": "input",
        "backend": jax.default_backend(),
        "device": str(jax.devices()[0]),
        "cores": cores,
        "small": args.small,
    }

    default = _default_config()
    default.data_dir = args.data_dir
    run_case(
        "default",
        default,
        worker_counts,
        num_batches=100 if args.small else 1000,
        repeats=10 if args.small else 50,
        base=base,
    )
    resnet = _resnet_config(0.25 if args.small else 1.0)
    resnet.data_dir = args.data_dir
    run_case(
        "resnet18_synthetic32",
        resnet,
        worker_counts,
        num_batches=16 if args.small else 40,
        repeats=2 if args.small else 5,
        base=base,
        source=True,
    )


if __name__ == "__main__":  # worker processes start with `spawn` and import this file: nothing runs on import
    main()

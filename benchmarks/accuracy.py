"""Accuracy of every normalization on inputs with a large mean, against a float64 two-pass numpy reference.

Prints one JSON line per (norm, input)::

    python benchmarks/accuracy.py                          # x = m + s·N(0, 1), 32×8×8×16 float32
    python benchmarks/accuracy.py --norms-file /tmp/old.py # the same for another copy of jaxnorm/norms.py
    python benchmarks/accuracy.py --table                  # plus a markdown table (max over the inputs of each m)

Figures per line: ``y_err_sigma`` = max |y − y_ref| / std(y_ref) (the output error in units of the output's
spread), ``var_rel`` = max relative error of the batch (or per-example) variance where the norm exposes it,
``dx_rel`` = max |∂L/∂x − ref| / max |ref| for ``L = Σ ct·y`` with a random ``ct``. The reference
(``tests/_float64.py``) takes the same float32 values in float64, two-pass mean and variance, closed-form gradients.
Targets: y within 1e-3σ, variance within 1e-4 relative, gradient within 1e-3 relative, for m up to 1e5.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import sys

os.environ.setdefault("XLA_FLAGS", "--xla_force_host_platform_device_count=4")
os.environ.setdefault("JAX_PLATFORMS", "cpu")

import jax
import jax.numpy as jnp
import numpy as np

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "tests"))
import _float64 as ref

EPS = 1e-5
SHAPE = (32, 8, 8, 16)
GROUPS = 4
INPUTS = [(0.0, 1.0), (1e2, 1.0), (1e3, 1.0), (1e4, 1.0), (1e5, 1.0), (5.0, 1e-3)]


def _load(path):
    if path is None:
        from jaxnorm import norms

        return norms
    spec = importlib.util.spec_from_file_location("_acc_norms_candidate", os.path.abspath(path))
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def cases(jn, c):
    """name → (f(x, scale, bias) → (y, var or None), reference(x64, scale, bias, ct) → (y, var, dx))."""
    fresh = jn.init_batch_stats(c)
    m0 = {"momentum": 0.0}  # running var = this batch's var, so the batch variance is what is compared

    def bn_ref(x, s, b, ct):
        o = ref.norm(x, "batch", scale=s, bias=b, ct=ct, eps=EPS)
        return o["y"], o["var"], o["dx"]

    def renorm_ref(x, s, b, ct):
        o = ref.norm(x, "batch", ct=ct, eps=EPS)
        r = np.clip(np.sqrt(o["var"] + EPS) / np.sqrt(1 + EPS), 1 / 3, 3)
        d = np.clip(o["mean"] / np.sqrt(1 + EPS), -5, 5)
        y = (o["y"] * r + d) * s + b
        o2 = ref.norm(x, "batch", scale=s, ct=ct, eps=EPS)
        return y, o["var"], o2["dx"] * r

    def ghost_ref(x, s, b, ct):
        parts = [ref.norm(x[i : i + 8], "batch", scale=s, bias=b, ct=ct[i : i + 8], eps=EPS) for i in range(0, 32, 8)]
        return (
            np.concatenate([p["y"] for p in parts]),
            np.mean([p["var"] for p in parts], 0),
            np.concatenate([p["dx"] for p in parts]),
        )

    def per_example(kind, mode="standard", groups=1):
        def f(x, s, b, ct):
            o = ref.norm(x, kind, scale=s, bias=None if mode == "rms" else b, ct=ct, eps=EPS, groups=groups, mode=mode)
            return o["y"], None, o["dx"]

        return f

    def lp2_ref(x, s, b, ct):
        o = ref.norm(x, "batch", scale=s, bias=b, ct=ct, eps=EPS, mode="lp2")
        return o["y"], None, o["dx"]

    def masked(x, s, b, pad):  # the last 8 examples are padding holding NaN (1e30 for the gradient: 0·NaN = NaN)
        xp = x.at[24:].set(pad)
        return jn.batch_norm(xp, s, b, fresh, train=True, mask=jnp.arange(32) < 24, **m0)

    def masked_ref(x, s, b, ct):
        o = ref.norm(x[:24], "batch", scale=s, bias=b, ct=ct[:24], eps=EPS)
        return o["y"], o["var"], o["dx"]

    def synced(x, s, b):
        f = jax.pmap(lambda xs: jn.batch_norm(xs, s, b, fresh, train=True, axis_name="batch", **m0), axis_name="batch")
        y, st = f(x.reshape((4, 8) + x.shape[1:]))
        return y.reshape(x.shape), st["var"][0]

    return {
        "batch_norm": (lambda x, s, b: _bn(jn.batch_norm(x, s, b, fresh, train=True, **m0)), bn_ref),
        "batch_norm_masked_nan": (lambda x, s, b, pad=jnp.nan: _bn(masked(x, s, b, pad)), masked_ref, "masked"),
        "batch_norm_synced_pmap4": (synced, bn_ref),
        "batch_norm_ghost8": (
            lambda x, s, b: _bn(jn.batch_norm(x, s, b, fresh, train=True, virtual_batch_size=8, **m0)),
            ghost_ref,
        ),
        "batch_renorm": (lambda x, s, b: _bn(jn.batch_renorm(x, s, b, fresh, train=True, **m0)), renorm_ref),
        "lp_batch_norm_p2": (lambda x, s, b: (jn.lp_batch_norm(x, s, b, fresh, train=True, p=2)[0], None), lp2_ref),
        "layer_norm": (lambda x, s, b: (jn.layer_norm(x, s, b, epsilon=EPS), None), per_example("layer")),
        "instance_norm": (lambda x, s, b: (jn.instance_norm(x, s, b, epsilon=EPS), None), per_example("instance")),
        "group_norm": (
            lambda x, s, b: (jn.group_norm(x, s, b, num_groups=GROUPS, epsilon=EPS), None),
            per_example("group", groups=GROUPS),
        ),
        "rms_norm": (lambda x, s, b: (jn.rms_norm(x, s, epsilon=EPS), None), per_example("layer", "rms")),
        "batch_moments": (lambda x, s, b: (None, jn.batch_moments(x)["var"]), bn_ref),
    }


def _bn(out):
    y, st = out
    return y, st["var"]


def measure(jn, m, sd, seed=0):
    c = SHAPE[-1]
    k1, k2, k3, k4 = jax.random.split(jax.random.key(seed), 4)
    x = (m + sd * jax.random.normal(k1, SHAPE)).astype(jnp.float32)
    scale = 1.0 + 0.2 * jax.random.normal(k2, (c,))
    bias = 0.2 * jax.random.normal(k3, (c,))
    ct = jax.random.normal(k4, SHAPE)
    x64, s64, b64, ct64 = (np.asarray(a, np.float64) for a in (x, scale, bias, ct))
    out = []
    for name, (f, rf, *tag) in cases(jn, c).items():
        rec = {"norm": name, "m": m, "sd": sd}
        try:
            y, var = f(x, scale, bias)
            yr, varr, dxr = rf(x64, s64, b64, ct64)
            valid = slice(0, 24) if tag else slice(None)
            if y is not None:
                yv, yrv = np.asarray(y, np.float64)[valid], yr
                rec["y_err_sigma"] = float(np.max(np.abs(yv - yrv)) / np.std(yrv))
                rec["y_finite"] = bool(np.all(np.isfinite(yv)))
            if var is not None and varr is not None:
                rec["var_rel"] = float(np.max(np.abs(np.asarray(var, np.float64) - varr) / varr))
            if y is not None and name != "batch_norm_synced_pmap4":
                kw = {"pad": 1e30} if tag else {}
                ctv = ct.at[24:].set(0.0) if tag else ct  # a loss over the valid rows only
                dx = jax.grad(lambda x: jnp.sum(f(x, scale, bias, **kw)[0].astype(jnp.float32) * ctv))(x)
                dx = np.asarray(dx, np.float64)[valid]
                rec["dx_rel"] = float(np.max(np.abs(dx - dxr)) / np.max(np.abs(dxr)))
        except Exception as e:  # an older norms.py may lack an option: report, go on
            rec["error"] = f"{type(e).__name__}: {str(e)[:120]}"
        out.append(rec)
    return out


def constant_channels(jn):
    """Variance of constant channels at large offsets, relative to mean² (target ≤ 1e-6)."""
    x = jnp.broadcast_to(jnp.array([-1000.1, 10000.3, 5.0, 1e5], jnp.float32), (64, 4, 4))
    out = {}
    for name, var in (
        ("batch_norm", jn.batch_norm(x, None, None, jn.init_batch_stats(4), train=True, momentum=0.0)[1]["var"]),
        ("batch_moments", jn.batch_moments(x)["var"]),
    ):
        mean = np.asarray(x[0, 0], np.float64)
        out[name] = [float(v) / float(mm) ** 2 for v, mm in zip(np.asarray(var), mean)]
    return out


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--norms-file", default=None)
    ap.add_argument("--table", action="store_true")
    args = ap.parse_args(argv)
    jax.config.update("jax_default_matmul_precision", "highest")
    jn = _load(args.norms_file)
    rows = []
    for m, sd in INPUTS:
        for rec in measure(jn, m, sd):
            rec["norms_file"] = args.norms_file or "jaxnorm.norms"
            print(json.dumps(rec), flush=True)
            rows.append(rec)
    print(json.dumps({"name": "constant_channels_var_over_mean2", **constant_channels(jn)}), flush=True)
    if args.table:
        names = list(dict.fromkeys(r["norm"] for r in rows))
        head = [f"m={m:g}" + ("" if sd == 1 else f", σ={sd:g}") for m, sd in INPUTS]
        print("| norm: y err/σ, var rel, dx rel | " + " | ".join(head) + " |")
        print("|---" * (len(head) + 1) + "|")
        for n in names:
            cells = []
            for m, sd in INPUTS:
                r = next(r for r in rows if r["norm"] == n and r["m"] == m and r["sd"] == sd)
                if "error" in r:
                    cells.append("n/a")
                    continue
                cells.append(" / ".join(f"{r[k]:.1e}" if k in r else "–" for k in ("y_err_sigma", "var_rel", "dx_rel")))
            print(f"| {n} | " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main()

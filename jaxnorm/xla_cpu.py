"""The XLA:CPU setting jaxnorm's training runs use by default, chosen by measurement.

XLA's CPU backend hands some fusions to the YNNPACK library (``--xla_cpu_experimental_ynn_fusion_type``). With its
default list, 2-D convolutions go to YNNPACK too, and on the x86-64 CPU measured (``benchmarks/xla_flags.py``; the
table is in docs/benchmarks.md) that makes 2-D CNN train steps slower. Naming the list explicitly as
``reduce,eltwise`` keeps YNNPACK's reductions and elementwise fusions and leaves convolutions and dots to XLA's own
emitters: the SimpleCNN step 270 -> 179 ms, the ResNet-18 x0.25 step 257 -> 167 ms, the norm programs within noise.
The same list makes the default 1-D CNN run slower (192 -> 151 steps/s), so it is not used there.

The rule, stated once: a run of a model that convolves over 2-D inputs (``spatial_dims == 2``) on an x86-64 machine
gets :data:`X86_64_CONV2D_FLAGS` appended to ``XLA_FLAGS``, unless the environment already names one of
:data:`OPTIONS` in ``XLA_FLAGS`` (the user's choice wins) or sets ``JAXNORM_XLA_CPU=off``. Other models and other
architectures (ARM, ...) keep XLA's defaults: no measurement says the list helps there. XLA reads ``XLA_FLAGS`` when
the CPU backend starts, so :func:`apply` must run before the first computation; ``train.py`` calls it once the config
names the model. ``import jaxnorm`` never changes the process's flags.
"""

from __future__ import annotations

import os
import platform
import sys
from collections.abc import MutableMapping

__all__ = ["OPTIONS", "X86_64_CONV2D_FLAGS", "apply", "recommended_flags"]

# the options this module owns: a user's XLA_FLAGS naming either is left alone
OPTIONS = ("--xla_cpu_experimental_ynn_fusion_type", "--xla_cpu_experimental_xnn_fusion_type")
X86_64_CONV2D_FLAGS = ("--xla_cpu_experimental_ynn_fusion_type=reduce,eltwise",)


def recommended_flags(spatial_dims: int | None, machine: str | None = None) -> tuple[str, ...]:
    """The flags for a model that convolves over ``spatial_dims`` axes (2: images; 1: signals; None: no convolution)
    on a CPU architecture (``platform.machine()`` by default): :data:`X86_64_CONV2D_FLAGS` for 2-D on x86-64, none
    otherwise."""
    machine = (machine or platform.machine()).lower()
    return X86_64_CONV2D_FLAGS if spatial_dims == 2 and machine in ("x86_64", "amd64") else ()


def apply(
    spatial_dims: int | None, environ: MutableMapping[str, str] | None = None, machine: str | None = None
) -> tuple[str, ...]:
    """Append :func:`recommended_flags` to ``environ['XLA_FLAGS']`` (``os.environ`` by default); return what was added.

    Nothing is added when ``JAXNORM_XLA_CPU`` is ``off``/``0``/``false``, when ``XLA_FLAGS`` already names one of
    :data:`OPTIONS` (the user's choice wins), or when JAX's backends have already started in this process (XLA has
    read its flags; changing the variable then would only mislead the subprocesses)."""
    env = os.environ if environ is None else environ
    if env.get("JAXNORM_XLA_CPU", "").strip().lower() in ("off", "0", "false", "no"):
        return ()
    current = env.get("XLA_FLAGS", "")
    if any(word.startswith(OPTIONS) for word in current.split()):
        return ()
    if environ is None and _backends_started():
        return ()
    added = recommended_flags(spatial_dims, machine)
    if added:
        env["XLA_FLAGS"] = " ".join([*current.split(), *added])
    return added


def _backends_started() -> bool:
    """Whether this process's JAX backends exist already (jax imported and a computation or device query made)."""
    if "jax" not in sys.modules:
        return False
    from jax._src import xla_bridge  # the one public-API gap: jax has no public "backends initialized" query

    return bool(xla_bridge.backends_are_initialized())

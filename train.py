"""Train a jaxnorm model: ``python train.py --config configs/default.py --workdir runs/default``.

Overrides: ``--config.norm=group --config.batch_size=32``, and any field of the model:
``--config.model_kwargs.channels='(32,64)'`` (tuples quoted for the shell); ``--config.size=full`` applies the
config's paper-scale preset (``c.sizes.full``), keys given on the command line still winning. With no flags: the
default config (a 1-D CNN with batch norm on MNIST-1D, offline) into runs/default. Rerunning the same command resumes
from the latest checkpoint. Known errors are one line on stderr and exit status 1 (``JAXNORM_DEBUG=1`` shows the
traceback). ``--help`` describes every key and the model's fields; ``--list`` shows the configs and the registries.
"""

import os
import re
import signal
import subprocess
import sys

from absl import flags, logging

_HERE = os.path.dirname(os.path.abspath(__file__))


def _flag_error(e: BaseException) -> str:
    """One line for a config file or ``--config.KEY`` override that cannot be read."""
    text = " ".join(str(e).split())
    if isinstance(e, (KeyError, AttributeError)):  # ml_collections: an unknown key, with its own suggestion
        key = re.search(r"'([^'\\]+)", text)
        hint = re.search(r'Did you mean "([^"]+)"', text)
        return (
            f"unknown config key {key.group(1) if key else text!r}"
            + (f" (did you mean {hint.group(1)!r}?)" if hint else "")
            + "; python train.py --help lists the config's keys"
        )
    missing = re.search(r"No such file or directory: '([^']+)'", text)
    if missing:
        return f"config file {missing.group(1)} not found; pass --config configs/NAME.py (e.g. configs/default.py)"
    if isinstance(e, SyntaxError):
        return f"the config file does not parse: {e.msg} ({e.filename}, line {e.lineno})"
    return text.replace("Configuration is not available because of an earlier failure to load: ", "")


_XLA_LOG = re.compile(r"^([IWEF]\d{4} \d\d:\d\d:\d\d|\s+@\s+0x|\*\*\* |terminate called|  what\(\))")


def _supervise(argv, config, workdir: str) -> int:
    """Run a process of a multi-process run as a child and answer its abort with one line.

    When a peer or the coordinator dies, XLA's coordination client aborts the survivors (SIGABRT) with a stack dump
    from C++, where Python cannot catch it. The child runs the same command; its XLA log lines are dropped from
    stderr, SIGINT/SIGTERM sent to this process are passed on, and an abort becomes ``error: ... stopped
    responding; last checkpoint step N`` with exit status 1."""
    env = {**os.environ, "_JAXNORM_SUPERVISED": "1"}
    child = subprocess.Popen(
        [sys.executable, os.path.abspath(__file__), *argv[1:]],
        stderr=subprocess.PIPE,
        text=True,
        env=env,
        start_new_session=True,
        preexec_fn=_die_with_parent,
    )
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda signum, frame: child.send_signal(signum))
    muted, dump = False, []  # from the coordination service's first error on, the rest is the abort's dump
    for line in child.stderr:
        muted = muted or "coordination_service" in line or re.match(r"F\d{4} ", line) is not None
        if muted:
            dump.append(line)
        if line.startswith("error: ") or not (muted or _XLA_LOG.match(line)):
            sys.stderr.write(line)
            sys.stderr.flush()
    rc = child.wait()
    if rc != -signal.SIGABRT:
        return rc if rc >= 0 else 128 - rc
    if any("RegisterTask" in line for line in dump):  # it never got past connecting
        print(
            f"error: process {config.process_id} of {config.num_processes}: not every process connected to the "
            f"coordinator {config.coordinator_address} within the initialization timeout "
            f"({config.heartbeat_timeout * 3} s = 3 × heartbeat_timeout); start all {config.num_processes} "
            "processes with the same --config.coordinator_address",
            file=sys.stderr,
        )
        return 1
    from jaxnorm.lab.train.checkpoint import saved_steps

    saved = saved_steps(workdir)
    print(
        f"error: process {config.process_id} of {config.num_processes}: a peer process or the coordinator stopped "
        f"responding (the JAX distributed service reported it); last checkpoint step "
        f"{saved[-1] if saved else 'none'}. Restart every process with the same command to resume",
        file=sys.stderr,
    )
    return 1


def _die_with_parent() -> None:
    """In the child: SIGKILL when the supervising process dies (Linux), so that killing it kills the run."""
    try:
        import ctypes

        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass


USAGE = """Usage: python train.py [--config FILE] [--workdir DIR] [--config.KEY=VALUE ...]
       python train.py --list    the configs, experiments, models, norms, dropouts and datasets
       python train.py --help    this text, for the config of --config and the model of --config.model

  --config FILE   a config file (get_config()); default configs/default.py
  --workdir DIR   where metrics, checkpoints, TensorBoard events and the config go; default runs/default"""

_HELP = ("-h", "--help", "--helpfull", "--helpshort")


def cli(argv) -> int:
    if "--list" in argv[1:]:
        from jaxnorm.lab import cli as lab_cli

        print(lab_cli.list_text(_HERE))
        return 0
    fv = flags.FlagValues()
    wants_help = any(a in _HELP for a in argv[1:])
    argv = [a for a in argv if a not in _HELP]
    default_config = os.path.join(_HERE, "configs", "default.py")
    try:
        from jaxnorm.lab import cli as lab_cli  # light: the registries are imported when needed

        config, argv = lab_cli.define_config(fv, argv, default_config, "Path to a config file (get_config()).")
        workdir = flags.DEFINE_string(
            "workdir", "runs/default", "Where metrics, checkpoints and the config go.", flag_values=fv
        )
        rest = fv(argv)
        if len(rest) > 1:
            raise flags.Error(f"unexpected arguments {rest[1:]}: give options as --name=value")
        if not workdir.value:
            raise flags.Error("--workdir is empty: give the run directory, e.g. --workdir runs/mine")
        cfg = config.value
        cfg.to_dict()  # a config file that failed to load raises here, not at first use
    except Exception as e:
        if os.environ.get("JAXNORM_DEBUG"):
            raise
        print(f"error: {_flag_error(e)}", file=sys.stderr)
        return 1
    if wants_help:
        path = os.path.relpath(lab_cli.config_path(argv, default_config))
        print(__doc__ + "\n" + lab_cli.help_text(cfg, argv, path, USAGE))
        return 0
    if cfg.num_processes != 1 and not os.environ.get("_JAXNORM_SUPERVISED"):
        return _supervise(argv, cfg, workdir.value)
    logging.set_verbosity(logging.WARNING)  # orbax logs every checkpoint step at INFO
    line = lab_cli.apply_xla_cpu(
        lab_cli.selected_model(cfg, argv)
    )  # before JAX's backend starts: XLA reads XLA_FLAGS once
    if line:
        print(line, flush=True)
    import jaxnorm.lab.train  # after flag parsing, so --help is fast

    # keys given as --config.KEY=... win over the preset that --config.size=NAME applies
    explicit = [name[len("config.") :] for name in fv if name.startswith("config.") and fv[name].present]
    return jaxnorm.lab.train.main(cfg, workdir.value, explicit)


if __name__ == "__main__":
    sys.exit(cli(sys.argv))

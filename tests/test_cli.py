"""train.py's command line as a user meets it: every model field as ``--config.model_kwargs.FIELD`` on any config,
``--help`` from the registries, ``--list``, the end-of-run summary, the model/data mismatch check, and the one
batch-norm momentum default."""

import ast
import json
import os
import pathlib
import re
import shlex
import subprocess
import sys

import ml_collections
import pytest
from absl import flags

from jaxnorm.lab import cli
from jaxnorm.lab import models as zoo
from jaxnorm.lab.models import fields as fields_lib
from jaxnorm.lab.train import config as config_lib
from jaxnorm.lab.train import loop

pytestmark = pytest.mark.lab

ROOT = pathlib.Path(__file__).resolve().parents[1]
DEFAULT = str(ROOT / "configs" / "default.py")
FAST = ["--config.num_steps=4", "--config.eval_every=4", "--config.log_every=2", "--config.checkpoint_every=4"]


def train_py(*args, cwd=None):
    env = {**os.environ, "JAX_PLATFORMS": "cpu"}
    cmd = [sys.executable, str(ROOT / "train.py"), *args]
    return subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=300, cwd=cwd)


def parse(*args, config=DEFAULT):
    """The config that ``python train.py --config CONFIG ARGS`` trains, parsed in this process."""
    fv = flags.FlagValues()
    holder, argv = cli.define_config(fv, ["train.py", "--config", config, *args], DEFAULT, "config")
    fv(argv)
    return holder.value


def one_line_error(r) -> str:
    lines = r.stderr.strip().splitlines()
    assert r.returncode == 1 and len(lines) == 1 and lines[0].startswith("error: "), r.stderr[-2000:]
    return lines[0]


# ---- every model field from the command line ------------------------------------------------------------------------


def test_a_model_field_on_the_default_config_trains_and_the_run_says_where_it_is(tmp_path):
    wd = tmp_path / "run"
    r = train_py("--workdir", str(wd), "--config.model_kwargs.channels=(16,24)", "--config.progress=False", *FAST)
    assert r.returncode == 0, r.stderr[-3000:]
    assert json.loads((wd / "config.json").read_text())["model_kwargs"]["channels"] == [16, 24]
    exp, state = loop.restore(str(wd))
    assert state.params["conv_1"]["kernel"].shape[-1] == 24 and "conv_2" not in state.params  # the model built
    assert exp.eval_model.block_strides() == (1, 2)  # the default strides' pattern follows the channels
    # the end of the run: where the results are, and the commands that come next
    out = r.stdout
    tail = out[out.index("final eval:") :]
    assert f"run finished at step 4 in {wd}" in tail and re.search(r"accuracy \d\.\d{4}", tail)
    assert str(wd / "metrics.jsonl") in tail and str(wd / "checkpoints") in tail
    assert f"python -m jaxnorm.lab.plots {wd}" in tail
    assert f"tensorboard --logdir {wd / 'tensorboard'}" in tail and "pip install 'jaxnorm[tensorboard]'" in tail
    assert any(n.startswith("events.out.tfevents") for n in os.listdir(wd / "tensorboard"))  # where it points
    resume = re.search(r"resume +(python .*?) {3}", tail).group(1)
    assert shlex.split(resume)[2:] == [
        "--workdir",
        str(wd),
        "--config.model_kwargs.channels=(16,24)",
        "--config.progress=False",
        *FAST,
    ]
    probe = re.search(r"probes +(python -c .*)", tail).group(1)
    res = subprocess.run(shlex.split(probe), capture_output=True, text=True, timeout=300)
    assert res.returncode == 0 and "santurkar/loss_min" in res.stdout, res.stderr[-2000:]
    again = train_py(*shlex.split(resume)[2:])  # the resume command: nothing left to train, the same summary
    assert again.returncode == 0 and "resumed from step 4" in again.stdout and "run finished at step 4" in again.stdout


def test_model_field_values_parse_as_their_types():
    c = parse(
        "--config.model=resnet18",
        "--config.model_kwargs.stage_sizes=(1,1)",
        "--config.model_kwargs.block=basic",
        "--config.model_kwargs.width=0.5",
        "--config.model_kwargs.depth=34",
        "--config.model_kwargs.zero_init_residual=True",
        "--config.model_kwargs.norm_kwargs.convention=pytorch",
    )
    kw = c.model_kwargs
    assert kw.stage_sizes == (1, 1) and kw.block == "basic" and kw.width == 0.5 and kw.depth == 34
    assert kw.zero_init_residual is True and kw.norm_kwargs.convention == "pytorch"
    model = zoo.build_model(c.model, norm=c.norm, **{k: v for k, v in kw.to_dict().items() if v is not None})
    assert (model.stage_sizes, model.depth, model.norm_kwargs["convention"]) == ((1, 1), 34, "pytorch")
    # the config file's own keys keep their types, and unset fields are not added to the config
    smoke = parse("--config.model_kwargs.channels=(4,8)", config=str(ROOT / "configs" / "smoke.py"))
    assert smoke.model_kwargs.channels == (4, 8) and "stem" not in parse().model_kwargs


@pytest.mark.parametrize(
    "args,match",
    [
        (["--config.model_kwargs.chanels=(32,64)"], r"unknown config key 'chanels' \(did you mean 'channels'\?\)"),
        (
            ["--config.model=mlp", "--config.model_kwargs.channels=(8,)"],
            r"'channels': .*not a field of the model mlp \(MLP\); its fields: hidden, ",
        ),
        (["--config.model=resnet18", "--config.model_kwargs.dpeth=34"], r"did you mean 'depth'"),
        (["--config.model_kwargs.norm=group"], r"takes norm from --config.norm"),
    ],
)
def test_a_field_the_model_lacks_is_refused_with_a_suggestion(args, match):
    with pytest.raises(cli.ModelFieldError, match=match):
        parse(*args)


def test_bad_model_fields_are_one_line_before_the_workdir(tmp_path):
    wd = tmp_path / "run"
    line = one_line_error(train_py("--workdir", str(wd), "--config.model_kwargs.chanels=(32,64)"))
    assert "unknown config key 'chanels' (did you mean 'channels'?)" in line and "cnn1d (CNN1D)" in line
    line = one_line_error(train_py("--workdir", str(wd), "--config.model_kwargs.channels=32"))
    assert "is Sequence[int]" in line and "--config.model_kwargs.channels='(32,32,32)'" in line
    line = one_line_error(train_py("--workdir", str(wd), "--config.model_kwargs.kernel_size=five"))
    assert "kernel_size='five'" in line and "is int" in line
    assert not wd.exists()


def test_model_kwargs_from_a_config_file_are_checked_against_the_model():
    c = parse("--config.model=simple_cnn", config=str(ROOT / "configs" / "resnet.py"))  # width, stem: ResNet's
    with pytest.raises(ValueError, match=r"unknown config key '(width|stem)'.*not a field of the model simple_cnn"):
        loop.build(c)
    fields_lib.check_model_kwargs("simple_cnn", {"width": None, "channels": (4,)})  # None: unset


def test_cnn1d_strides_follow_the_channels_only_at_their_default():
    assert zoo.build_model("cnn1d").block_strides() == (1, 1, 2)  # the tuned default run is unchanged
    assert zoo.build_model("cnn1d", channels=(8, 8, 8, 8)).block_strides() == (1, 1, 1, 2)
    assert zoo.build_model("cnn1d", channels=(8,), strides=(1,)).block_strides() == (1,)
    with pytest.raises(ValueError, match=r"strides \(1, 2\) needs one entry per channel entry \(8, 8, 8\)"):
        zoo.build_model("cnn1d", channels=(8, 8, 8), strides=(1, 2))


def test_annotations_accept_what_they_say():
    ok = [
        ("int", 3),
        ("float", 3),
        ("float | None", None),
        ("Sequence[int]", (1, 2)),
        ("str | Sequence[int | str]", "a"),
    ]
    ok += [("str | Sequence[int | str]", (64, "M")), ("bool", False), ("Mapping[str, Any] | None", {"a": 1})]
    ok += [("Any", object()), ("Callable[..., Array] | None", print)]
    bad = [("int", 3.5), ("int", True), ("Sequence[int]", 32), ("Sequence[int]", (1, "a")), ("bool", 1), ("str", 1)]
    assert all(fields_lib._accepts(a, v) for a, v in ok)
    assert not any(fields_lib._accepts(a, v) for a, v in bad)


# ---- --help and --list ----------------------------------------------------------------------------------------------


def _help_line(text: str, key: str) -> str:
    return next(line for line in text.splitlines() if line.startswith(f"  {key}="))


def test_help_describes_every_key_with_values_from_the_registries():
    c = parse()
    text = cli.help_text(c, ["train.py"], "configs/default.py")
    base = config_lib.base_config()
    keys = [k for k in cli._keys(base) if k != "model_kwargs"]
    for key in keys:  # every key once, with a description and its allowed values or type
        line, description = _help_line(text, key), cli.describe(key)
        assert description and f" {description} [" in line and line.endswith("]"), line
    assert len([k for k in keys if f"  {k}=" in text]) == len(keys)
    registries = {
        "norm": zoo.norm_names(),
        "dropout": zoo.dropout_names(),
        "model": tuple(zoo.MODELS),
        "optimizer": config_lib.OPTIMIZERS,
        "schedule": config_lib.SCHEDULES,
        "parallel": __import__("jaxnorm.lab.train.parallel", fromlist=["MODES"]).MODES,
        "probes.kinds": __import__("jaxnorm.probes", fromlist=["PROBES"]).PROBES,
        "dataset": cli.datasets(),
    }
    for key, names in registries.items():
        assert ", ".join(names) in _help_line(text, key), key
    # generated, not copied: a registered norm and model appear
    zoo.register_norm("test_cli_norm", zoo.Identity, options=())
    zoo.register_model("test_cli_model", zoo.MLP)
    try:
        text = cli.help_text(c, ["train.py"], "configs/default.py")
        assert "test_cli_norm" in _help_line(text, "norm") and "test_cli_model" in _help_line(text, "model")
        assert "test_cli_model" in cli.list_text(str(ROOT)) and "test_cli_norm" in cli.list_text(str(ROOT))
    finally:
        zoo.unregister_norm("test_cli_norm")
        del zoo.MODELS["test_cli_model"]


def test_a_key_without_a_description_gets_its_comment_in_base_config():
    comments = cli._config_comments()
    assert comments["max_norm"].startswith("> 0: project each kernel")
    assert cli.describe("kernel_norm", {}) == cli.DESCRIPTIONS["kernel_norm"]
    assert cli.describe("shard_params_min_size_x", {"shard_params_min_size_x": "a  b"}) == "a b"


def test_help_lists_the_selected_models_fields(tmp_path):
    r = train_py("--help", "--workdir", str(tmp_path / "run"))
    assert r.returncode == 0, r.stderr
    assert "Fields of the model cnn1d (CNN1D)" in r.stdout and re.search(
        r"\n  channels=\(32, 32, 32\) +Sequence", r.stdout
    )
    assert "momentum=0.9" in r.stdout and "norm=" in r.stdout and "--list" in r.stdout
    r = train_py("--config.model=resnet18", "--help")
    assert "Fields of the model resnet18 (ResNet)" in r.stdout and re.search(r"\n  depth=18 +int", r.stdout)
    assert not (tmp_path / "run").exists()


def test_list_shows_configs_experiments_and_registries_and_touches_nothing(tmp_path):
    r = train_py("--list", "--workdir", str(tmp_path / "run"), cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    out = r.stdout
    for path in sorted((ROOT / "configs").glob("*.py")) + sorted((ROOT / "experiments").glob("*.py")):
        first = ast.get_docstring(ast.parse(path.read_text())).splitlines()[0]
        line = next(x for x in out.splitlines() if x.strip().startswith(f"{path.parent.name}/{path.name}"))
        assert first in line, line
    for names in (zoo.MODELS, zoo.norm_names(), zoo.dropout_names(), cli.datasets()):
        assert all(re.search(rf"\b{n}\b", out) for n in names)
    assert re.search(r"\n  cnn1d +CNN1D: 1-D signals", out) and re.search(r"\n  resnet18 +ResNet: 2-D images", out)
    assert os.listdir(tmp_path) == []  # no workdir, nothing written


# ---- the model against the data --------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "model,dataset,shape",
    [
        ("simple_cnn", "mnist1d", r"\(40, 1\)"),
        ("resnet50", "mnist1d", r"\(40, 1\)"),
        ("cnn1d", "digits", r"\(8, 8, 1\)"),
    ],
)
def test_a_model_that_cannot_read_the_data_is_one_line_before_training(tmp_path, model, dataset, shape):
    wd = tmp_path / "run"
    line = one_line_error(
        train_py("--workdir", str(wd), f"--config.model={model}", f"--config.dataset={dataset}", *FAST)
    )
    assert re.search(rf"the model {model} \(\w+\) convolves over .* inputs of {dataset} are .* of shape {shape}", line)
    want = "cnn1d" if dataset == "mnist1d" else "simple_cnn"
    assert f"use --config.model={want} (" in line and "mlp" in line
    assert not wd.exists()


def test_models_that_fit_their_data_pass():
    for model, shape in [("cnn1d", (40, 1)), ("cnn1d", (10,)), ("simple_cnn", (8, 8, 1)), ("vgg11", (32, 32, 3))]:
        fields_lib.check_model_inputs(model, shape)
    for model in ("mlp", "ioffe_mlp", "deep_linear"):
        for shape in [(10,), (40, 1), (8, 8, 1)]:
            fields_lib.check_model_inputs(model, shape)
    with pytest.raises(ValueError, match=r"simple_cnn .* vectors of shape \(10,\)"):
        fields_lib.check_model_inputs("simple_cnn", (10,))


# ---- the end of a run -------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("process", [0, 1])
def test_only_process_0_prints_the_summary(tmp_path, monkeypatch, capsys, process):
    monkeypatch.setattr(loop, "train_and_evaluate", lambda *a, **k: {"loss": 0.25, "accuracy": 0.875})
    monkeypatch.setattr(loop.jax, "process_index", lambda: process)
    (tmp_path / "checkpoints" / "20").mkdir(parents=True)
    assert loop.main(config_lib.base_config(), str(tmp_path)) == 0
    out = capsys.readouterr().out
    assert "final eval: loss 0.2500  accuracy 0.8750" in out
    assert ("run finished at step 20" in out) == (process == 0)


def test_the_summary_quotes_paths_for_the_shell():
    text = cli.run_summary("runs/a b", {"accuracy": 0.5}, ["/somewhere/train.py", "--workdir", "runs/a b"])
    assert "python -m jaxnorm.lab.plots 'runs/a b'" in text and "--logdir 'runs/a b/tensorboard'" in text
    assert "python /somewhere/train.py --workdir 'runs/a b'" in text and "latest step none" in text
    assert "rerun the same command" in cli.run_summary("r", {}, ["pytest"])


# ---- the batch-norm momentum default ----------------------------------------------------------------------------------


def _config_files():
    return sorted((ROOT / "configs").glob("*.py")) + sorted((ROOT / "experiments").glob("*.py"))


def test_the_bn_momentum_default_is_stated_once_and_inherited():
    assert config_lib.base_config().model_kwargs.momentum == config_lib.BN_MOMENTUM == 0.9
    for path in _config_files():
        assert "model_kwargs.momentum" not in path.read_text(), f"{path.name} restates the momentum default"
        assert parse(config=str(path)).model_kwargs.momentum == 0.9, path.name
    c = parse()
    assert loop.model_kwargs(c, 10)["momentum"] == 0.9
    norm = zoo.build_model(c.model, **loop.model_kwargs(c, 10)).norm_factory()
    assert norm(8, name="n").momentum == 0.9  # what the layer gets


def test_a_config_that_sets_another_momentum_keeps_it(tmp_path):
    f = tmp_path / "mine.py"
    f.write_text(
        "from jaxnorm.lab.train.config import base_config\n\n\ndef get_config():\n"
        "    c = base_config()\n    c.model_kwargs.momentum = 0.99\n    return c\n"
    )
    assert parse(config=str(f)).model_kwargs.momentum == 0.99
    assert parse("--config.model_kwargs.momentum=0.5").model_kwargs.momentum == 0.5
    mc = ml_collections.ConfigDict(config_lib.base_config().to_dict())
    mc.model_kwargs.momentum = None  # unset: the layer's own default
    assert "momentum" not in loop.model_kwargs(mc, 10)


# ---- commands paste into bash ----------------------------------------------------------------------------------------


def unquoted_parentheses(line: str) -> list[str]:
    """The words of a shell command line with a ``(`` outside quotes: bash reads them as a subshell or a syntax
    error, so a tuple value must be quoted (``--config.model_kwargs.channels='(32,64)'``)."""
    bad, quote = [], None
    for word in re.findall(r"(?:'[^']*'|\"[^\"]*\"|[^\s'\"])+", line):
        quote = None
        for ch in word:
            if ch in "'\"" and quote is None:
                quote = ch
            elif ch == quote:
                quote = None
            elif ch in "()" and quote is None:
                bad.append(word)
                break
    return bad


def _commands(text: str):
    from test_docs import code_blocks

    for line, code in code_blocks(text, "bash"):
        for cmd in code.splitlines():
            cmd = re.split(r"\s+#\s", " " + cmd, maxsplit=1)[0].strip()
            if cmd and not cmd.startswith("#"):
                yield line, cmd


def test_the_unquoted_parenthesis_check():
    assert unquoted_parentheses("python train.py --config.model_kwargs.channels=(32,64)") == [
        "--config.model_kwargs.channels=(32,64)"
    ]
    assert unquoted_parentheses("python train.py --config.model_kwargs.channels='(32,64)' --config.x=\"()\"") == []
    assert unquoted_parentheses("python -c \"print('a (b)')\"") == []


def test_every_readme_and_config_command_pastes_into_bash():
    commands = list(_commands((ROOT / "README.md").read_text()))
    assert any("'(64,64,64)'" in c for _, c in commands)  # the README shows a tuple override, quoted
    for path in _config_files():  # the commands in the configs' docstrings
        doc = ast.get_docstring(ast.parse(path.read_text())) or ""
        lines = [re.split(r"\s+#\s", line, maxsplit=1)[0].strip() for line in doc.splitlines()]
        commands += [(path.name, line) for line in lines if line.startswith("python ")]
    for where, cmd in commands:
        assert not unquoted_parentheses(cmd), f"{where}: quote the tuple in {cmd!r}"
        cmd = cmd.rstrip("\\").rstrip()
        r = subprocess.run(["bash", "-n", "-c", cmd], capture_output=True, text=True)
        assert r.returncode == 0, f"{where}: {cmd!r}: {r.stderr}"

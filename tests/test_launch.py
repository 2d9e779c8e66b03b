"""The launch recipes cannot rot: every `python -m MODULE ...` in launch/ names a module, flags and config keys
that exist, checked with the project's own flag and config code; the notebook's commands run at smoke size.

Commands are read from launch/*.sh (line continuations joined, shell variables expanded from the script's
own `VAR=${VAR:-default}` lines, arrays such as DIST=(...) tried in each of their assignments, "$@"
dropped), from launch/README.md's indented command blocks, and from launch/colab_tpu.ipynb's code cells
(`!` shell lines with IPython's $VAR expansion, and subprocess argument lists such as
["python", "-m", ...] with f-strings evaluated from the cells' string assignments).
"""

import ast
import copy
import glob
import importlib
import importlib.util
import json
import os
import re
import shlex
import subprocess
import sys

import pytest
from absl import flags
from ml_collections import config_flags

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
LAUNCH = os.path.join(ROOT, "launch")
PROJECT_PACKAGES = ("experiments", "benchmarks", "difnet_jax")
# Variables the scripts read from the environment without a default (placeholders of the right type).
ENVIRONMENT = {"HOME": "/home/user", "COORDINATOR": "host0:1234", "NUM_PROCESSES": "2", "PROCESS_ID": "0", "i": "0"}
PYTHON = re.compile(r"^(\S*/)?python3?$|^\$\{?PYTHON\}?$")


def _expand(token: str, env: dict) -> str:
    """$VAR, ${VAR} and ${VAR:-default} from `env` (unknown variables: left as they are)."""

    def value(match):
        name, default = match.group(1) or match.group(4), match.group(3)
        if name in env:
            return env[name]
        return _expand(default, env) if default is not None else match.group(0)

    return re.sub(r"\$\{(\w+)(:-([^}]*))?\}|\$(\w+)", value, token)


def _commands_in_tokens(tokens: list[str]) -> list[tuple[str, list[str]]]:
    for i in range(len(tokens) - 2):
        if PYTHON.match(tokens[i]) and tokens[i + 1] == "-m":
            return [(tokens[i + 2], tokens[i + 3:])]
    return []


def shell_commands(text: str, env: dict | None = None) -> list[tuple[str, list[str]]]:
    """(module, arguments) of every `python -m` line of a shell script, one per array alternative."""
    env = dict(ENVIRONMENT, **(env or {}))
    text = text.replace("\\\n", " ")
    arrays: dict[str, list[list[str]]] = {}
    commands = []
    for line in text.splitlines():
        array = re.match(r"^\s*(\w+)=\((.*)\)\s*$", line)
        scalar = re.match(r"^\s*(\w+)=(\S.*)$", line)
        if array:
            tokens = [_expand(t, env) for t in shlex.split(array.group(2))]
            arrays.setdefault(array.group(1), []).append(tokens)
            continue
        if scalar and "-m" not in line:
            env[scalar.group(1)] = _expand(shlex.split(scalar.group(2), comments=True)[0], env)
            continue
        try:
            tokens = shlex.split(line, comments=True)
        except ValueError:  # e.g. an apostrophe in a comment-free English line
            continue
        variants = [[]]
        for token in tokens:
            spliced = re.fullmatch(r"\$\{(\w+)\[@\]\}", token)
            if token == "$@":
                continue
            if spliced:
                variants = [v + alternative for v in variants for alternative in arrays.get(spliced.group(1), [[]])]
            else:
                variants = [v + [_expand(token, env)] for v in variants]
        for variant in variants:
            commands += _commands_in_tokens(variant)
    return commands


def readme_commands(text: str) -> list[tuple[str, list[str]]]:
    """Indented (code) lines of a markdown file, continuations joined, `...` and comments dropped."""
    block = "\n".join(line[4:] for line in text.splitlines() if line.startswith("    "))
    block = block.replace(" ...", " ")
    return shell_commands(block)


def _python_strings(cells: list[str]) -> dict:
    """The notebook's string variables: `NAME = "..."` and `NAME = f"..."`, in cell order."""
    namespace: dict = {}
    for source in cells:
        tree = ast.parse(_python_only(source))
        for node in tree.body:
            if isinstance(node, ast.Assign) and isinstance(node.value, ast.Constant | ast.JoinedStr):
                try:
                    value = eval(compile(ast.Expression(node.value), "<cell>", "eval"), {}, dict(namespace))
                except NameError:
                    continue
                for target in node.targets:
                    if isinstance(target, ast.Name):
                        namespace[target.id] = value
    return namespace


def _python_only(source: str) -> str:
    return "\n".join("" if line.lstrip().startswith(("!", "%")) else line for line in source.splitlines())


def notebook_commands(path: str, overrides: dict | None = None) -> list[tuple[str, list[str]]]:
    with open(path) as f:
        notebook = json.load(f)
    cells = ["".join(cell["source"]) for cell in notebook["cells"] if cell["cell_type"] == "code"]
    namespace = {**_python_strings(cells), **(overrides or {})}
    commands = []
    for source in cells:
        for line in source.splitlines():
            if line.lstrip().startswith("!"):
                shell = re.sub(r"\{(\w+)\}", lambda m: str(namespace.get(m.group(1), m.group(0))), line.lstrip()[1:])
                commands += shell_commands(shell, {k: str(v) for k, v in namespace.items()})
        for node in ast.walk(ast.parse(_python_only(source))):
            if isinstance(node, ast.List) and all(isinstance(e, ast.Constant | ast.JoinedStr) for e in node.elts):
                try:
                    values = [eval(compile(ast.Expression(e), "<cell>", "eval"), {}, dict(namespace))
                              for e in node.elts]
                except NameError:
                    continue
                commands += _commands_in_tokens([str(v) for v in values])
    return commands


def all_commands() -> list[tuple[str, str, list[str]]]:
    found = []
    for path in sorted(glob.glob(os.path.join(LAUNCH, "*.sh"))):
        with open(path) as f:
            found += [(os.path.basename(path), m, a) for m, a in shell_commands(f.read())]
    readme = os.path.join(LAUNCH, "README.md")
    if os.path.exists(readme):
        with open(readme) as f:
            found += [("README.md", m, a) for m, a in readme_commands(f.read())]
    found += [("colab_tpu.ipynb", m, a) for m, a in notebook_commands(os.path.join(LAUNCH, "colab_tpu.ipynb"))]
    return found


COMMANDS = all_commands()


def _module_flags(module_name: str) -> dict:
    """The absl flags `python -m module_name` accepts: its own, those of the modules it imports, absl's."""
    module = importlib.import_module(module_name)
    imported = {module_name}
    for node in ast.walk(ast.parse(open(module.__file__).read())):
        if isinstance(node, ast.ImportFrom) and node.module:
            imported |= {node.module} | {f"{node.module}.{alias.name}" for alias in node.names}
        elif isinstance(node, ast.Import):
            imported |= {alias.name for alias in node.names}
    accepted = {}
    for owner, owned in flags.FLAGS.flags_by_module_dict().items():
        if owner in imported or owner.startswith("absl."):
            accepted.update({flag.name: flag for flag in owned})
    return accepted


def check_command(module_name: str, arguments: list[str]) -> list[str]:
    """Problems with `python -m module_name arguments` (empty: it would parse); nothing is run."""
    if importlib.util.find_spec(module_name.split(".")[0]) is None or importlib.util.find_spec(module_name) is None:
        return [f"no module {module_name}"]
    if module_name.split(".")[0] not in PROJECT_PACKAGES:
        return []
    accepted = _module_flags(module_name)
    problems, config_args = [], []
    for argument in arguments:
        if not argument.startswith("--"):
            problems.append(f"positional argument {argument!r}")
            continue
        name, has_value, value = argument[2:].partition("=")
        if name == "config" or name.startswith("config."):
            config_args.append(argument)
            continue
        flag = accepted.get(name)
        if flag is None and name.startswith("no") and name[2:] in accepted and accepted[name[2:]].boolean:
            flag, has_value = accepted[name[2:]], False
        if flag is None:
            problems.append(f"{module_name} defines no flag --{name}")
        elif has_value:
            try:
                copy.deepcopy(flag).parse(value)
            except Exception as error:  # noqa: BLE001 (absl's IllegalFlagValueError and parser errors)
                problems.append(f"--{name}={value}: {error}")
    if config_args:
        if "config" not in accepted:
            return problems + [f"{module_name} defines no --config"]
        problems += check_config_arguments(config_args)
    return problems


def check_config_arguments(config_args: list[str]) -> list[str]:
    """Parses --config=FILE:ARG and its --config.a.b=v overrides with ml_collections' config_flags (locked, like
    experiments/voc.py), after the project's rewriting of old flat keys."""
    try:
        from difnet_jax import config_compat

        config_args = config_compat.rewrite_argv(config_args)
    except ImportError:
        pass
    argv = ["launch", *config_args]
    values = flags.FlagValues()
    config_flags.DEFINE_config_file("config", None, "", flag_values=values, lock_config=True, sys_argv=argv)
    try:
        values(argv)
        values.config.to_dict()  # loaded and overridden
    except Exception as error:  # noqa: BLE001
        return [f"config {' '.join(config_args)}: {type(error).__name__}: {str(error).strip()[:400]}"]
    return []


def test_every_launch_file_holds_the_commands_it_should():
    sources = {}
    for source, module, _ in COMMANDS:
        sources.setdefault(source, set()).add(module)
    assert sources["single_gpu.sh"] >= {"experiments.prepare_data", "experiments.voc"}
    assert sources["multi_host.sh"] == {"experiments.voc"}
    assert sources["colab_tpu.ipynb"] >= {"experiments.prepare_data", "experiments.voc"}
    assert sum(1 for s, m, _ in COMMANDS if s == "multi_host.sh") == 2  # DIST: --distributed or coordinator flags


@pytest.mark.parametrize("source,module,arguments", COMMANDS,
                         ids=[f"{s}:{m}:{i}" for i, (s, m, _) in enumerate(COMMANDS)])
def test_launch_command_names_a_module_flags_and_config_keys_that_exist(source, module, arguments):
    assert check_command(module, arguments) == [], f"{source}: python -m {module} {' '.join(arguments)}"


def test_the_checker_finds_stale_commands():
    config = "--config=experiments/configs/voc.py:difnet18,synthetic"
    assert check_command("experiments.voc", [config, "--workdir=w"]) == []
    assert check_command("experiments.no_such_entry_point", []) == ["no module experiments.no_such_entry_point"]
    assert any("--epochs" in p for p in check_command("experiments.voc", [config, "--workdir=w", "--epochs=3"]))
    assert check_command("experiments.voc", [config, "--workdir=w", "--config.train.no_such_key=1"])
    assert check_command("experiments.voc", ["--config=experiments/configs/voc.py:difnet7", "--workdir=w"])
    assert check_command("experiments.voc", [config, "--workdir=w", "--num_processes=many"])
    assert check_command("experiments.prepare_data", ["--dataset=imagenet"])
    assert check_command("experiments.voc", [config, "--workdir=w", "--config.model.walks=(1,3,5)"]) == []


def test_shell_parsing_joins_lines_expands_variables_and_arrays():
    script = ('CONFIG=${CONFIG:-difnet50}\nWORKDIR=${WORKDIR:-runs/$CONFIG}\nif x; then\n  A=(--a="$X")\nelse\n'
              '  A=(--b)\nfi\nexec "$PYTHON" -m pkg.mod "${A[@]}" --config=c.py:$CONFIG \\\n'
              '  --workdir="$WORKDIR" "$@"\n')
    assert shell_commands(script, {"X": "1"}) == [
        ("pkg.mod", ["--a=1", "--config=c.py:difnet50", "--workdir=runs/difnet50"]),
        ("pkg.mod", ["--b", "--config=c.py:difnet50", "--workdir=runs/difnet50"]),
    ]


def test_notebook_commands_run_at_smoke_size(tmp_path):
    """The notebook's own commands, its variables set to a tiny synthetic run: prepare, train one step, evaluate;
    then what its watch cell reads from metrics.jsonl is there."""
    data_dir, workdir = str(tmp_path / "tfds"), str(tmp_path / "run")
    commands = notebook_commands(os.path.join(LAUNCH, "colab_tpu.ipynb"), {
        "MANUAL_DIR": "", "DATA_DIR": data_dir, "CONFIG": "simdeeplab18,synthetic", "WORKDIR": workdir})
    tiny = {"experiments.prepare_data": ["--dataset=synthetic_shapes/tiny"],
            "experiments.voc": ["--config.data.name=synthetic_shapes/tiny", "--config.train.num_steps=1",
                                "--config.model.width=8", "--config.model.aspp_rates=(1,2)",
                                "--config.data.crop_size=33", "--config.train.batch_size=2",
                                "--config.train.eval_batch_size=4", "--config.train.log_every=1"]}
    # XLA's optimisations off: about half the compile time; the commands' plumbing is under test, not speed.
    env = {**os.environ, "PYTHONPATH": ROOT, "JAX_PLATFORMS": "cpu", "JAX_DISABLE_MOST_OPTIMIZATIONS": "1"}
    assert [m for m, _ in commands] == ["experiments.prepare_data", "experiments.voc"]
    for module, arguments in commands:
        arguments = [a for a in arguments if not a.startswith("--dataset=")] + tiny[module]  # voc_aug: no archives
        assert check_command(module, arguments) == []
        process = subprocess.run([sys.executable, "-m", module, *arguments], cwd=ROOT, env=env,
                                 capture_output=True, text=True, timeout=300)
        assert process.returncode == 0, process.stdout[-2000:] + process.stderr[-3000:]
    with open(os.path.join(workdir, "metrics.jsonl")) as f:
        rows = [json.loads(line) for line in f]
    assert any("loss" in r for r in rows) and any("val/miou" in r for r in rows)

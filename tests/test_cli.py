"""Every command line turns a user's mistake into one line and exit code 2, through the real entry points.

Each case runs `python -m experiments.<command> ...` (forked from one process that imported the libraries once:
tests/forked_commands.py) and asserts the exit code 2, at most two lines of output naming the key, value or path,
and no traceback. The
workdirs are fakes: a config.json (and an empty checkpoint folder) is all the refusals read.
"""

import ast
import json
import logging
import os
import socket
import subprocess
import sys
import tempfile
import textwrap
import tomllib

import pytest

from difnet_jax import predict
from difnet_jax.data import pipeline
from difnet_jax.user_errors import DatasetNotPreparedError
from experiments.configs.voc import get_config
from tests.forked_commands import run_commands

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SYNTHETIC = "--config=experiments/configs/voc.py:difnet18,synthetic"


def _write_config(workdir, arg):
    os.makedirs(workdir, exist_ok=True)
    with open(os.path.join(workdir, "config.json"), "w") as f:
        f.write(get_config(arg).to_json_best_effort())


@pytest.fixture(scope="module")
def paths(tmp_path_factory):
    root = tmp_path_factory.mktemp("cli")
    p = {name: str(root / name) for name in ("no_checkpoints", "fake_run", "simdeeplab_run", "tfds", "run", "in",
                                             "only_text", "out", "blocker", "training")}
    _write_config(p["no_checkpoints"], "difnet18,synthetic")
    _write_config(p["fake_run"], "difnet18,synthetic")
    os.makedirs(os.path.join(p["fake_run"], "checkpoints", "2"))  # a step folder is all orbax lists
    with open(os.path.join(p["fake_run"], "checkpoints", "2", "_CHECKPOINT_METADATA"), "w") as f:
        json.dump({}, f)
    _write_config(p["simdeeplab_run"], "simdeeplab18,synthetic")
    for folder, names in ((p["in"], ("a.png", "notes.txt")), (p["only_text"], ("notes.txt",))):
        os.makedirs(folder)
        for name in names:
            open(os.path.join(folder, name), "wb").close()
    open(p["blocker"], "w").close()
    # A training that runs (this process holds its lock), has logged step 10 at 2 steps/s, has no checkpoint yet
    _write_config(p["training"], "difnet18,synthetic")
    with open(os.path.join(p["training"], "training.lock"), "w") as f:
        json.dump({"host": socket.gethostname(), "pid": os.getpid(), "started": "2026-12-06T20:00:00"}, f)
    with open(os.path.join(p["training"], "metrics.jsonl"), "w") as f:
        f.write(json.dumps({"step": 10, "loss": 1.0, "steps_per_sec": 2.0}) + "\n")
    p["first_checkpoint"] = str(min(get_config("difnet18,synthetic").train.checkpoint_every,
                                    get_config("difnet18,synthetic").train.num_steps))
    return p


# id -> (module, arguments with {name} paths, what the message must name)
CASES = {
    "misspelt_key": ("voc", [SYNTHETIC, "--config.model.depthh=18", "--workdir={run}"],
                     ["--config.model.depthh=18", "config.model has no key 'depthh'", "did you mean 'depth'?"]),
    "misspelt_section": ("voc", [SYNTHETIC, "--config.mode.depth=18", "--workdir={run}"],
                         ["config has no key 'mode'", "did you mean 'model'?"]),
    "invalid_depth": ("voc", [SYNTHETIC, "--config.model.depth=19", "--workdir={run}"],
                      ["config.model.depth=19 is invalid", "one of (18, 34, 50, 101)"]),
    "negative_lr": ("voc", [SYNTHETIC, "--config.train.lr=-1", "--workdir={run}"],
                    ["config.train.lr=-1.0 is invalid", "positive"]),
    "variant_typo": ("voc", ["--config=experiments/configs/voc.py:difnet19", "--workdir={run}"],
                     ["'difnet19' is not a model variant", "did you mean 'difnet18'?"]),
    "modifier_typo": ("voc", ["--config=experiments/configs/voc.py:difnet18,synthetc", "--workdir={run}"],
                      ["unknown modifier(s) ['synthetc']", "did you mean 'synthetic'?"]),
    "missing_config_file": ("voc", ["--config=experiments/configs/vocc.py:difnet18", "--workdir={run}"],
                            ["'experiments/configs/vocc.py' does not exist", "experiments/configs/voc.py"]),
    "data_not_prepared": ("voc", ["--config=experiments/configs/ade20k.py:difnet18",
                                  "--config.data.data_dir={tfds}/typo", "--workdir={run}"],
                          ["'ade20k' is not prepared", "{tfds}/typo",
                           "python -m experiments.prepare_data --dataset=ade20k"]),
    "resume_other_model": ("voc", [SYNTHETIC, "--workdir={simdeeplab_run}"],
                           ["Refusing to resume {simdeeplab_run}", "model.name: 'simdeeplab' -> 'difnet'"]),
    "unwritable_workdir": ("voc", [SYNTHETIC, "--workdir={blocker}/run"], ["{blocker}/run", "not writable"]),
    "evaluate_no_checkpoint": ("evaluate", ["--workdir={no_checkpoints}"], ["no checkpoints in '{no_checkpoints}'"]),
    "evaluate_missing_workdir": ("evaluate", ["--workdir={run}_nowhere"], ["workdir '{run}_nowhere' does not exist"]),
    "evaluate_step": ("evaluate", ["--workdir={fake_run}", "--step=999"],
                      ["no checkpoint for step 999", "its steps: 2"]),
    "evaluate_scales": ("evaluate", ["--workdir={fake_run}", "--scales=0.5,abc"],
                        ["--scales=0.5,abc", "'abc' is not a number"]),
    "mechanism_no_checkpoint": ("mechanism", ["--workdir={no_checkpoints}"], ["no checkpoints in '{no_checkpoints}'"]),
    "predict_missing_input": ("predict", ["--workdir={fake_run}", "--input={in}_nowhere", "--output={out}"],
                              ["input '{in}_nowhere' does not exist"]),
    # The text file is counted and skipped before the model loads; then the missing checkpoint stops it.
    "predict_no_checkpoint": ("predict", ["--workdir={no_checkpoints}", "--input={in}", "--output={out}"],
                              ["Skipping 1 file(s) that are not images", "no checkpoints in '{no_checkpoints}'"]),
    "predict_no_images": ("predict", ["--workdir={fake_run}", "--input={only_text}", "--output={out}"],
                          ["no image files in '{only_text}'", "1 other file"]),
    "prepare_without_manual_dir": ("prepare_data", ["--dataset=voc_aug", "--data_dir={tfds}/prepare"],
                                   ["--manual_dir is required to prepare voc_aug", "difnet_jax/data/voc_aug.py"]),
    # Flag combinations the run cannot do are refused before the model loads (issue 29).
    "evaluate_propagate_without_affinity_head": ("evaluate", ["--workdir={fake_run}", "--propagate=1,3"],
                                                 ["--propagate needs a model with an affinity head",
                                                  "'difnet' has none", "--propagate_oracle"]),
    "evaluate_oracle_with_flip": ("evaluate", ["--workdir={fake_run}", "--propagate_oracle=1", "--flip"],
                                  ["need single-scale, unflipped evaluation", "--flip"]),
    "evaluate_oracle_with_scales": ("evaluate", ["--workdir={fake_run}", "--propagate_oracle=1,3",
                                                 "--scales=0.75,1,1.25"], ["--scales=0.75,1,1.25"]),
    "evaluate_empty_workdir": ("evaluate", ["--workdir="], ["--workdir=", "the value is empty"]),
    "train_empty_workdir": ("voc", [SYNTHETIC, "--workdir="], ["--workdir=", "the value is empty"]),
    "evaluate_training_before_its_first_checkpoint": (
        "evaluate", ["--workdir={training}"],
        ["no checkpoints in '{training}' yet: a training is running there", f"pid {os.getpid()}",
         "first checkpoint comes at step {first_checkpoint}", "config.train.checkpoint_every", "at step 10's"]),
    "mechanism_unwritable_output": ("mechanism", ["--workdir={fake_run}", "--output_dir={blocker}/out"],
                                    ["output folder '{blocker}/out' is not writable", "--output_dir"]),
    "compare_unwritable_out": ("compare", ["--workdirs={fake_run}", "--out={blocker}/out"],
                               ["output folder '{blocker}/out' is not writable", "--out"]),
    "compare_missing_workdir": ("compare", ["--workdirs={fake_run},{run}_nowhere", "--out={out}/compare"],
                                ["--workdirs: '{run}_nowhere' does not exist", "--skip_missing"]),
    "prepare_generated_uncompressed": ("prepare_data", ["--dataset=synthetic_shapes/tiny", "--data_dir={tfds}/prepare",
                                                        "--image_storage=uncompressed"],
                                       ["image_storage='uncompressed' applies to the downloaded datasets"]),
}


def _run(arguments, **env):
    environment = {k: v for k, v in os.environ.items() if k != "DIFNET_TRACEBACK"}
    return subprocess.run([sys.executable, *arguments], cwd=REPO, capture_output=True, text=True, timeout=300,
                          env={**environment, "JAX_PLATFORMS": "cpu", **env})


@pytest.fixture(scope="module")
def results(paths):
    """Every case's CompletedProcess, forked from one process that imported the libraries once
    (tests/forked_commands.py: about 5 s of CPU in all instead of 60 s for as many fresh interpreters)."""
    environment = {k: v for k, v in os.environ.items() if k != "DIFNET_TRACEBACK"}
    return run_commands({case: ["-m", f"experiments.{module}", *(a.format(**paths) for a in arguments)]
                         for case, (module, arguments, _) in CASES.items()}, {**environment, "JAX_PLATFORMS": "cpu"})


@pytest.mark.parametrize("case", list(CASES))
def test_user_error_is_one_line_and_exit_code_2(case, results, paths):
    process, expected = results[case], [e.format(**paths) for e in CASES[case][2]]
    output = process.stdout + process.stderr
    lines = [line for line in output.splitlines() if line.strip()]
    assert process.returncode == 2, output[-3000:]
    assert "Traceback" not in output and 1 <= len(lines) < 3, output[-3000:]
    assert lines[-1].startswith("error: ")
    for text in expected:
        assert text in output, (text, output)


def test_refusals_create_nothing(results, paths):
    assert results["data_not_prepared"].returncode == 2 and results["prepare_without_manual_dir"].returncode == 2
    assert not os.path.exists(paths["tfds"])  # no voc_aug/ or downloads/ folders on the path looked in
    assert not os.path.exists(paths["out"])  # predict stopped before its output folder, compare before its --out
    assert not os.path.exists(paths["run"])  # no empty workdir of a training refused for its unprepared dataset
    assert sorted(os.listdir(paths["simdeeplab_run"])) == ["config.json"]  # the refused resume wrote nothing
    assert sorted(os.listdir(paths["fake_run"])) == ["checkpoints", "config.json"]  # no mechanism/ or reports
    assert sorted(os.listdir(paths["training"])) == ["config.json", "metrics.jsonl", "training.lock"]


def test_ctrl_c_is_one_line_exit_130_and_removes_the_output_folder_it_created(tmp_path):
    """cli.run's interrupt path, through a command of its own: main() creates its --out and a file in it, then
    Ctrl-C comes (the real commands: test_eval_output.py)."""
    script = tmp_path / "command.py"
    script.write_text(textwrap.dedent(f"""
        import os, signal, sys, time
        sys.path.insert(0, {REPO!r})
        from absl import flags
        from experiments import cli
        _OUT = flags.DEFINE_string("out", None, "")

        def main():
            os.makedirs(os.path.join(_OUT.value, "sub"))
            open(os.path.join(_OUT.value, "sub", "half.json"), "w").write("{{")
            os.kill(os.getpid(), signal.SIGINT)
            time.sleep(30)

        cli.run(main, outputs=(lambda: _OUT.value,))
    """))
    out = tmp_path / "new" / "out"
    (tmp_path / "new").mkdir()
    process = _run([str(script), f"--out={out}"])
    lines = [line for line in (process.stdout + process.stderr).splitlines() if line.strip()]
    assert process.returncode == 130 and lines == [f"interrupted (Ctrl-C): removed the unfinished {out}"], lines
    assert sorted(os.listdir(tmp_path / "new")) == []  # the folder it found stays, the one it made is gone


def test_help_exits_0_and_lists_the_flags():
    process = _run(["-m", "experiments.voc", "--help"])
    assert process.returncode == 0, process.stderr
    assert "--config" in process.stdout and "--workdir" in process.stdout and "--[no]verbose" in process.stdout


def test_program_bugs_keep_their_traceback_and_user_errors_show_it_on_request(tmp_path):
    script = tmp_path / "command.py"
    script.write_text(textwrap.dedent(f"""
        import sys
        sys.path.insert(0, {REPO!r})
        from absl import flags
        from difnet_jax.user_errors import ConfigError
        from experiments import cli
        _KIND = flags.DEFINE_string("kind", "bug", "")

        def main():
            if _KIND.value == "bug":
                raise KeyError("a program bug")
            raise ConfigError("config.x=1 is invalid")

        cli.run(main)
    """))
    bug = _run([str(script), "--kind=bug"])
    assert bug.returncode == 1 and "Traceback" in bug.stderr and "KeyError: 'a program bug'" in bug.stderr
    user = _run([str(script), "--kind=user"])
    assert user.returncode == 2 and user.stderr.strip() == "error: config.x=1 is invalid"
    for shown in (_run([str(script), "--kind=user", "--verbose"]), _run([str(script), "--kind=user"],
                                                                      DIFNET_TRACEBACK="1")):
        assert shown.returncode == 2 and "Traceback" in shown.stderr
        assert shown.stderr.strip().endswith("error: config.x=1 is invalid")


def test_a_bug_in_a_config_file_keeps_its_traceback(tmp_path):
    (tmp_path / "broken.py").write_text("def get_config(arg):\n    return arg.no_such_method()\n")
    process = _run(["-m", "experiments.voc", f"--config={tmp_path / 'broken.py'}:x", f"--workdir={tmp_path}"])
    assert process.returncode == 1 and "Traceback" in process.stderr and "no_such_method" in process.stderr


def test_prepare_refuses_a_real_dataset_without_manual_dir_and_creates_nothing(tmp_path, monkeypatch):
    data_dir = tmp_path / "tfds"
    (tmp_path / "temp").mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path / "temp"))  # where TFDS would leave its tmp*tfds folder
    with pytest.raises(DatasetNotPreparedError, match=r"'voc_aug' is not prepared in data_dir .*tfds") as error:
        pipeline.prepare("voc_aug", str(data_dir))
    assert "python -m experiments.prepare_data --dataset=voc_aug" in str(error.value)
    assert isinstance(error.value, FileNotFoundError)  # code catching the built-in still does
    assert not data_dir.exists()
    assert os.listdir(tmp_path / "temp") == []  # no empty tmp*tfds folder per look at it (tfds_side_effects)


def test_dataset_generation_logs_plain_lines_where_stderr_is_no_terminal(caplog, monkeypatch):
    from tensorflow_datasets.core import utils as tfds_utils

    from difnet_jax.data import tfds_side_effects

    monkeypatch.setattr(tfds_side_effects, "LINE_EVERY_S", 0.0)
    with tfds_side_effects.plain_progress(), caplog.at_level(logging.INFO, logger="difnet_jax"):
        assert list(tfds_utils.tqdm(range(3), desc="Generating train examples...", unit=" examples")) == [0, 1, 2]
        with tfds_utils.async_tqdm(total=0, desc="Extraction completed...", unit=" file") as bar:
            bar.update_total(2)
            bar.update(2)
    lines = [r.getMessage() for r in caplog.records]
    assert lines[:3] == [f"Generating train examples: {n}/3 examples ({0} s)" for n in (1, 2, 3)], lines
    assert lines[-1].startswith("Extraction completed: 2/2 file") and not any("\x1b" in line for line in lines)


def test_predict_inputs_are_image_files_by_extension(tmp_path):
    for name in ("b.JPG", "a.png", "notes.txt", "c.jpeg", ".hidden.png"):
        (tmp_path / name).write_bytes(b"")
    found = predict.find_inputs(str(tmp_path))
    assert found.images == [str(tmp_path / n) for n in ("a.png", "b.JPG", "c.jpeg")]
    assert found.skipped == [str(tmp_path / "notes.txt")]
    assert predict.find_inputs(str(tmp_path / "notes.txt")).images == [str(tmp_path / "notes.txt")]  # named: tried


def test_console_scripts_name_entry_points_that_exist():
    with open(os.path.join(REPO, "pyproject.toml"), "rb") as f:
        project = tomllib.load(f)
    scripts = project["project"]["scripts"]
    assert "difnet-train" in scripts and scripts["difnet-train"] == "experiments.voc:run"
    for target in scripts.values():  # read, not imported: two command modules define the same absl flags
        module, function = target.split(":")
        with open(os.path.join(REPO, *module.split(".")) + ".py") as f:
            tree = ast.parse(f.read())
        assert function in {node.name for node in tree.body if isinstance(node, ast.FunctionDef)}, target

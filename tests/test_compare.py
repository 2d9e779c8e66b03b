"""difnet_jax.studies.compare and its CLI: the table's rows and marks, the figures, refused and skipped workdirs."""

import json
import os
import shutil
import subprocess
import sys

import pytest
from PIL import Image

from difnet_jax.studies import compare
from tests.test_tensorboard import tiny_trained_workdir

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _edit_json(path, edit):
    with open(path) as f:
        data = json.load(f)
    edit(data)
    with open(path, "w") as f:
        json.dump(data, f)


def _rewrite_metrics(workdir, edit):
    path = os.path.join(workdir, "metrics.jsonl")
    records = [edit(json.loads(line)) for line in open(path)]
    with open(path, "w") as f:
        f.writelines(json.dumps(r) + "\n" for r in records if r is not None)


def _copy(source, target, *, with_checkpoints=True):
    shutil.copytree(source, target, ignore=None if with_checkpoints else shutil.ignore_patterns("checkpoints"))
    return str(target)


@pytest.fixture(scope="module")
def workdirs(tiny_data_dir, tmp_path_factory):
    """A trained run, a copy logged as if better, and copies broken in each way the command skips or refuses."""
    run = tiny_trained_workdir(tiny_data_dir, str(tmp_path_factory.getbasetemp()))
    base = tmp_path_factory.mktemp("compare")
    better = _copy(run, base / "better")

    def improve(record):
        if "val/miou" in record:
            record["val/miou"] += 0.25
            record["val/iou"]["background"] = 0.99
        return record

    _rewrite_metrics(better, improve)
    unfinished = _copy(run, base / "unfinished", with_checkpoints=False)
    _edit_json(os.path.join(unfinished, "config.json"), lambda c: c["train"].update(num_steps=10))
    no_eval = _copy(run, base / "no_eval", with_checkpoints=False)
    _rewrite_metrics(no_eval, lambda r: None if "val/miou" in r else r)
    other_dataset = _copy(run, base / "other_dataset", with_checkpoints=False)
    _edit_json(os.path.join(other_dataset, "config.json"), lambda c: c["data"].update(name="voc_aug"))
    return {"run": run, "better": better, "unfinished": unfinished, "no_eval": no_eval,
            "other_dataset": other_dataset, "missing": str(base / "missing")}


def _table_rows(markdown):
    lines = [line for line in markdown.splitlines() if line.startswith("| ")]
    header = [cell.strip() for cell in lines[0].strip("|").split("|")]
    return [dict(zip(header, (cell.strip() for cell in line.strip("|").split("|")))) for line in lines[2:]]


def test_compare_writes_the_table_and_figures_and_names_what_it_skips(workdirs, tmp_path):
    names = ["run", "better", "unfinished", "no_eval", "missing"]
    result = compare.compare([workdirs[name] for name in names], str(tmp_path / "out"), num_images=2)
    assert [os.path.basename(p) for p in result["paths"]] == ["compare.md", "curves.png", "examples.png"]
    for path in result["paths"][1:]:
        with Image.open(path) as image:
            assert image.format == "PNG" and min(image.size) > 300, (path, image.size)

    markdown = open(result["paths"][0]).read()
    rows = _table_rows(markdown)
    assert [row["run"] for row in rows] == ["tiny_difnet_logged", "better"]
    records = [json.loads(line) for line in open(os.path.join(workdirs["run"], "metrics.jsonl"))]
    final = [r for r in records if "val/miou" in r][-1]
    for row in rows:
        assert (row["model"], row["variant"], row["depth"]) == ("difnet", "difnet18", "18")
        assert row["dataset"] == "synthetic_shapes/tiny (validation)" and row["steps"] == "2"
        assert int(row["parameters"].replace(",", "")) > 0 and float(row["train images/s"]) > 0
    assert rows[0]["final mIoU (%)"] == f"{100 * final['val/miou']:.2f}"  # the worse run: not marked
    assert rows[1]["final mIoU (%)"] == f"**{100 * (final['val/miou'] + 0.25):.2f}**"
    assert rows[1]["best mIoU (%) (step)"].startswith("**") and rows[1]["IoU background (%)"] == "**99.00**"
    assert rows[0]["pixel accuracy (%)"] == rows[1]["pixel accuracy (%)"] == f"{100 * final['val/pixel_accuracy']:.2f}"
    assert len([header for header in rows[0] if header.startswith("IoU ")]) == 21

    assert result["skipped"] == [f"{workdirs['unfinished']}: unfinished (trained to step 2 of 10)",
                                 f"{workdirs['no_eval']}: no evaluation in metrics.jsonl",
                                 f"{workdirs['missing']}: missing (no such directory)"]
    assert all(reason in markdown for reason in result["skipped"])


def test_runs_of_different_datasets_are_refused_with_both_named(workdirs, tmp_path, capsys):
    out = tmp_path / "out"
    with pytest.raises(compare.DatasetMismatch, match="synthetic_shapes/tiny.*voc_aug"):
        compare.compare([workdirs["run"], workdirs["other_dataset"]], str(out))
    assert not out.exists()
    result = subprocess.run(  # the CLI in its own process: its flags stay out of this one's
        [sys.executable, "-m", "experiments.compare", f"--workdirs={workdirs['run']},{workdirs['other_dataset']}",
         f"--out={out}"], capture_output=True, text=True, timeout=300, cwd=REPO)
    assert result.returncode == 2
    assert "Refusing to compare" in result.stderr and workdirs["other_dataset"] in result.stderr and not out.exists()

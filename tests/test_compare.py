"""difnet_jax.studies.compare and its CLI: the table's rows and marks, the figures, refused and skipped workdirs."""

import json
import os
import shutil
import subprocess
import sys

import pytest
from PIL import Image

from difnet_jax.studies import compare

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
def workdirs(tiny_workdir, tiny_data_dir, tmp_path_factory):
    """A trained run, a copy logged as if better, and copies broken in each way the command skips or refuses."""
    run = tiny_workdir
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


def _table_rows(markdown, table=0):
    """The rows of the markdown's `table`-th table as dicts by header."""
    tables, previous = [], False
    for line in markdown.splitlines():
        is_row = line.startswith("| ")
        if is_row and not previous:
            tables.append([])
        if is_row:
            tables[-1].append(line)
        previous = is_row
    lines = tables[table]
    header = [cell.strip() for cell in lines[0].strip("|").split("|")]
    return [dict(zip(header, (cell.strip() for cell in line.strip("|").split("|")))) for line in lines[2:]]


def test_compare_writes_the_table_and_figures_and_names_what_it_skips(workdirs, tmp_path):
    names = ["run", "better", "unfinished", "no_eval", "missing"]
    result = compare.compare([workdirs[name] for name in names], str(tmp_path / "out"), num_images=2)
    assert [os.path.basename(p) for p in result["paths"]] == ["compare.md", "curves.png", "examples.png",
                                                                "seed_groups.json"]
    for path in result["paths"][1:3]:
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
    # "run" and "better" share their config and seed: one group of two runs, its seed marked as repeated
    [group] = _table_rows(markdown, table=1)
    assert (group["group"], group["n"], group["seeds"], group["runs"]) == (
        "G1", "2", "0, 0 (repeated)", "tiny_difnet_logged, better")
    mean = 100 * (final["val/miou"] + 0.125)
    assert group["final mIoU (%) mean ± std"] == f"{mean:.2f} ± {100 * 0.25 / 2 ** 0.5:.2f}"
    saved = json.load(open(os.path.join(str(tmp_path / "out"), "seed_groups.json")))
    assert saved["groups"][0]["val/miou"]["n"] == 2 and saved["differences"] == []


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


def _hand_made_run(base, name, seed, miou, lr=1.5e-3, steps=1000):
    """A workdir of config.json and metrics.jsonl only (no checkpoint): a finished run with final mIoU `miou`."""
    from experiments.configs.voc import get_config

    workdir = base / name
    workdir.mkdir()
    config = get_config("simdeeplab18,synthetic")
    config.train.seed, config.train.lr, config.train.num_steps = seed, lr, steps
    (workdir / "config.json").write_text(config.to_json_best_effort(indent=2))
    records = [{"step": steps, "loss": 0.5},
               {"step": steps // 2, "val/miou": miou - 0.1, "val/pixel_accuracy": 0.8, "val/iou": {}},
               {"step": steps, "val/miou": miou, "val/pixel_accuracy": 0.9 + seed / 100, "val/iou": {}}]
    (workdir / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    return str(workdir)


def test_seed_groups_mean_std_n_and_the_noise_verdict(tmp_path):
    made = [("a0", 0, 0.50), ("b0", 0, 0.525, 3e-3), ("a1", 1, 0.52), ("c0", 0, 0.60, 1e-2), ("a2", 2, 0.54),
            ("b1", 1, 0.545, 3e-3), ("d0", 0, 0.61, 5e-4), ("d1", 1, 0.63, 5e-4)]
    runs = [compare.read_run(_hand_made_run(tmp_path, name, seed, miou, *lr)) for name, seed, miou, *lr in made]
    for run, label in zip(runs, compare.run_labels([run.workdir for run in runs])):
        run.label = label
    groups = compare.seed_groups(runs)
    assert [[run.label for run in g.runs] for g in groups] == [["a0", "a1", "a2"], ["b0", "b1"], ["c0"], ["d0", "d1"]]
    a, b, c, d = groups
    assert (a.n, a.seeds, b.n, c.n) == (3, [0, 1, 2], 2, 1)
    mean, std = a.mean_std()
    assert mean == pytest.approx(0.52) and std == pytest.approx(0.02)  # sample std (n - 1) of .50, .52, .54
    assert b.mean_std()[1] == pytest.approx(0.02 / 2 ** 0.5) and c.mean_std() == (pytest.approx(0.60), None)
    assert a.mean_std("val/pixel_accuracy") == (pytest.approx(0.91), pytest.approx(0.01))
    within, outside, unknown = compare.difference(a, b), compare.difference(d, a), compare.difference(a, c)
    assert (within.delta, within.spread, within.verdict) == (pytest.approx(-0.015), pytest.approx(0.02),
                                                             "within noise")
    assert (outside.delta, outside.verdict) == (pytest.approx(0.10), "outside the spread")
    assert unknown.spread is None and unknown.verdict == "spread unknown (n = 1)"
    markdown = compare.seed_groups_markdown(groups)
    rows = _table_rows(markdown)
    assert [(r["group"], r["n"], r["seeds"], r["final mIoU (%) mean ± std"]) for r in rows] == [
        ("G1", "3", "0, 1, 2", "52.00 ± 2.00"), ("G2", "2", "0, 1", "53.50 ± 1.41"), ("G3", "1", "0", "60.00 ± n/a"),
        ("G4", "2", "0, 1", "62.00 ± 1.41")]
    assert "- G1 - G2: -1.50 mIoU points (spread 2.00): within noise" in markdown
    assert "- G1 - G4: -10.00 mIoU points (spread 2.00): outside the spread" in markdown
    saved = compare.seed_groups_json(groups)
    assert saved["groups"][0]["val/miou"]["values"] == [0.50, 0.52, 0.54]
    assert len(saved["differences"]) == 6 and saved["differences"][0]["verdict"] == "within noise"


def test_the_printed_headline_is_a_row_per_run(tmp_path):
    """What the CLI prints (with the report's path) instead of the whole compare.md."""
    runs = [compare.read_run(_hand_made_run(tmp_path, name, seed, miou))
            for name, seed, miou in (("a", 0, 0.7), ("b", 1, 0.65))]
    for run, label in zip(runs, compare.run_labels([run.workdir for run in runs])):
        run.label = label
    lines = compare.headline_table(runs).splitlines()
    assert lines[0].split("  ")[0] == "run" and "final mIoU (%)" in lines[0] and set(lines[1]) == {"-"}
    assert [line.split() for line in lines[2:]] == [["a", "1000", "70.00", "70.00", "(1000)", "90.00"],
                                                    ["b", "1000", "65.00", "65.00", "(1000)", "91.00"]]

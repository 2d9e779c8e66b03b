"""What an evaluation writes and prints: reports where asked (checked before evaluating, left nowhere by an
interrupted one), the per-class IoU as a table ending with mIoU and pixel accuracy and the heads in numeric
order, the confusion matrix in the Markdown only while it is readable, the CRF's time per image."""

import json
import os
import shutil
import signal
import subprocess
import sys

import numpy as np
import pytest

from difnet_jax import evaluate_run, trained_run
from difnet_jax.evaluation import metrics, report
from difnet_jax.user_errors import PathError
from tests.test_workdir_lock import LOCK_NAME, lock_held_by_another_process

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_an_unwritable_report_folder_fails_before_the_run_is_loaded(tmp_path, monkeypatch):
    def load_run(*args, **kwargs):
        raise AssertionError("the run was loaded before the report folder was checked")

    monkeypatch.setattr(trained_run, "load_run", load_run)
    blocker = tmp_path / "a_file"
    blocker.write_text("")
    with pytest.raises(PathError, match=r"report folder '.*a_file/reports' is not writable \(Not a directory\): "
                                        "choose another --output_dir"):
        evaluate_run.evaluate_workdir(str(tmp_path), output_dir=str(blocker / "reports"))


def _report(num_classes, seed=0):
    rng = np.random.default_rng(seed)
    confusion = rng.integers(0, 50, (num_classes, num_classes)) + np.diag(rng.integers(500, 1000, num_classes))
    names = [f"class{k}" for k in range(num_classes)]
    return report.build_report(confusion, names, model="difnet-18", dataset="d", split="validation", step=7,
                               num_images=3), confusion


def test_markdown_holds_the_matrix_up_to_25_classes_and_the_largest_confusions_beyond():
    small, _ = _report(21)
    markdown = report.report_markdown(small)
    assert "## Confusion matrix" in markdown and "| 20 class20 | " in markdown

    large, confusion = _report(150)
    large["confusion_matrix"][3][77] = confusion[3, 77] = 400  # the largest confusion: 3 taken for 77
    markdown = report.report_markdown(large)
    assert "## Confusion matrix" not in markdown and "whole 150x150 confusion matrix is in the JSON" in markdown
    first = markdown.split("| --- | --- | ---: | ---: |\n")[1].splitlines()[0]
    assert first == f"| 3 class3 | 77 class77 | 400 | {100 * 400 / confusion[3].sum():.2f} |"
    assert len(markdown.splitlines()) < 150 + 60  # one line per class and a few more, not 150 columns x rows
    assert np.array_equal(large["confusion_matrix"], confusion)  # the JSON keeps it whole


def test_the_printed_text_is_a_class_iou_table_ending_with_miou_and_pixel_accuracy():
    large, confusion = _report(150)
    lines = report.report_text(large).splitlines()
    summary = metrics.summarize(confusion, [f"class{k}" for k in range(150)])
    rows = [line for line in lines if line.startswith("class") and " | " in line]
    assert rows[0].split() == ["class", "|", "IoU"] and len(rows) == 151
    assert rows[1].split() == ["class0", "|", f"{summary['iou']['class0']:.4f}"]
    assert lines[-1] == f"mIoU {summary['miou']:.4f}, pixel accuracy {summary['pixel_accuracy']:.4f}"


def test_evaluate_cli_writes_to_output_dir_reading_a_workdir_in_use(tiny_workdir, tiny_data_dir, tmp_path):
    workdir = tmp_path / "in_use"
    shutil.copytree(tiny_workdir, workdir)
    out = tmp_path / "reports"
    with lock_held_by_another_process(workdir):
        lock_before = (workdir / LOCK_NAME).read_text()
        listing_before = sorted(os.listdir(workdir))
        done = subprocess.run([sys.executable, "-m", "experiments.evaluate", f"--workdir={workdir}",
                               f"--output_dir={out}"], cwd=ROOT, env={**os.environ, "PYTHONPATH": ROOT},
                              capture_output=True, text=True, timeout=600)
        assert done.returncode == 0, done.stderr[-3000:]
        assert (workdir / LOCK_NAME).read_text() == lock_before and sorted(os.listdir(workdir)) == listing_before
    assert sorted(os.listdir(out)) == ["eval_validation_step2.json", "eval_validation_step2.md"]
    saved = json.loads((out / "eval_validation_step2.json").read_text())
    assert np.shape(saved["confusion_matrix"]) == (21, 21)
    printed = done.stdout.splitlines()
    assert printed[-1] == f"mIoU {saved['miou']:.4f}, pixel accuracy {saved['pixel_accuracy']:.4f}"
    assert ["background", "|", f"{saved['iou']['background']:.4f}"] in [line.split() for line in printed]
    assert "Confusion" not in done.stdout


def test_ctrl_c_during_an_evaluation_is_one_line_exit_130_and_leaves_no_report_folder(tiny_workdir, tmp_path):
    out = tmp_path / "reports"
    process = subprocess.Popen([sys.executable, "-m", "experiments.evaluate", f"--workdir={tiny_workdir}",
                                f"--output_dir={out}"], cwd=ROOT, env={**os.environ, "PYTHONPATH": ROOT},
                               stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    before = []
    for line in process.stdout:  # Ctrl-C once the evaluation starts (it compiles, then reads the first batch)
        before.append(line)
        if "Evaluating" in line:
            process.send_signal(signal.SIGINT)
            break
    after = [line for line in process.communicate(timeout=300)[0].splitlines() if line.strip()]
    output = "".join(before) + "\n".join(after)
    assert process.returncode == 130, output[-3000:]
    assert "Traceback" not in output and after[-1] == "interrupted (Ctrl-C)" and len(after) <= 2, output[-3000:]
    assert not out.exists()  # checked for writing before the evaluation, created only to write the reports


def test_heads_come_in_numeric_order_and_the_crf_time_is_printed():
    from difnet_jax.evaluation.evaluator import EvalResult, head_mious

    eye = np.eye(2, dtype=np.int64)
    result = EvalResult(eye, 1, 0.0, head_confusions={"oracle_T10": eye, "oracle_T1": eye, "oracle_T3": eye,
                                                       "layer2": eye, "layer10": eye})
    assert list(head_mious(result)) == ["layer2", "layer10", "oracle_T1", "oracle_T3", "oracle_T10"]
    printed, _ = _report(2)
    printed["timing"] = {"crf_seconds_per_image": 0.2451, "part": "DifNet's cascade", "part_seconds_per_image": 0.0005}
    assert ("dense CRF: 245.1 ms per image (DifNet's cascade on the same canvas: 0.5 ms)"
            in report.report_text(printed).splitlines())

"""experiments.readme_figures: each figure is found on its page (README.md or a docs/ page), read from its output, and
compared at the page's digits; --check --from_runs exits 1 naming a figure that differs. Nothing is trained: the
outputs are hand-made."""

import json
import os
import re
import subprocess
import sys

from experiments import readme_figures
from experiments.readme_figures import FIGURES, read_pages, readme_figure, verdict

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _pages() -> dict[str, str]:
    return read_pages(os.path.join(REPO, "README.md"))


def test_every_figure_is_on_its_page_once():
    pages = _pages()
    assert [f.name for f in FIGURES if readme_figure(f, pages[f.page]) is None] == []
    assert len({f.name for f in FIGURES}) == len(FIGURES)
    assert {f.page for f in FIGURES} == {"README.md", "docs/evaluation.md"}


def test_a_figure_agrees_when_it_rounds_to_the_readmes_digits():
    assert verdict("0.674", 0.67449) == ("0.674", True)
    assert verdict("0.6738", 0.67375001) == ("0.6738", True)
    assert verdict("0.674", 0.6746) == ("0.675", False)
    assert verdict("0.674", None) == ("missing", False)
    assert verdict("0.????", 0.6) == ("0.6000", False)  # a placeholder never agrees
    assert verdict(None, 0.6) == ("0.6000", False)


def _write_outputs(root, pages):
    """Each output file with the pages' figures (the most digits where several figures share a key)."""
    values = {}
    for figure in FIGURES:
        printed = readme_figure(figure, pages[figure.page])
        known = values.setdefault(figure.output, {}).get(figure.key)
        if known is None or len(printed) > len(known):
            values[figure.output][figure.key] = printed
    for output, keys in values.items():
        path = os.path.join(root, output)
        os.makedirs(os.path.dirname(path), exist_ok=True)
        numbers = {key: float(value) for key, value in keys.items()}
        with open(path, "w") as f:
            if path.endswith(".jsonl"):
                f.write(json.dumps({"step": 1000, "loss": 0.1}) + "\n" + json.dumps({"step": 1000, **numbers}) + "\n")
            else:
                json.dump(numbers, f)


def _check(root):
    return subprocess.run([sys.executable, "-m", "experiments.readme_figures", "--check", "--from_runs",
                           f"--root={root}", f"--readme={root / 'README.md'}"], cwd=REPO, capture_output=True,
                          text=True, timeout=120)


def test_check_from_runs_exits_1_naming_the_figure_that_differs(tmp_path):
    pages = _pages()
    for figure in FIGURES:  # a figure its page does not print yet (a placeholder) gets a number here
        text = pages[figure.page]
        match = re.search(figure.readme, text)
        if not re.fullmatch(r"\d+\.\d+", match.group(1)):
            pages[figure.page] = text[:match.start(1)] + "0.5000" + text[match.end(1):]
    for page, text in pages.items():
        (tmp_path / page).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / page).write_text(text)
    _write_outputs(tmp_path, pages)
    agreeing = _check(tmp_path)
    assert agreeing.returncode == 0, agreeing.stdout + agreeing.stderr
    assert f"{len(FIGURES)} of {len(FIGURES)} figures agree" in agreeing.stdout

    report = tmp_path / readme_figures.FLIP[1]
    report.write_text(json.dumps({**json.loads(report.read_text()), "miou": 0.5}))
    differing = _check(tmp_path)
    assert differing.returncode == 1
    [line] = [line for line in differing.stdout.splitlines() if "DIFFERS" in line]
    assert line.startswith("Evaluation: flip mIoU") and "0.500" in line

"""The README and its docs/ pages cannot rot: every `python -m` command in them names a module, flags and config keys
that exist (checked with tests/test_launch.py's checker, nothing run), the cheap one runs, every relative link and
anchor resolves, every docs page is linked from the README, and docs/layout.md names every module that exists and no
other.

Commands are read from indented code lines (continuations joined, `&&` chains split, optional `[--flag]` brackets
dropped, `...` dropped) and from inline code spans that start with `python -m`; the placeholders VARIANT and NAME are
read as a variant and a dataset of the project.
"""

import glob
import importlib
import json
import os
import re
import shlex
import subprocess
import sys

import pytest

from tests.test_launch import PYTHON, check_command, check_config_arguments

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PAGES = ["README.md", *sorted(os.path.relpath(p, ROOT) for p in glob.glob(os.path.join(ROOT, "docs", "*.md"))),
         *sorted(os.path.relpath(p, ROOT) for p in glob.glob(os.path.join(ROOT, "docs", "methods", "*.md")))]
PLACEHOLDERS = {"VARIANT": "difnet18", "NAME": "voc_aug"}
OWN_PARSER = {"experiments.tensorboard", "pytest"}  # their arguments go to tensorboard's and pytest's own parsers
FLAGS_IN_MAIN = {"experiments.affinity_stats"}  # defines its flags when it runs, not at import


def _read(page: str) -> str:
    with open(os.path.join(ROOT, page)) as f:
        return f.read()


def _command(line: str) -> list[tuple[str, list[str]]]:
    """(module, arguments) of each `python -m` command of one shell line."""
    commands = []
    for part in line.split("&&"):
        try:
            tokens = shlex.split(part, comments=True)
        except ValueError:  # prose with an apostrophe
            continue
        tokens = [PLACEHOLDERS.get(t, t) for t in tokens]
        tokens = [re.sub(r"\b(VARIANT|NAME)\b", lambda m: PLACEHOLDERS[m.group(1)], t) for t in tokens]
        for i in range(len(tokens) - 2):
            if PYTHON.match(tokens[i]) and tokens[i + 1] == "-m":
                arguments = [t.strip("[]") for t in tokens[i + 3:] if t not in ("...", "\\")]
                commands.append((tokens[i + 2], arguments))
                break
    return commands


def page_commands(text: str) -> list[tuple[str, list[str]]]:
    """The `python -m` commands of a markdown page: indented code lines and inline `python -m ...` spans."""
    commands = []
    block = "\n".join(line[4:] for line in text.splitlines() if line.startswith("    ")).replace("\\\n", " ")
    for line in block.splitlines():
        if "python" in line:
            commands += _command(line)
    for span in re.findall(r"`((?:\S*/)?python3? -m [^`]+)`", text):
        if "..." not in span:
            commands += _command(span)
    return commands


COMMANDS = [(page, module, arguments) for page in PAGES for module, arguments in page_commands(_read(page))]


def test_the_pages_hold_their_commands():
    modules = {module for _, module, _ in COMMANDS}
    assert {"experiments.voc", "experiments.evaluate", "experiments.prepare_data", "experiments.predict",
            "experiments.mechanism", "experiments.compare", "experiments.claims", "pytest"} <= modules
    assert {page for page, _, _ in COMMANDS} >= {"README.md", "docs/datasets.md", "docs/evaluation.md",
                                                 "docs/methods/dilated_affinity.md"}


def test_commands_are_read_from_chains_options_placeholders_and_inline_spans():
    text = ("    python3 -m venv .venv && .venv/bin/python -m experiments.voc --config=c.py:VARIANT,synthetic \\\n"
            "        --workdir=w [--force]   # a comment\n"
            "Prose with `python -m experiments.evaluate --workdir=W --flip` and `python -m experiments.x ...`.\n")
    assert page_commands(text) == [("venv", [".venv"]),
                                   ("experiments.voc", ["--config=c.py:difnet18,synthetic", "--workdir=w", "--force"]),
                                   ("experiments.evaluate", ["--workdir=W", "--flip"])]


def check_commands(commands) -> list[str]:
    """Problems with each (page, module, arguments), nothing run. The entry points define flags of the same names
    (--dataset, --output, ...), so a module whose import meets one already defined by a module checked before
    deletes that one and imports again."""
    from absl import flags

    problems = []
    for module in dict.fromkeys(m for _, m, _ in commands):
        for _ in range(100):
            try:
                importlib.import_module(module)
                break
            except flags.DuplicateFlagError as error:  # also those the failed import defined before it
                names = {re.search(r"flag '([^']+)'", str(error)).group(1)}
                names |= {flag.name for flag in flags.FLAGS.flags_by_module_dict().get(module, [])}
                for name in names:
                    delattr(flags.FLAGS, name)
            except ImportError:
                break  # check_command names it
        problems += [f"{page}: python -m {module} {' '.join(arguments)}: {problem}"
                     for page, m, arguments in commands if m == module
                     for problem in _check(module, arguments)]
    return problems


def _check(module: str, arguments: list[str]) -> list[str]:
    if module in OWN_PARSER:
        return []
    if module not in FLAGS_IN_MAIN:
        return check_command(module, arguments)
    with open(importlib.import_module(module).__file__) as f:  # the flags' names, read from the source
        names = set(re.findall(r'DEFINE_\w+\(\s*"(\w+)"', f.read()))
    names |= {f"no{name}" for name in names}
    config = [a for a in arguments if a.startswith("--config")]
    return ([f"{module} defines no flag {a}" for a in arguments if a[2:].partition("=")[0] not in names | {"config"}] +
            (check_config_arguments(config) if config else []))


def test_every_documented_command_names_a_module_flags_and_config_keys_that_exist():
    """In a process of its own (the entry points' flags are imported into one absl registry)."""
    process = subprocess.run([sys.executable, "-m", "tests.test_docs"], cwd=ROOT, capture_output=True, text=True,
                             timeout=300, env={**os.environ, "PYTHONPATH": ROOT, "JAX_PLATFORMS": "cpu"})
    assert process.returncode == 0, process.stderr[-3000:]
    assert json.loads(process.stdout.splitlines()[-1]) == []


def test_the_readme_figures_table_runs_and_finds_every_figure():
    """The cheap command of the README: `python -m experiments.readme_figures` (no --check) reads the pages only."""
    process = subprocess.run([sys.executable, "-m", "experiments.readme_figures"], cwd=ROOT, capture_output=True,
                             text=True, timeout=120)
    assert process.returncode == 0, process.stdout + process.stderr
    assert "not there" not in process.stdout


def _slug(heading: str) -> str:
    """GitHub's anchor of a heading."""
    text = re.sub(r"[`*_]|\[([^\]]*)\]\([^)]*\)", lambda m: m.group(1) or "", heading.strip().lower())
    return re.sub(r"[^\w\- ]", "", text).replace(" ", "-")


def anchors(text: str) -> set[str]:
    found, seen = set(), {}
    in_fence = False
    for line in text.splitlines():
        in_fence ^= line.startswith("```")
        heading = re.match(r"#{1,6} (.*)", line)
        if heading and not in_fence:
            slug = _slug(heading.group(1))
            found.add(slug if slug not in seen else f"{slug}-{seen[slug]}")
            seen[slug] = seen.get(slug, 0) + 1
    return found


def links(text: str) -> list[str]:
    """The targets of the page's markdown links and images, outside code."""
    prose = "\n".join(line for line in text.splitlines() if not line.startswith("    "))
    prose = re.sub(r"```.*?```", "", prose, flags=re.S)
    prose = re.sub(r"`[^`\n]*`", "", prose)
    return re.findall(r"\]\(([^)\s]+)\)", prose)


@pytest.mark.parametrize("page", PAGES)
def test_every_relative_link_and_anchor_resolves(page):
    broken = []
    for target in links(_read(page)):
        if re.match(r"[a-z]+:", target):
            continue
        path, _, anchor = target.partition("#")
        resolved = os.path.normpath(os.path.join(os.path.dirname(page), path)) if path else page
        if not os.path.exists(os.path.join(ROOT, resolved)):
            broken.append(f"{target} (no {resolved})")
        elif anchor and resolved.endswith(".md") and anchor not in anchors(_read(resolved)):
            broken.append(f"{target} (no heading #{anchor} in {resolved})")
    assert broken == [], page


def test_every_docs_page_is_linked_from_the_readme():
    readme = _read("README.md")
    linked = {os.path.normpath(t.partition("#")[0]) for t in links(readme)}
    assert [p for p in PAGES[1:] if p not in linked] == []
    assert len(readme.splitlines()) <= 300


def test_every_source_path_named_exists():
    """`difnet_jax/...`, `experiments/...`, `benchmarks/...`, `tests/...`, `launch/...` in code spans (and
    `models/x.py`-style paths inside the library) name files that exist: a renamed module renames them."""
    missing = []
    for page in PAGES:
        text = _read(page)
        paths = re.findall(r"`((?:difnet_jax|experiments|benchmarks|tests|launch)/[\w./]*)`", text)
        paths += ["difnet_jax/" + p for p in re.findall(r"`((?:models|data|evaluation|studies)/[\w./]*\.py)`", text)]
        missing += [f"{page}: {p}" for p in paths if not os.path.exists(os.path.join(ROOT, p.rstrip("/")))]
        missing += [f"{page}: {name}" for name in re.findall(r"`((?:difnet_jax|experiments|benchmarks)\.[\w.]+)",
                                                               text) if not _importable_name(name)]
    assert missing == []


def _importable_name(dotted: str) -> bool:
    """`difnet_jax.a.b.NAME`: a module path that exists, then at most one name its source mentions."""
    path, parts = ROOT, dotted.split(".")
    while parts and any(os.path.exists(os.path.join(path, parts[0] + end)) for end in ("", ".py")):
        path = os.path.join(path, parts.pop(0))
    if not parts:
        return True
    source = path + ".py" if os.path.isfile(path + ".py") else os.path.join(path, "__init__.py")
    with open(source) as f:
        return len(parts) == 1 and re.search(rf"\b{parts[0]}\b", f.read()) is not None


def layout_paths(text: str) -> set[str]:
    """The paths of docs/layout.md's tree: 4 spaces of indentation, then 2 per level; a name ending in / opens a
    folder; continuation lines (wider indentation, prose) are skipped."""
    paths, stack = set(), []
    for line in text.splitlines():
        match = re.match(r"    ( *)([\w.][\w./-]*)(\s|$)", line)
        if not match or len(match.group(1)) % 2 or not re.search(r"\.\w+$|/$", match.group(2)):
            continue
        depth = len(match.group(1)) // 2
        stack = stack[:depth]
        name = match.group(2)
        paths.add("/".join([*stack, name.rstrip("/")]))
        if name.endswith("/"):
            stack.append(name.rstrip("/"))
    return paths


def test_the_layout_names_every_module_and_no_other():
    listed = layout_paths(_read("docs/layout.md"))
    tracked = subprocess.run(["git", "ls-files", "difnet_jax", "experiments", "benchmarks"], cwd=ROOT,
                             capture_output=True, text=True, check=True).stdout.split()
    modules = {p for p in tracked if p.endswith(".py")}
    unlisted = sorted(p for p in modules
                      if p not in listed and os.path.basename(p) != "__init__.py" and
                      not p.startswith("experiments/configs/"))
    assert unlisted == [], "docs/layout.md: add a line for each"
    gone = sorted(p for p in listed if not os.path.exists(os.path.join(ROOT, p)))
    assert gone == [], "docs/layout.md names files that do not exist"


if __name__ == "__main__":
    print(json.dumps(check_commands(COMMANDS)))

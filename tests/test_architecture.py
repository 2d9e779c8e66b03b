"""The library's shape, read from its source (no imports): short functions, and imports that point one way."""

import ast
import pathlib

import pytest

REPO = pathlib.Path(__file__).resolve().parents[1]
LIBRARY = REPO / "difnet_jax"
MAX_FUNCTION_LINES = 100

# room -> rooms (or modules) it must not import: a lower room importing a higher one.
NOT_IMPORTED_BY = {
    "difnet_jax.models": ("difnet_jax.train", "difnet_jax.trained_run", "difnet_jax.evaluate_run",
                          "difnet_jax.evaluation", "difnet_jax.studies", "difnet_jax.drawing"),
    "difnet_jax.data": ("difnet_jax.models", "difnet_jax.train", "difnet_jax.trained_run", "difnet_jax.evaluation",
                        "difnet_jax.studies"),
    "difnet_jax.evaluation": ("difnet_jax.train", "difnet_jax.trained_run", "difnet_jax.evaluate_run",
                              "difnet_jax.studies"),
    "difnet_jax.train": ("difnet_jax.backbone_weights.pretraining", "difnet_jax.trained_run", "difnet_jax.studies"),
}


def _modules():
    for path in sorted(LIBRARY.rglob("*.py")):
        parts = path.relative_to(REPO).with_suffix("").parts
        yield ".".join(parts[:-1] if parts[-1] == "__init__" else parts), path


def _imports(module: str, path: pathlib.Path) -> set[str]:
    names = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                package = module.split(".")[: -node.level] if path.name != "__init__.py" else \
                    module.split(".")[: len(module.split(".")) - node.level + 1]
                base = ".".join([*package, *([base] if base else [])])
            names.add(base)
            names.update(f"{base}.{alias.name}" for alias in node.names)
    return names


def test_no_function_in_the_library_is_over_100_lines():
    long = []
    for _, path in _modules():
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
                lines = node.end_lineno - node.lineno + 1
                if lines > MAX_FUNCTION_LINES:
                    long.append(f"{path.relative_to(REPO)}:{node.lineno} {node.name}: {lines} lines")
    assert not long, "split along a natural seam:\n" + "\n".join(long)


@pytest.mark.parametrize("room", sorted(NOT_IMPORTED_BY))
def test_imports_point_one_way(room):
    wrong = []
    for module, path in _modules():
        if module == room or module.startswith(room + "."):
            for name in sorted(_imports(module, path)):
                if any(name == high or name.startswith(high + ".") for high in NOT_IMPORTED_BY[room]):
                    wrong.append(f"{module} imports {name}")
    assert not wrong, "\n".join(wrong)

"""The project's shape: one floor of self-contained method files of at most 300 lines that share one Args block,
a common.py of plumbing of at most 900 lines (with its two modules augment.py and backbones.py) of at most 120
characters, nothing loaded by name."""
import ast
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
METHODS = sorted((ROOT / "methods").glob("*.py"))
PLUMBING = [ROOT / "common.py", ROOT / "augment.py", ROOT / "backbones.py"]  # the two modules common re-exports
ALLOWED = {"common", "estimators", "torch", "torchvision", "numpy", "tyro"}  # and the standard library


def imports(path: Path):
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            yield from (a.name.split(".")[0] for a in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0:
            yield node.module.split(".")[0]


def shared_args(path: Path):
    """The Args fields before `# method-specific`, as (name, annotation, docstring) with the default value left out."""
    text = path.read_text()
    block = text[text.index("class Args:"):text.index("    # method-specific")]
    fields = re.findall(r'^    (\w+): ([^=\n]+?) = .+\n    """(.+)"""$', block, re.M)
    assert len(fields) == block.count('"""') // 2, f"{path.name}: an Args field without a one-line docstring"
    return fields


def test_there_are_method_files():
    assert len(METHODS) >= 14


@pytest.mark.parametrize("path", METHODS, ids=lambda p: p.name)
def test_method_file_stands_alone(path):
    import sys
    names = {p.stem for p in METHODS}
    for mod in imports(path):
        assert mod not in names, f"{path.name} imports the method file {mod}.py: copy what it needs"
        assert mod in ALLOWED or mod in sys.stdlib_module_names, f"{path.name} imports {mod}"
    assert len(path.read_text().splitlines()) <= 300, f"{path.name} is longer than 300 lines"


@pytest.mark.parametrize("path", METHODS, ids=lambda p: p.name)
def test_shared_args_block_is_simclrs_but_for_defaults(path):
    assert shared_args(path) == shared_args(ROOT / "methods" / "simclr.py"), path.name


@pytest.mark.parametrize("path", [*METHODS, *PLUMBING, ROOT / "estimators.py", ROOT / "benchmark.py",
                                  ROOT / "toy_gaussian.py"], ids=lambda p: p.name)
def test_nothing_is_loaded_by_name_or_patched(path):
    text, tree = path.read_text(), ast.parse(path.read_text())
    assert "__import__" not in text and "import_module" not in text, path.name
    modules = {a.asname or a.name.split(".")[0] for n in ast.walk(tree) if isinstance(n, (ast.Import, ast.ImportFrom))
               for a in n.names}
    for node in ast.walk(tree):  # no `module.attribute = ...`, no setattr(module, ...)
        targets = node.targets if isinstance(node, ast.Assign) else []
        for t in targets:
            while isinstance(t, ast.Attribute):
                base, t = t, t.value
            assert not (isinstance(t, ast.Name) and t.id in modules and targets[0] is not t
                        and t.id not in ("torch", "sys")), f"{path.name} line {node.lineno} patches {t.id}"
        if isinstance(node, ast.Call) and getattr(node.func, "id", "") == "setattr":
            assert not (isinstance(node.args[0], ast.Name) and node.args[0].id in modules), path.name


COMMON_MAX_LINES = 900  # the issue "Every step in sight": with torchrun and the ViT family in, leave room


@pytest.mark.parametrize("path", PLUMBING, ids=lambda p: p.name)
def test_common_is_plumbing_of_bounded_size_and_short_lines(path):
    lines = path.read_text().splitlines()
    assert len(lines) <= COMMON_MAX_LINES, f"{path.name} has {len(lines)} lines"
    long = [i + 1 for i, line in enumerate(lines) if len(line) > 120]
    assert not long, f"{path.name} lines over 120 characters: {long}"
    names = {p.stem for p in METHODS}
    code = "\n".join(ln for ln in lines if not ln.lstrip().startswith("#"))
    assert not [n for n in names if re.search(rf"\b{n}\b", code)], f"{path.name} names a method"
    assert not {"common", *names} & set(imports(path)) or path.name == "common.py", f"{path.name} imports common"

"""The project's shape: self-contained method files of at most 300 lines of code that share one Args block; common.py
(about 450 lines) over plumbing/ modules of one topic and at most 500 lines each, which import each other downward
and never common; one statement per line everywhere (an AST check of the idioms that pack several into one); lines of
at most 120 characters; nothing loaded by name; and a method copied with the files the README lists runs alone."""
import ast
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
METHODS = sorted((ROOT / "methods").glob("*.py"))
# plumbing/ from the top down: each module may import only the modules before it
LAYERS = ["errors", "distributed", "optim", "imagefiles", "augment", "data", "backbones", "evaluation", "checkpoints",
          "runlog"]
PLUMBING = [ROOT / "plumbing" / f"{name}.py" for name in LAYERS]
TOOLS = [ROOT / "estimators.py", ROOT / "toy_gaussian.py", ROOT / "benchmark.py", ROOT / "gpu_check.py",
         ROOT / "soak.py", ROOT / "soak_checks.py"]
PRODUCT = [*METHODS, ROOT / "common.py", *PLUMBING, *TOOLS]
ALLOWED = {"common", "estimators", "torch", "torchvision", "numpy", "tyro"}  # and the standard library
METHOD_MAX_CODE_LINES = 300  # not counting the module docstring
PLUMBING_MAX_LINES = 500
COMMON_MAX_LINES = 450


def imports(path: Path):
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            yield from (alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0:
            yield node.module
            if node.module == "plumbing":  # from plumbing import data
                yield from (f"plumbing.{alias.name}" for alias in node.names)


def code_lines(path: Path) -> int:
    """Lines of the file, its module docstring left out."""
    text = path.read_text()
    tree = ast.parse(text)
    lines = len(text.splitlines())
    first = tree.body[0] if tree.body else None
    if isinstance(first, ast.Expr) and isinstance(first.value, ast.Constant) and isinstance(first.value.value, str):
        lines -= first.end_lineno - first.lineno + 1
    return lines


def packed_statements(path: Path):
    """(line, what) of each idiom that packs several statements into one line."""
    tree = ast.parse(path.read_text())
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Expr) and isinstance(node.value, ast.Tuple):
            found.append((node.lineno, "a tuple expression as a statement: `f(), g()`"))
        elif isinstance(node, ast.Expr) and isinstance(node.value, ast.IfExp):
            found.append((node.lineno, "a conditional expression as a statement: `f() if c else None`"))
        elif isinstance(node, ast.Assign) and isinstance(node.value, ast.Lambda):
            found.append((node.lineno, "a lambda bound to a name"))
        elif isinstance(node, ast.Assign) and len(node.targets) >= 3:
            found.append((node.lineno, f"{len(node.targets)} chained targets: `a = b = c = 0`"))
        elif (isinstance(node, ast.Assign) and isinstance(node.targets[0], ast.Tuple)
              and isinstance(node.value, ast.Tuple) and len(node.value.elts) >= 3):
            found.append((node.lineno, f"a parallel assignment of {len(node.value.elts)} values"))
        elif isinstance(node, ast.Call):
            for arg in [*node.args, *(k.value for k in node.keywords)]:
                if isinstance(arg, ast.NamedExpr):
                    found.append((node.lineno, "an assignment expression inside a call's arguments"))
    simple = {}
    for node in ast.walk(tree):
        if isinstance(node, ast.stmt) and not isinstance(node, (ast.FunctionDef, ast.ClassDef, ast.If, ast.For,
                                                                ast.While, ast.With, ast.Try)):
            simple.setdefault(node.lineno, []).append(node)
    found += [(line, "two statements on one line") for line, nodes in simple.items() if len(nodes) > 1]
    return sorted(found)


def test_there_are_method_files():
    assert len(METHODS) >= 14


@pytest.mark.parametrize("path", METHODS, ids=lambda p: p.name)
def test_method_file_stands_alone_in_at_most_300_lines_of_code(path):
    names = {p.stem for p in METHODS}
    for module in imports(path):
        top = module.split(".")[0]
        assert top not in names, f"{path.name} imports the method file {top}.py: copy what it needs"
        assert top in ALLOWED or top in sys.stdlib_module_names, f"{path.name} imports {module}"
    assert code_lines(path) <= METHOD_MAX_CODE_LINES, f"{path.name} has {code_lines(path)} lines of code"


def shared_args(path: Path):
    """The Args fields before `# method-specific`, as (name, annotation, docstring) with the default value left out."""
    text = path.read_text()
    block = text[text.index("class Args:"):text.index("    # method-specific")]
    fields = re.findall(r'^    (\w+): ([^=\n]+?) = .+\n    """(.+)"""$', block, re.M)
    assert len(fields) == block.count('"""') // 2, f"{path.name}: an Args field without a one-line docstring"
    return fields


@pytest.mark.parametrize("path", METHODS, ids=lambda p: p.name)
def test_shared_args_block_is_simclrs_but_for_defaults(path):
    assert shared_args(path) == shared_args(ROOT / "methods" / "simclr.py"), path.name


def test_plumbing_is_exactly_the_layered_modules():
    assert sorted(p.stem for p in (ROOT / "plumbing").glob("*.py")) == sorted([*LAYERS, "__init__"])


@pytest.mark.parametrize("path", [ROOT / "common.py", *PLUMBING], ids=lambda p: p.name)
def test_plumbing_modules_are_bounded_import_downward_and_name_no_method(path):
    lines = path.read_text().splitlines()
    most = COMMON_MAX_LINES if path.name == "common.py" else PLUMBING_MAX_LINES
    assert len(lines) <= most, f"{path.name} has {len(lines)} lines (at most {most}): split it by topic"
    code = "\n".join(line for line in lines if not line.lstrip().startswith("#"))
    named = [p.stem for p in METHODS if re.search(rf"\b{p.stem}\b", code)]
    assert not named, f"{path.name} names a method: {named}"
    if path.name == "common.py":
        return
    below = set(LAYERS[LAYERS.index(path.stem) + 1:])
    for module in imports(path):
        assert module.split(".")[0] != "common", f"{path.name} imports common"
        assert module.split(".")[-1] not in below or not module.startswith("plumbing"), \
            f"{path.name} imports {module}, a module below it (the parts import each other downward)"


@pytest.mark.parametrize("path", PRODUCT, ids=lambda p: str(p.relative_to(ROOT)))
def test_one_statement_per_line_and_short_lines(path):
    found = packed_statements(path)
    assert not found, f"{path.name}: " + "; ".join(f"line {line}: {what}" for line, what in found)
    long = [i + 1 for i, line in enumerate(path.read_text().splitlines()) if len(line) > 120]
    assert not long, f"{path.name} lines over 120 characters: {long}"


def test_the_idiom_check_can_fail(tmp_path):
    bad = tmp_path / "bad.py"
    bad.write_text("import numpy as np\nimport torch\nnp.random.seed(0), torch.manual_seed(0)\nprint(1) if x else None\n"
                   "f = lambda: 0\na = b = c = 0\nd, e, g = 1, 2, 3\nprint(y := 2)\nh = 1; k = 2\nh, w = x.shape\n")
    lines = [line for line, _ in packed_statements(bad)]
    assert lines == [3, 4, 5, 6, 7, 8, 9], packed_statements(bad)  # h, w = x.shape (line 10) is allowed


@pytest.mark.parametrize("path", PRODUCT, ids=lambda p: str(p.relative_to(ROOT)))
def test_nothing_is_loaded_by_name_or_patched(path):
    text, tree = path.read_text(), ast.parse(path.read_text())
    assert "__import__" not in text and "import_module" not in text, path.name
    modules = {a.asname or a.name.split(".")[0] for n in ast.walk(tree) if isinstance(n, (ast.Import, ast.ImportFrom))
               for a in n.names}
    for node in ast.walk(tree):  # no `module.attribute = ...` (also inside a tuple target), no setattr(module, ...)
        targets = node.targets if isinstance(node, ast.Assign) else []
        targets = [t for target in targets for t in (target.elts if isinstance(target, ast.Tuple) else [target])]
        for target in (t for t in targets if isinstance(t, ast.Attribute)):
            base = target
            while isinstance(base, ast.Attribute):
                base = base.value
            assert not (isinstance(base, ast.Name) and base.id in modules and base.id not in ("torch", "sys")), \
                f"{path.name} line {node.lineno} patches {base.id}"
        if isinstance(node, ast.Call) and getattr(node.func, "id", "") == "setattr":
            assert not (isinstance(node.args[0], ast.Name) and node.args[0].id in modules), path.name


def copy_list():
    """The files and folders the README's "Copying one method" section says to copy (its sentence "Copy ...; nothing
    else"), besides the method file."""
    text = (ROOT / "README.md").read_text()
    section = text[text.index("## Copying one method"):]
    sentence = section[section.index("Copy "):section.index("nothing else")]
    names = re.findall(r"`([\w/]+(?:\.py|/))`", sentence)
    return [n for n in dict.fromkeys(names) if not n.startswith("methods/")]


def test_a_method_copied_with_the_files_the_readme_lists_runs_alone(tmp_path):
    """simclr.py and exactly what the README says to copy, in an empty folder, away from the repository: it trains."""
    names = copy_list()
    assert "common.py" in names and "plumbing/" in names, names
    project = tmp_path / "project"
    (project / "methods").mkdir(parents=True)
    shutil.copy(ROOT / "methods" / "simclr.py", project / "methods")
    for name in names:
        if name.endswith("/"):
            shutil.copytree(ROOT / name, project / name, ignore=shutil.ignore_patterns("__pycache__"))
        else:
            shutil.copy(ROOT / name, project / name)
    flags = ["--dataset", "synthetic", "--backbone", "tiny", "--batch-size", "32", "--epochs", "1", "--max-steps", "2",
             "--eval-every", "0", "--mi-every", "0", "--save-every", "0", "--device", "cpu", "--run-dir", "run"]
    done = subprocess.run([sys.executable, str(project / "methods" / "simclr.py"), *flags], cwd=tmp_path,
                          capture_output=True, text=True, timeout=300, env={"PATH": "/usr/bin:/bin",
                                                                            "OMP_NUM_THREADS": "1"})
    assert done.returncode == 0, done.stderr[-2000:]
    assert (tmp_path / "run" / "backbone.pt").is_file() and (tmp_path / "run" / "results.json").is_file()

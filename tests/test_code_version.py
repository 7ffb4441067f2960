"""A stage's code version hashes the sources it imports, so editing another stage keeps its cache;
the layout that makes this hold: stages import the library, never each other."""

import ast
import shutil
from pathlib import Path

import pytest

import stages
from stages.lib.artifacts import code_version, source_closure, source_digest
from stages.lib.stage import STAGE_NAMES, get_stage

STAGES = Path(stages.__file__).parent
ROOT = STAGES.parent


def write_package(root: Path, files: dict[str, str]) -> Path:
    for name, text in files.items():
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_text(text)
    return root


def test_the_closure_follows_absolute_package_and_relative_imports(tmp_path):
    root = write_package(tmp_path / "pkg", {
        "__init__.py": "",
        "main.py": "import json\nfrom pkg import helper\nfrom pkg.sub.leaf import function\n",
        "helper.py": "def late():\n    import pkg.lazy\n",
        "lazy.py": "",
        "sub/__init__.py": "",
        "sub/leaf.py": "from . import sibling\nfrom ..shared import value\ndef function(): ...\n",
        "sub/sibling.py": "",
        "shared.py": "value = 1\n",
        "unused.py": "import pkg.main\n",
    })
    closure = {path.relative_to(root).as_posix() for path in source_closure(root, "pkg.main")}
    assert closure == {"__init__.py", "main.py", "helper.py", "lazy.py", "sub/__init__.py", "sub/leaf.py",
                       "sub/sibling.py", "shared.py"}


def test_a_stage_s_version_leaves_out_the_stages_it_does_not_import():
    baseline = {path.relative_to(STAGES).as_posix() for path in source_closure(STAGES, "stages.baseline")}
    consistency = {path.relative_to(STAGES).as_posix() for path in source_closure(STAGES, "stages.consistency")}
    assert {"baseline.py", "lib/training.py", "lib/models.py", "lib/config.py"} <= baseline
    assert not {"consistency.py", "lib/ssl_methods.py", "pretrain.py", "fine_tune.py"} & baseline
    assert {"consistency.py", "lib/ssl_methods.py", "lib/training.py"} <= consistency
    assert "baseline.py" not in consistency
    assert code_version("baseline") != code_version("consistency")
    assert code_version("baseline").startswith(f"{stages.__version__}+")


def imported_modules(path: Path) -> set[str]:
    """Every module name ``path`` imports, at any depth of its code (relative imports are not used here)."""
    names = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom):
            names |= {node.module, *(f"{node.module}.{alias.name}" for alias in node.names)}
    return names


def test_stages_holds_the_stages_alone_and_they_import_the_library_never_each_other():
    stage_modules = {f"stages.{name}" for name in STAGE_NAMES}
    assert {path.stem for path in STAGES.glob("*.py")} == {"__init__", *STAGE_NAMES}
    for path in STAGES.rglob("*.py"):
        imported = imported_modules(path)
        others = imported & stage_modules - {f"stages.{path.stem}"}
        assert not others, f"{path.relative_to(ROOT)} imports the stage module(s) {sorted(others)}"
        outside = {name for name in imported if name.split(".")[0] in ("pipelines", "prefect")}
        assert not outside, f"{path.relative_to(ROOT)} imports {sorted(outside)}: stages run without the flows"


@pytest.mark.parametrize("name", [name for name in STAGE_NAMES if get_stage(name).config_type.__module__ == f"stages.{name}"])
def test_editing_a_stage_s_config_class_changes_no_other_stage_s_version(name, tmp_path):
    before, after = tmp_path / "before" / "stages", tmp_path / "after" / "stages"
    for copy in (before, after):
        shutil.copytree(STAGES, copy, ignore=shutil.ignore_patterns("__pycache__"))
    config_class = get_stage(name).config_type.__name__
    module = after / f"{name}.py"
    text = module.read_text()
    body = text.index(":\n", text.index(f"class {config_class}(")) + 2  # the class's first line
    module.write_text(text[:body] + "    added_setting: int = 0\n" + text[body:])
    changed = {stage for stage in STAGE_NAMES if source_digest(before, stage) != source_digest(after, stage)}
    assert changed == {name}

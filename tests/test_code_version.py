"""A stage's code version hashes the sources it imports, so editing another stage keeps its cache."""

from pathlib import Path

import stages
from stages.artifacts import code_version, source_closure

STAGES = Path(stages.__file__).parent


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
    baseline = {path.name for path in source_closure(STAGES, "stages.baseline")}
    consistency = {path.name for path in source_closure(STAGES, "stages.consistency")}
    assert {"baseline.py", "training.py", "models.py", "config.py"} <= baseline
    assert not {"consistency.py", "ssl_methods.py", "pretrain.py", "fine_tune.py"} & baseline
    assert {"consistency.py", "ssl_methods.py", "baseline.py"} <= consistency
    assert code_version("baseline") != code_version("consistency")
    assert code_version("baseline").startswith(f"{stages.__version__}+")

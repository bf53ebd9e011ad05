"""The dependency rule and the no-work-at-import rule, checked on the source itself."""

import ast
import subprocess
import sys

import pytest

from tests.conftest import REPO

ENTRY_POINTS = ["train", "tune", "serve"]


def _imported_top_levels(package: str) -> set[str]:
    names: set[str] = set()
    for path in (REPO / package).rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                names.update(alias.name.split(".")[0] for alias in node.names)
            elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                names.add(node.module.split(".")[0])
    return names


@pytest.mark.parametrize("package", ENTRY_POINTS)
def test_entry_points_never_import_each_other(package: str) -> None:
    others = set(ENTRY_POINTS) - {package}
    assert not (_imported_top_levels(package) & others)


def test_shared_package_imports_no_entry_point() -> None:
    assert not (_imported_top_levels("maas") & set(ENTRY_POINTS))


def test_importing_the_shared_package_starts_nothing_heavy() -> None:
    code = (
        "import sys, maas.cli, maas.config, maas.data, maas.models, maas.registry, "
        "maas.serving, maas.training, maas.raycluster, train.cli\n"
        "heavy = [m for m in ('tensorflow', 'tf_keras', 'ray') if m in sys.modules]\n"
        "assert not heavy, heavy"
    )
    subprocess.run([sys.executable, "-c", code], cwd=REPO, check=True)


def test_keras_3_is_never_imported_directly() -> None:
    for path in REPO.glob("*/**/*.py"):
        if ".venv" in path.parts:
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                assert all(a.name.split(".")[0] != "keras" for a in node.names), path

"""pyproject lists every package, and ``ops/`` is importable as ``sparse3d.ops``."""
import sys
from pathlib import Path

import pytest

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    tomllib = pytest.importorskip("tomli")

REPO = Path(__file__).resolve().parents[1]


def _discovered():
    found = set()
    for root, prefix in ((REPO / "sparse3d", "sparse3d"), (REPO / "ops", "sparse3d.ops")):
        for init in root.rglob("__init__.py"):
            rel = init.parent.relative_to(root).parts
            found.add(".".join((prefix, *rel)))
    return found


def test_every_package_is_listed():
    cfg = tomllib.loads((REPO / "pyproject.toml").read_text())
    listed = set(cfg["tool"]["setuptools"]["packages"])
    assert cfg["tool"]["setuptools"]["package-dir"] == {"sparse3d": "sparse3d", "sparse3d.ops": "ops"}
    missing = _discovered() - listed
    assert not missing, f"add to pyproject [tool.setuptools] packages: {sorted(missing)}"
    stale = listed - _discovered()
    assert not stale, f"listed but absent: {sorted(stale)}"


def test_ops_maps_to_top_level_folder():
    import sparse3d.ops.kmap as kmap
    assert Path(kmap.__file__).resolve().parent == REPO / "ops" / "kmap"
    assert not (REPO / "sparse3d" / "ops").exists()


def test_ci_runs_the_readme_test_command():
    readme = (REPO / "README.md").read_text()
    block = readme.split("```bash", 1)[1].split("```", 1)[0]
    cmds = [ln.strip() for ln in block.splitlines() if ln.strip() and not ln.strip().startswith("#")]
    assert len(cmds) == 2, cmds
    assert "pytest" in cmds[1] and "setup.sh" in cmds[0]
    assert cmds[1] in (REPO / ".ci" / "run").read_text()

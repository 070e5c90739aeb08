"""The package's rooms: imports run one way (lab -> engine -> model | data), checked by the
import-linter contract in pyproject.toml, and the scripts parse their arguments before torch."""

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
LINT_IMPORTS = shutil.which("lint-imports", path=str(Path(sys.executable).parent)) or shutil.which("lint-imports")


def lint_imports(root: Path, config: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(root)}  # the package under ``root`` is the one analysed
    return subprocess.run([LINT_IMPORTS, "--config", str(config), "--no-cache"], cwd=root, env=env,
                          capture_output=True, text=True, timeout=300)


@pytest.fixture(scope="module")
def lint_available():
    if LINT_IMPORTS is None:
        pytest.skip("import-linter is not installed (pip install -e '.[dev]')")


def test_the_import_contract_holds(lint_available):
    result = lint_imports(REPO, REPO / "pyproject.toml")
    assert result.returncode == 0, result.stdout[-3000:]
    assert "Contracts: 1 kept, 0 broken." in result.stdout


@pytest.mark.parametrize("module, upward", [
    ("detector/model/boxes.py", "detector.engine.config"),  # the model reaching into the engine
    ("detector/data/voc.py", "detector.model.boxes"),  # the data room reaching into the model
    ("detector/engine/build.py", "detector.lab.report"),  # the engine reaching into the lab
])
def test_a_deliberate_upward_import_breaks_the_contract(lint_available, tmp_path, module, upward):
    shutil.copytree(REPO / "detector", tmp_path / "detector", ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy(REPO / "pyproject.toml", tmp_path / "pyproject.toml")
    path = tmp_path / module
    path.write_text(path.read_text() + f"\nimport {upward}  # noqa\n")
    result = lint_imports(tmp_path, tmp_path / "pyproject.toml")
    assert result.returncode != 0
    assert "BROKEN" in result.stdout and upward in result.stdout


@pytest.mark.parametrize("script", sorted(p.name for p in (REPO / "scripts").glob("*.py")))
def test_help_answers_before_torch_is_imported(script):
    probe = ("import runpy, sys\n"
             f"sys.argv = [{script!r}, '--help']\n"
             "try:\n"
             f"    runpy.run_path({str(REPO / 'scripts' / script)!r}, run_name='__main__')\n"
             "except SystemExit:\n"
             "    pass\n"
             "print('torch loaded' if 'torch' in sys.modules else 'torch not loaded', file=sys.stderr)\n")
    result = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=120)
    assert "usage:" in result.stdout
    assert result.stderr.strip().endswith("torch not loaded")


def test_ruff_is_clean():
    ruff = shutil.which("ruff", path=str(Path(sys.executable).parent)) or shutil.which("ruff")
    if ruff is None:
        pytest.skip("ruff is not installed (pip install -e '.[dev]')")
    result = subprocess.run([ruff, "check", "detector", "scripts", "tests"], cwd=REPO, capture_output=True, text=True)
    assert result.returncode == 0, result.stdout[-3000:]


def test_one_version_read_from_one_place():
    import importlib.metadata

    import detector
    from detector.engine.versions import code_version

    assert importlib.metadata.version("detector") == detector.__version__ == code_version()["package"]

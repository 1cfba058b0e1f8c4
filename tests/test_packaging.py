"""A wheel built from the checkout works without it: installed alone, imported from elsewhere, it finds
its own package data (the lm-eval task YAMLs) and its command lines start."""

from __future__ import annotations

import shutil
import subprocess
import sys
import sysconfig
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
TASKS = {"arc_easy", "arc_challenge", "piqa", "sciq", "winogrande"}

CHECK = """
import sys
from pathlib import Path
import imsm
from imsm.lm_eval.tasks import TASK_CONFIG_DIR, write_task_configs
installed = Path(sys.argv[1]).resolve()
assert Path(imsm.__file__).resolve().is_relative_to(installed), imsm.__file__
assert Path(TASK_CONFIG_DIR).resolve().is_relative_to(installed), TASK_CONFIG_DIR
written = write_task_configs(sys.argv[2], sys.argv[3])
print(" ".join(sorted(path.stem for path in written.glob("*.yaml"))))
print(all(sys.argv[2] in path.read_text() for path in written.glob("*.yaml")))
"""


def _run(args: list[str], cwd: Path, pythonpath: str | None = None) -> subprocess.CompletedProcess:
    env = {"PATH": "/usr/bin:/bin", "HOME": str(cwd), "OMP_NUM_THREADS": "1"}
    if pythonpath is not None:
        env["PYTHONPATH"] = pythonpath
    return subprocess.run(args, cwd=cwd, env=env, capture_output=True, text=True, timeout=600)


@pytest.mark.slow
def test_a_built_wheel_finds_its_task_yamls_outside_the_checkout(tmp_path):
    # Built from a copy, so the build leaves no build/ or egg-info in the checkout.
    source = tmp_path / "source"
    source.mkdir()
    shutil.copytree(ROOT / "src", source / "src", ignore=shutil.ignore_patterns("__pycache__", "*.egg-info"))
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(ROOT / name, source / name)
    pip = [sys.executable, "-m", "pip", "--disable-pip-version-check", "--no-input"]
    built = _run([*pip, "wheel", "--no-deps", "--no-build-isolation", "-w", str(tmp_path / "dist"), "."], source)
    assert built.returncode == 0, built.stderr
    wheel = next((tmp_path / "dist").glob("imsm-*.whl"))
    installed = tmp_path / "installed"
    done = _run([*pip, "install", "--no-deps", "--no-index", "--target", str(installed), str(wheel)], tmp_path)
    assert done.returncode == 0, done.stderr

    # -S: no site-packages .pth files, so not the editable install of the checkout; the venv's
    # site-packages only for the dependencies.
    elsewhere = tmp_path / "elsewhere"
    (elsewhere / "data").mkdir(parents=True)
    path = f"{installed}:{sysconfig.get_paths()['purelib']}"
    python = [sys.executable, "-S"]
    check = [*python, "-c", CHECK, str(installed), str(elsewhere / "data"), str(elsewhere / "tasks")]
    result = _run(check, elsewhere, path)
    assert result.returncode == 0, result.stderr
    names, filled = result.stdout.split("\n")[:2]
    assert set(names.split()) == TASKS and filled == "True"

    version = _run([*python, "-m", "imsm", "--version"], elsewhere, path)
    assert version.returncode == 0 and version.stdout.startswith("imsm "), version.stderr
    if _run([*python, "-c", "import lm_eval"], elsewhere, path).returncode == 0:  # the lm-eval extra
        helped = _run([*python, "-m", "imsm.lm_eval", "--help"], elsewhere, path)
        assert helped.returncode == 0 and "--tasks" in helped.stdout, helped.stderr

"""The package installs as pyproject.toml says, `llama3-np` is `python run.py`, and the
README's Python example runs as written on the demo model."""

import re
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from tests.conftest import REPO

tomllib = pytest.importorskip("tomllib")  # Python 3.11+
PYPROJECT = tomllib.loads((REPO / "pyproject.toml").read_text())


def requirement_lines(path: Path) -> list:
    """The requirement specifiers of a requirements file (no comments, no -r lines)."""
    lines = (line.split("#")[0].strip() for line in path.read_text().splitlines())
    return [line for line in lines if line and not line.startswith("-")]


def names(specifiers) -> set:
    return {re.match(r"[A-Za-z0-9_.-]+", s)[0].lower() for s in specifiers}


def test_dependencies_mirror_the_requirements_files():
    project = PYPROJECT["project"]
    assert project["dependencies"] == requirement_lines(REPO / "requirements.txt")
    test_only = names(requirement_lines(REPO / "tests" / "requirements.txt"))
    assert names(project["optional-dependencies"]["test"]) == test_only - names(
        project["dependencies"])
    assert names(project["optional-dependencies"]["fast"]) == {"numba"}
    assert names(project["optional-dependencies"]["plots"]) == {"matplotlib"}


def test_the_wheel_holds_every_module_and_the_llama3_np_command(tmp_path):
    """Built offline from a copy of the sources (setuptools from this environment)."""
    pytest.importorskip("setuptools")
    source = tmp_path / "source"
    source.mkdir()
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(REPO / name, source / name)
    shutil.copytree(REPO / "llama3_np", source / "llama3_np",
                    ignore=shutil.ignore_patterns("__pycache__"))
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation",
                    "--quiet", "-w", str(tmp_path / "dist"), str(source)],
                   check=True, capture_output=True, timeout=300)
    wheel = zipfile.ZipFile(next((tmp_path / "dist").glob("llama3_np-*.whl")))
    modules = {str(p.relative_to(REPO)) for p in (REPO / "llama3_np").rglob("*.py")}
    assert modules <= set(wheel.namelist())
    entry_points = next(n for n in wheel.namelist() if n.endswith("entry_points.txt"))
    assert "llama3-np = llama3_np.cli:entry" in wheel.read(entry_points).decode()
    metadata = wheel.read(next(n for n in wheel.namelist() if n.endswith("/METADATA"))).decode()
    assert {"fast", "plots", "test"} <= set(re.findall(r"^Provides-Extra: (\S+)", metadata, re.M))


def run(*command: str, cwd=REPO) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, *command], capture_output=True, text=True, cwd=cwd,
                          timeout=300)


def test_the_llama3_np_command_is_run_py(tmp_path):
    """The console script's target, called as the installed script calls it, prints what
    run.py prints (apart from its own name in the usage line)."""
    params = tmp_path / "params.json"
    params.write_text('{"dim": 4096, "n_layers": 32, "n_heads": 32, "n_kv_heads": 8, '
                      '"vocab_size": 128256, "multiple_of": 1024, "ffn_dim_multiplier": 1.3, '
                      '"norm_eps": 1e-05, "rope_theta": 500000.0}')
    module, function = PYPROJECT["project"]["scripts"]["llama3-np"].split(":")
    script = (f"import sys; sys.argv = ['llama3-np', *sys.argv[1:]]; "
              f"from {module} import {function}; {function}()")
    for args in (["info", "--config", str(params)], ["--help"]):
        as_script = run("-c", script, *args)
        as_run_py = run("run.py", *args)
        assert as_script.returncode == as_run_py.returncode == 0, as_script.stderr
        # (usage lines wrap at a width that depends on the program's name)
        assert " ".join(as_script.stdout.replace("llama3-np", "run.py").split()) == \
            " ".join(as_run_py.stdout.split())
        assert ("8,030,261,248" if args[0] == "info" else "commands (") in as_script.stdout


def readme_python() -> str:
    blocks = re.findall(r"```python\n(.*?)```", (REPO / "README.md").read_text(), re.S)
    assert len(blocks) == 1
    return blocks[0]


def test_the_readme_python_example_runs_as_written(demo_model_path):
    """Run from the repository root, where the README's set-up leaves the user (and
    where `pip install -e .` makes `import llama3_np` work from anywhere else too)."""
    result = subprocess.run([sys.executable, "-"], input=readme_python(), capture_output=True,
                            text=True, cwd=REPO, timeout=300)
    assert result.returncode == 0, result.stderr
    text, precision, shape = result.stdout.rstrip("\n").rsplit("\n", 2)
    assert text.startswith(" Paris")
    assert precision.startswith("weights: ")
    assert shape == "(9, 2, 2)"  # SmolLM2: 9 heads; "Hello" is bos + one token

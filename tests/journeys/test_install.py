"""Installed like a real package: a built wheel (and `pip install .`) in a fresh virtual environment, used
from a folder that is not the checkout, trains, sweeps and runs the tools with the conf/ it ships."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import sysconfig
from pathlib import Path

import pytest
from helpers import ROOT

pytestmark = pytest.mark.slow

# What pip builds from: the rest of the checkout (tests, outputs) is not part of the package.
PACKAGED = ("pyproject.toml", "README.md", "fragment_llm", "conf")


@pytest.fixture(scope="module")
def source(tmp_path_factory) -> Path:
    """The checkout's packaged files, copied: pip builds inside the folder it builds (build/, *.egg-info),
    which must not be the checkout that other tests read."""
    folder = tmp_path_factory.mktemp("source")
    for name in PACKAGED:
        if (ROOT / name).is_dir():
            shutil.copytree(ROOT / name, folder / name, symlinks=True, ignore=shutil.ignore_patterns("__pycache__"))
        else:
            shutil.copy(ROOT / name, folder / name)
    return folder


def pip(*args: str) -> None:
    """pip, offline: the build uses this environment's setuptools, and nothing is downloaded."""
    command = [sys.executable, "-m", "pip", *args, "--quiet", "--no-deps", "--no-build-isolation", "--no-index"]
    result = subprocess.run(command, capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr


def fresh_venv(folder: Path) -> Path:
    """A new virtual environment that sees this one's packages (torch, Hydra, ...: nothing to download)
    through a .pth file, but not the checkout. Returns its bin/ folder."""
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(folder)], check=True)
    bin_dir = folder / "bin"
    query = "import sysconfig; print(sysconfig.get_path('purelib'))"
    site_packages = subprocess.run([bin_dir / "python", "-c", query], capture_output=True, text=True, check=True)
    ours = {sysconfig.get_path("purelib"), sysconfig.get_path("platlib")}
    (Path(site_packages.stdout.strip()) / "dependencies.pth").write_text("\n".join(sorted(ours)) + "\n")
    return bin_dir


def run(bin_dir: Path, args: list, cwd: Path) -> subprocess.CompletedProcess:
    """A command of the environment, as a user runs it from `cwd`: nothing points Python at the checkout."""
    env = {key: value for key, value in os.environ.items() if key != "PYTHONPATH"}
    env.update(COLUMNS="250", PATH=f"{bin_dir}{os.pathsep}{env.get('PATH', '')}")
    result = subprocess.run(
        [bin_dir / args[0], *args[1:]], cwd=cwd, env=env, capture_output=True, text=True, timeout=300
    )
    assert result.returncode == 0, f"{args}\n{result.stdout}\n{result.stderr}"
    return result


def check_installed_conf(bin_dir: Path, venv: Path, cwd: Path) -> None:
    """The package imported is the installed one, and its conf/ (what the app composes) is the repository's."""
    query = "import fragment_llm; from fragment_llm.launch.conf import CONF_DIR; print(fragment_llm.__file__, CONF_DIR)"
    package, conf_dir = map(Path, run(bin_dir, ["python", "-c", query], cwd).stdout.split())
    assert package.is_relative_to(venv) and conf_dir.is_relative_to(venv), (package, conf_dir)
    ours = {path.relative_to(ROOT / "conf"): path.read_bytes() for path in (ROOT / "conf").rglob("*.yaml")}
    shipped = {path.relative_to(conf_dir): path.read_bytes() for path in conf_dir.rglob("*.yaml")}
    assert shipped == ours and Path("config.yaml") in shipped


def test_a_wheel_installed_elsewhere_trains_sweeps_and_runs_the_tools(tmp_path, source, corpus):
    pip("wheel", "--wheel-dir", str(tmp_path / "dist"), str(source))
    (wheel,) = (tmp_path / "dist").glob("fragment_llm-*.whl")
    bin_dir = fresh_venv(tmp_path / "venv")
    pip("--python", str(bin_dir / "python"), "install", str(wheel))
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    check_installed_conf(bin_dir, tmp_path / "venv", elsewhere)
    outputs = elsewhere / "outputs"
    tiny = ["debug=fast", "data=text", f"data.path={corpus}", f"paths.outputs={outputs}"]

    run(bin_dir, ["fragment-llm", "train", *tiny], elsewhere)
    (run_dir,) = [path.parent for path in outputs.rglob("summary.json")]
    assert json.loads((run_dir / "summary.json").read_text())["status"] == "completed"
    assert (run_dir / "models" / "final_model.pt").is_file() and "debug-tiny-cpu" in run_dir.name

    composed = run(bin_dir, ["python", "-m", "fragment_llm", "train", "--cfg", "job", "model=small"], elsewhere)
    assert "n_embd: 384" in composed.stdout and "hydra:" not in composed.stdout
    usage = run(bin_dir, ["fragment-llm", "train", "--help"], elsewhere).stdout
    assert "== Config groups (group=option) ==" in usage and "model: auto, large, medium, small, tiny" in usage
    assert "model.n_layer=4" in usage  # the keys, composed through the package's resolvers

    run(bin_dir, ["fragment-llm", "train", "-m", *tiny, "train.seed=1,2"], elsewhere)
    (sweep_dir,) = (outputs / "multirun").glob("*/*_seed_*")
    assert sorted(path.parent.name for path in sweep_dir.rglob("summary.json")) == ["0", "1"]
    assert (sweep_dir / "sweep.txt").is_file()  # the package's callbacks ran

    table = run(bin_dir, ["fragment-llm", "runs", str(outputs), "--format", "json"], elsewhere).stdout
    assert len(json.loads(table)) == 3
    sample = ["fragment-llm", "generate", str(run_dir), "--prompt", "The ", "--max-new-tokens", "8", "--seed", "1"]
    assert run(bin_dir, sample, elsewhere).stdout.strip()
    figures = elsewhere / "bench.json"
    run(bin_dir, ["fragment-llm", "bench", *tiny, "--steps", "1", "--json", str(figures)], elsewhere)
    assert json.loads(figures.read_text())["train"]["tokens_per_sec"] > 0
    assert sorted(path.name for path in elsewhere.iterdir()) == ["bench.json", "outputs"]  # nothing else written


def test_pip_install_of_the_checkout_trains_from_elsewhere(tmp_path, source, corpus):
    bin_dir = fresh_venv(tmp_path / "venv")
    pip("--python", str(bin_dir / "python"), "install", str(source))  # `pip install .`, not editable
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    check_installed_conf(bin_dir, tmp_path / "venv", elsewhere)
    outputs = elsewhere / "outputs"
    tiny = ["debug=fast", "data=text", f"data.path={corpus}", f"paths.outputs={outputs}"]
    run(bin_dir, ["fragment-llm", "train", *tiny], elsewhere)
    (summary,) = outputs.rglob("summary.json")
    assert json.loads(summary.read_text())["status"] == "completed"

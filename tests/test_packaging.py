"""Packaging: `pip install .` into a fresh venv gives a working `minidiff`; metadata said once; the Makefile's index."""

import configparser
import os
import shutil
import subprocess
import sys
import sysconfig

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_metadata_lives_in_setup_cfg_and_pyproject_holds_only_build_and_tools():
    with open(os.path.join(REPO, "pyproject.toml")) as f:
        tables = [line.strip() for line in f if line.startswith("[")]
    assert tables[0] == "[build-system]" and all(t.startswith("[tool.") for t in tables[1:]), tables
    setup = configparser.ConfigParser()
    setup.read(os.path.join(REPO, "setup.cfg"))
    assert not [s for s in setup.sections() if s.startswith("tool:")]                 # tool settings: pyproject
    assert setup["metadata"]["license"] == "MIT" and setup["metadata"]["license_files"] == "LICENSE"
    assert "License ::" not in setup["metadata"].get("classifiers", "")                # said once, by `license`
    with open(os.path.join(REPO, "LICENSE")) as f:
        assert f.readline().strip() == "MIT License"
    extras = setup["options.extras_require"]
    assert "plot" not in extras and extras["tensorboard"].split() == ["tensorboard"]


@pytest.mark.skipif(shutil.which("make") is None, reason="needs make")
def test_make_install_takes_torch_from_torch_index_only_when_given():
    def install_commands(*variables):
        env = {k: v for k, v in os.environ.items() if k != "VIRTUAL_ENV"}
        result = subprocess.run(["make", "-n", "-B", "install", *variables], cwd=REPO, env=env,
                                capture_output=True, text=True, timeout=60)
        assert result.returncode == 0, result.stderr
        return [line for line in result.stdout.splitlines() if "pip install" in line]

    default = install_commands()
    assert not any("--index-url" in line for line in default) and 'torch==' in default[1]
    cpu = install_commands("TORCH_INDEX=https://download.pytorch.org/whl/cpu")
    assert '--index-url "https://download.pytorch.org/whl/cpu" "torch==' in cpu[1]
    assert "--index-url" not in cpu[2] and '-e ".[dev]"' in cpu[2]                    # minidiff itself: the default


def test_pip_install_into_a_fresh_venv_then_minidiff_help_and_bench_help(tmp_path):
    """Build the wheel offline (no build isolation) from a copy of the sources, install it into a new venv
    without its dependencies, and run the installed command with torch & co. from this interpreter."""
    source = tmp_path / "source"
    source.mkdir()
    for name in ("setup.cfg", "pyproject.toml", "README.md", "LICENSE"):
        shutil.copy(os.path.join(REPO, name), source / name)
    shutil.copytree(os.path.join(REPO, "minidiff"), source / "minidiff",
                    ignore=shutil.ignore_patterns("__pycache__"))
    pip = [sys.executable, "-m", "pip", "--disable-pip-version-check", "--no-input"]
    run = dict(capture_output=True, text=True, timeout=300, cwd=tmp_path)
    result = subprocess.run(pip + ["wheel", "-q", "--no-deps", "--no-build-isolation", "--no-index",
                                   "-w", str(tmp_path / "dist"), "./source"], **run)
    assert result.returncode == 0, result.stderr
    (wheel,) = (tmp_path / "dist").iterdir()
    result = subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(tmp_path / "venv")], **run)
    assert result.returncode == 0, result.stderr
    venv_python = tmp_path / "venv" / "bin" / "python"
    result = subprocess.run(pip + ["--python", str(venv_python), "install", "-q", "--no-deps", "--no-index",
                                   str(wheel)], **run)
    assert result.returncode == 0, result.stderr

    env = {**os.environ, "PYTHONPATH": sysconfig.get_paths()["purelib"]}   # the dependencies, not minidiff
    minidiff = str(tmp_path / "venv" / "bin" / "minidiff")
    where = subprocess.run([str(venv_python), "-c", "import minidiff; print(minidiff.__file__)"], env=env, **run)
    assert where.stdout.startswith(str(tmp_path / "venv")), where.stdout + where.stderr
    assert str(tmp_path / "venv") in (tmp_path / "venv" / "bin" / "minidiff").read_text()
    for argv, expected in ((["--help"], "{train,sample,eval,bench}"), (["sample", "--help"], "--out-dir"),
                           (["eval", "--help"], "--reference"), (["bench", "--help"], "python -m benchmarks.run_all")):
        result = subprocess.run([minidiff, *argv], env=env, **run)
        assert result.returncode == 0 and expected in result.stdout, (argv, result.stdout, result.stderr)
    result = subprocess.run([minidiff, "bench", "--quick"], env=env, **run)
    assert result.returncode == 2 and len(result.stderr.strip().splitlines()) == 1, result.stderr
    assert "inside a checkout" in result.stderr
    inside = subprocess.run([minidiff, "bench", "--help"], env=env, **{**run, "cwd": REPO})
    assert inside.returncode == 0 and "--quick" in inside.stdout, inside.stdout + inside.stderr   # run_all's own help

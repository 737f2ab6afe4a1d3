"""The README's quickstart runs as written, and the README names only files that exist."""

import os
import re

ROOT = os.path.join(os.path.dirname(__file__), "..")


def readme() -> str:
    with open(os.path.join(ROOT, "README.md")) as f:
        return f.read()


def test_quickstart_runs_as_written(tmp_path, monkeypatch):
    code = re.search(r"## Quickstart\s+```python\n(.*?)```", readme(), re.S).group(1)
    assert len(code.strip().splitlines()) <= 12
    monkeypatch.chdir(tmp_path)
    namespace = {}
    exec(compile(code, "README quickstart", "exec"), namespace)
    x = namespace["x"]
    assert tuple(x.shape) == (20, 3, 16, 16) and bool(x.isfinite().all())
    assert (tmp_path / "sprites.png").stat().st_size > 0


def test_architecture_map_names_real_files():
    section = readme().split("## Architecture")[1].split("\n## ")[0]
    for path in re.findall(r"^\| `([^`]+)`", section, re.M):
        for part in path.replace("`", "").split(", "):
            candidates = [part, os.path.join("minidiff/nn", part)]
            assert any(os.path.exists(os.path.join(ROOT, c)) for c in candidates), f"README names missing {part}"

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


def section(title: str) -> str:
    return readme().split(f"## {title}\n")[1].split("\n## ")[0]


def test_architecture_map_names_real_files():
    rows = re.findall(r"^\| `([^`]+(?:`, `[^`]+)*)`", section("Architecture"), re.M)
    assert len(rows) >= 20, f"the architecture map has {len(rows)} rows"
    for row in rows:
        first, *others = row.split("`, `")
        for part in [first] + [os.path.join(os.path.dirname(first), other) for other in others]:
            assert os.path.exists(os.path.join(ROOT, part)), f"README names missing {part}"


def test_performance_section_is_a_reference_not_a_run_log():
    """Each table says the command that reproduces it; no run-log wording, no tracker numbers."""
    text = section("Performance")
    assert not re.search(r"this run|previous run|runs? today|issue \d", text, re.I)
    tables = re.findall(r"((?:^[^|\n].*\n)+)\n?((?:^\|.*\n)+)", text, re.M)     # (the paragraph above, the table)
    assert len(tables) >= 2
    for above, table in tables:
        assert len(table.splitlines()) >= 3, table                                       # header, rule, a row
        assert re.search(r"`(python (benchmarks|examples)/\w+\.py|make bench)", above), f"no command above:\n{table}"

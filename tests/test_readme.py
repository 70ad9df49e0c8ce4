"""The README's Python example runs as written (with the built-in model, on the example scene)."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def python_blocks() -> list[str]:
    return re.findall(r"```python\n(.*?)```", (ROOT / "README.md").read_text(), flags=re.S)


def test_readme_python_example_runs(tmp_path, monkeypatch, capsys):
    (block,) = python_blocks()
    monkeypatch.chdir(tmp_path)
    (tmp_path / "examples").symlink_to(ROOT / "examples")
    exec(compile(block, "README.md", "exec"), {})
    printed = capsys.readouterr().out
    assert "regions" in printed and "Scores(" in printed
    written = sorted(p.name for p in (tmp_path / "segearth-out" / "api").iterdir())
    assert len(written) == 4 and any(n.endswith("_mask.tif") for n in written), written


def test_readme_has_exactly_two_setup_commands():
    setup = (ROOT / "README.md").read_text().split("## Set-up commands", 1)[1].split("\n## ", 1)[0]
    commands = re.findall(r"```bash\n(.*?)```", setup, flags=re.S)
    assert len(commands) == 2

"""Every Python snippet in README.md runs."""

import re
from pathlib import Path

README = Path(__file__).resolve().parents[1] / "README.md"


def python_blocks() -> list[str]:
    return re.findall(r"```python\n(.*?)```", README.read_text(encoding="utf-8"), flags=re.S)


def test_readme_has_snippets():
    assert python_blocks()


def test_readme_snippets_run(capsys):
    for i, code in enumerate(python_blocks()):
        exec(compile(code, f"README.md[python block {i}]", "exec"), {})
    out = capsys.readouterr().out
    assert "1024" in out and "384 (1, 2)" in out

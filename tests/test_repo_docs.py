"""README's set-up commands are the ones CI runs, and the documented tables match the code."""

import re
from pathlib import Path

from kt_moe import wrapper

ROOT = Path(__file__).resolve().parent.parent


def readme_commands():
    return re.findall(r"```bash\n(.+?)\n```", (ROOT / "README.md").read_text())


def test_ci_runs_the_readme_test_command():
    test_command = next(c for c in readme_commands() if "pytest" in c)
    ci_lines = (ROOT / ".ci" / "run").read_text().splitlines()
    assert test_command in ci_lines


def test_readme_has_the_demo_command():
    assert any(c.endswith("&& kt-moe demo") for c in readme_commands())


def test_readme_backend_table_matches_factory():
    text = (ROOT / "README.md").read_text()
    for method, backend in wrapper.BACKENDS.items():
        row = next(line for line in text.splitlines() if line.startswith("| ") and f" {method}" in line
                   and "`" in line)
        assert f"`{backend.__name__}`" in row, method

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


def test_repository_is_self_contained():
    """The architecture document lives in docs/design.md; no file refers to notes outside the repository."""
    assert (ROOT / "docs" / "design.md").is_file()
    outside = ("DESIGN" + ".md", "../" + "shared")
    for path in ROOT.rglob("*"):
        if path.suffix not in {".py", ".md", ".cpp", ".hpp", ".txt", ".toml", ".cfg"} or any(
                part in {"build", ".git", ".venv"} or part.startswith(".") for part in path.relative_to(ROOT).parts):
            continue
        text = path.read_text(errors="replace")
        assert not any(name in text for name in outside), path


def test_no_fast_math_in_the_build():
    """NaN and Inf must behave alike at every ISA level: no source is compiled with -ffast-math (or
    the parts of it that drop NaN/Inf semantics)."""
    build = (ROOT / "CMakeLists.txt").read_text()
    for flag in ("-ffast-math", "-ffinite-math-only", "-Ofast", "-fno-honor-nans", "-fno-honor-infinities"):
        assert flag not in build, flag

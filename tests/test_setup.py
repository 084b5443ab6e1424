"""The README's commands are the ones CI runs, and the layout rules hold."""
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


def _code_lines(text: str) -> list[str]:
    return [line.strip() for line in text.splitlines() if line.strip() and not line.lstrip().startswith("#")]


def test_ci_runs_the_readme_setup_and_test_commands():
    readme = REPO.joinpath("README.md").read_text()
    first_block = readme.split("```bash", 1)[1].split("```", 1)[0]
    setup, run = _code_lines(first_block)
    assert run == ".venv/bin/python run_benchmark.py"
    test_block = readme.split("```bash", 2)[2].split("```", 1)[0]
    (test_command,) = _code_lines(test_block)
    ci = _code_lines(REPO.joinpath(".ci", "run").read_text())
    assert setup in ci and test_command in ci
    assert "torch==2.13.0" in setup  # never an unpinned torch: it would pull a multi-GB CUDA build here


def test_datasets_folder_is_not_a_python_package():
    assert not list(REPO.joinpath("datasets").glob("*.py"))

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


README_IMPORTS = """
import torch
import torch.nn.functional as F
from benchmark.params import Param
from benchmark.registry import BaseMethod, TrainData, register
from benchmark.vq import VQParams, factory_string
from benchmark.vq.faiss_init import INIT_PARAMS, init_for
from benchmark.vq.torch_vq import TorchVQ
from benchmark.vq.train import LR_SPACE, M_PARAM, TEMPERATURE_SPACE, Step, Trainer, positives, train_params, train_spec
"""


def test_the_readme_method_example_runs(tmp_path, monkeypatch):
    """The README's "Adding a method" class registers, plans, trains on synthetic:quick and beats nothing it should
    not: it is a real method, so the front door never shows code that does not run."""
    from benchmark import registry
    from benchmark.cli import main
    readme = REPO.joinpath("README.md").read_text()
    code = readme.split("## Adding a method", 1)[1].split("```python", 1)[1].split("```", 1)[0]
    registry.discover()   # the built-in methods first: discovered inside the copy below, they would vanish with it
    monkeypatch.setattr(registry, "_REGISTRY", dict(registry._REGISTRY))   # the example leaves no trace
    exec(compile(README_IMPORTS + code, "README.md", "exec"), {"__name__": "readme_example"})
    out = tmp_path / "run"
    assert main(["--quick", "--methods", "my-pq,faiss-opq", "--out", str(out), "--param", "M=8"]) == 0
    import json
    recs = [json.loads(line) for line in (out / "results.jsonl").read_text().splitlines()]
    mine = next(r for r in recs if r["method"] == "my-pq")
    base = next(r for r in recs if r["method"] == "faiss-opq")
    assert mine["status"] == "ok" and mine["family"] == "contrastive" and mine["index"]["bytes_per_vector"] == 8
    assert mine["setup"]["train_queries"] is None and mine["train_info"]["steps"] > 0
    assert mine["metrics"]["nDCG@10"] > base["metrics"]["nDCG@10"] - 0.05   # trained from faiss-opq's start


def test_readme_glance_tables_are_the_committed_reports():
    """Every results-at-a-glance block of the README is the table its report's summary.json gives now (regenerate
    with ``python -m benchmark.report.glance --write README.md`` after a report is rebuilt)."""
    from benchmark.report.glance import glance_blocks
    blocks = glance_blocks(REPO.joinpath("README.md").read_text(), REPO)
    assert blocks, "the README has no glance block"
    for old, new in blocks:
        assert old == new, f"README glance block out of date with its report:\n{new}"


def test_glance_table_bolds_each_columns_best_and_names_what_a_report_lacks(tmp_path):
    import json
    import pytest
    from benchmark.report.glance import glance_table, winners_text, write_blocks
    row = {"Method": "", "Family": "", "Index B/vec": "", "a": "", "b": "", "Average": "", "Avg rank": "",
           "W / T / L vs best recon.": ""}
    rows = [{**row, "Method": "flat (exact search, not ranked)", "a": "0.900", "b": "0.800"},
            {**row, "Method": "x", "a": "0.500 ± 0.010 † ◆", "b": "0.300 ± 0.002"},
            {**row, "Method": "y", "a": "0.400 ± 0.010", "b": "0.350 ± 0.001 ◆"},
            {**row, "Method": "z", "a": "—", "b": "0.100 ± 0.001"}]
    (tmp_path / "r").mkdir()
    glance = [{"Dataset": "a", "Track": "16 B", "best exhaustive": "x, nprobe 256", "nDCG@10 (exhaustive)": "0.500 †",
               "tied with it (exhaustive)": "alone"},
              {"Dataset": "a", "Track": "8 B", "best exhaustive": "y", "nDCG@10 (exhaustive)": "0.300",
               "tied with it (exhaustive)": "with z"},
              {"Dataset": "a", "Track": "56 B", "best exhaustive": "w", "nDCG@10 (exhaustive)": "0.600",
               "tied with it (exhaustive)": "alone"}]
    (tmp_path / "r" / "summary.json").write_text(json.dumps({"cross_dataset": {"16/exhaustive": rows},
                                                             "glance": glance}))
    assert winners_text(tmp_path / "r") == ("  - **a**: 8 B `y` 0.300 (tied with z); 16 B `x` 0.500 † (alone in its "
                                            "tie group)\n")
    table = glance_table(tmp_path / "r", link_root="r").splitlines()
    assert table[0] == ("| Method | Family | Index B/vec | [a](r/leaderboard.md) | [b](r/leaderboard.md) | Average | "
                        "Avg rank | W / T / L vs best recon. |")
    assert table[2].split(" | ")[3:5] == ["0.900", "0.800"]                    # the reference is never bold
    assert table[3].split(" | ")[3:5] == ["**0.500** ± 0.010 † ◆", "0.300 ± 0.002"]
    assert table[4].split(" | ")[3:5] == ["0.400 ± 0.010", "**0.350** ± 0.001 ◆"]
    with pytest.raises(ValueError, match="no cross-dataset table '32/exhaustive' .*it has: 16/exhaustive"):
        glance_table(tmp_path / "r", track="32")
    readme = tmp_path / "README.md"
    readme.write_text("intro\n<!-- glance r 16 exhaustive -->\nold\n<!-- /glance -->\nend\n")
    assert write_blocks(readme) == 1 and write_blocks(readme) == 0
    assert readme.read_text() == ("intro\n<!-- glance r 16 exhaustive -->\n" + "\n".join(table)
                                  + "\n<!-- /glance -->\nend\n")

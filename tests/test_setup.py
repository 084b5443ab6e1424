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

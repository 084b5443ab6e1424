"""``run_benchmark.py --list-datasets`` lists the loader forms and the real catalog, each entry's source and whether
it is in the data cache (``$VQBENCH_DATA_DIR/beir/<name>``)."""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

from benchmark.data.catalog import load_catalog

REPO = Path(__file__).resolve().parent.parent
BEIR_TINY = Path(__file__).parent / "fixtures" / "beir_tiny"


def list_datasets(data_dir: Path) -> list[str]:
    env = {**os.environ, "VQBENCH_DATA_DIR": str(data_dir)}
    proc = subprocess.run([sys.executable, str(REPO / "run_benchmark.py"), "--list-datasets"], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    return proc.stdout.splitlines()


def row(lines: list[str], label: str) -> list[str]:
    """The catalog row of ``label``, split into its columns."""
    found = [line.split(None, 1) for line in lines if line.startswith("  ") and line.split()[0] == label]
    assert found, f"{label} not listed"
    return found[-1]  # the catalog table comes after the name forms


def test_lists_forms_catalog_sources_and_cache_state(tmp_path):
    shutil.copytree(BEIR_TINY, tmp_path / "beir" / "scifact")  # cached
    (tmp_path / "beir" / "nfcorpus").mkdir(parents=True)  # a folder without the files: the loader would fail on it
    shutil.copytree(BEIR_TINY, tmp_path / "beir" / "cqadupstack" / "android")  # 1 of 12 subsets
    lines = list_datasets(tmp_path)
    forms = [line.split()[0] for line in lines[1:lines.index("")]]
    assert forms == ["synthetic", "synthetic:quick", "msmarco", "beir/<name>", "beir:<folder-or-zip>", "npy:<dir>"]
    assert f"(cache: {tmp_path / 'beir'})" in lines[lines.index("") + 1]
    for name, entry in load_catalog().items():
        label = name if name == "msmarco" else f"beir/{name}" + ("/<subset>" if "subsets" in entry else "")
        source, rest = row(lines, label)[1].split(None, 1)
        assert source == ("public.ukp.informatik.tu-darmstadt.de" if "url" in entry else "local")
        assert rest.startswith(f"{entry['num_docs']:,} docs, {entry['num_queries']:,} {entry['eval_split']} queries")
    assert row(lines, "beir/scifact")[1].endswith(" yes")
    assert row(lines, "beir/fiqa")[1].endswith(" no")
    assert row(lines, "beir/nfcorpus")[1].endswith(" incomplete (missing nfcorpus/corpus.jsonl and 2 more)")
    assert row(lines, "msmarco")[1].endswith(" no")
    assert row(lines, "beir/cqadupstack/<subset>")[1].endswith(
        " incomplete (missing cqadupstack/english/corpus.jsonl and 32 more)")

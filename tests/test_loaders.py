"""BEIR and npy loaders: fixtures in folder and zip form, catalog, download errors, and every bad-input case."""
from __future__ import annotations

import ast
import inspect
import shutil
import sys
import zipfile
from pathlib import Path

import numpy as np
import pytest

from benchmark.data import (DatasetError, beir, check_dataset, check_dataset_name, dataset_options,
                            describe_dataset_options, list_datasets, load_dataset, npy, parse_dataset_opt, resolve,
                            synthetic)
from benchmark.data.beir import load_beir_dataset
from benchmark.data.catalog import load_catalog
from benchmark.data.npy import load_npy_dataset, read_qrels

BEIR_TINY = Path(__file__).parent / "fixtures" / "beir_tiny"
TRAIN_QRELS = {"q1": {"d1": 2, "d2": 1}, "q2": {"d4": 1}, "q3": {"d5": 1}}
TEST_QRELS = {"q4": {"d7": 1}, "q5": {"d9": 1}, "q6": {"d12": 2, "d11": 1}}


def copy_tiny(tmp_path: Path, name: str = "beir_tiny") -> Path:
    return Path(shutil.copytree(BEIR_TINY, tmp_path / name))


def zip_folder(folder: Path, zip_path: Path, nested: bool) -> Path:
    with zipfile.ZipFile(zip_path, "w") as zf:
        for f in sorted(folder.rglob("*")):
            if f.is_file():
                rel = f.relative_to(folder)
                zf.write(f, f"{folder.name}/{rel}" if nested else str(rel))
    return zip_path


def append(path: Path, text: str) -> None:
    with open(path, "a", encoding="utf-8") as f:
        f.write(text)


# ---------------------------------------------------------------- BEIR: folder, zip, catalog

def check_tiny(ds) -> None:
    assert ds.num_docs == 12 and ds.dim == 16 and ds.doc_emb.dtype == np.float32
    assert sorted(ds.splits) == ["test", "train"] and ds.eval_split == "test"
    assert ds.split("train").qrels == TRAIN_QRELS and ds.split("test").qrels == TEST_QRELS
    assert ds.split("test").query_ids == ["q4", "q5", "q6"]
    assert ds.split("test").query_texts[0] == "what is a sourdough starter made of"
    assert ds.split("train").query_emb.shape == (3, 16)
    assert ds.doc_ids[0] == "d1" and ds.doc_texts[0].startswith("Photosynthesis Plants use chlorophyll")
    assert ds.doc_texts[7].startswith("Knead the dough") and ds.doc_texts[8].startswith("The Tour de France")
    np.testing.assert_allclose(np.linalg.norm(ds.doc_emb, axis=1), 1, rtol=1e-5)
    assert not ds.ignore_identical_ids


@pytest.mark.parametrize("form", ["folder", "zip-nested", "zip-flat"])
def test_beir_folder_and_zip(form, tmp_path, data_dir, fake_model):
    src = BEIR_TINY if form == "folder" else zip_folder(BEIR_TINY, tmp_path / "tiny.zip", form == "zip-nested")
    ds = load_dataset(f"beir:{src}")
    check_tiny(ds)
    assert fake_model.calls == [12, 6]
    if form != "folder":
        extracted = list((data_dir / "beir-zip").iterdir())
        assert len(extracted) == 1 and Path(ds.meta["source"]).is_relative_to(extracted[0])
    again = load_dataset(f"beir:{src}")  # cache hit: no model use, same zip extraction
    assert fake_model.calls == [12, 6] and len(fake_model.loads) == 2
    np.testing.assert_array_equal(again.doc_emb, ds.doc_emb)


def test_changed_corpus_reencodes_docs_only(tmp_path, data_dir, fake_model):
    folder = copy_tiny(tmp_path)
    load_beir_dataset(f"beir:{folder}")
    text = (folder / "corpus.jsonl").read_text().replace("yellow jersey", "green jersey")
    (folder / "corpus.jsonl").write_text(text)
    load_beir_dataset(f"beir:{folder}")
    assert fake_model.calls == [12, 6, 12]
    load_beir_dataset(f"beir:{folder}", max_length=64)
    load_beir_dataset(f"beir:{folder}", normalize=False)
    load_beir_dataset(f"beir:{folder}", model="another/model")
    assert fake_model.calls == [12, 6, 12] + [12, 6] * 3
    assert len(list((data_dir / "embeddings").glob("*.npy"))) == 9
    assert not list((data_dir / "embeddings").glob(".*"))  # no temp files left behind


def test_split_param_and_unlabeled(data_dir, fake_model):
    ds = load_beir_dataset(f"beir:{BEIR_TINY}", split="train", include_unlabeled=True)
    assert ds.eval_split == "train"
    unl = ds.split("train-unlabeled")
    assert unl.query_ids == ["q7"] and not unl.labeled and unl.query_texts == [
        "how many eggs does a queen bee lay per day"]
    assert fake_model.calls == [12, 7]


def test_missing_split_lists_available(data_dir, fake_model):
    with pytest.raises(DatasetError, match=r"split 'dev' not found; available splits: \['test', 'train'\]"):
        load_beir_dataset(f"beir:{BEIR_TINY}", split="dev")
    assert fake_model.calls == []


def test_catalog_download_and_cache(data_dir, fake_model, monkeypatch):
    """The loader's use of the catalog (URL, md5, target folder, flags); tests/test_download.py runs the real
    download against a local server."""
    calls = []

    def fake_fetch(url: str, md5: str, dest: Path, layout) -> Path:
        calls.append((url, md5, dest))
        return Path(shutil.copytree(BEIR_TINY, dest))

    monkeypatch.setattr(beir, "fetch", fake_fetch)
    ds = load_dataset("beir/arguana")
    assert calls == [("https://public.ukp.informatik.tu-darmstadt.de/thakur/BEIR/datasets/arguana.zip",
                      "8ad3e3c2a5867cdced806d6503f29b99", data_dir / "beir" / "arguana")]
    assert ds.ignore_identical_ids and ds.name == "beir/arguana"
    assert Path(ds.meta["source"]) == (data_dir / "beir" / "arguana").resolve()
    load_dataset("beir/arguana")
    assert len(calls) == 1
    assert not load_dataset("beir/arguana", ignore_identical_ids=False).ignore_identical_ids


def test_catalog_subset(data_dir, fake_model, monkeypatch):
    layouts = []

    def fake_fetch(url: str, md5: str, dest: Path, layout) -> Path:
        layouts.append(list(layout))
        shutil.copytree(BEIR_TINY, dest / "android")
        return dest

    monkeypatch.setattr(beir, "fetch", fake_fetch)
    ds = load_dataset("beir/cqadupstack/android")
    assert Path(ds.meta["source"]) == (data_dir / "beir" / "cqadupstack" / "android").resolve()
    assert "wordpress/corpus.jsonl" in layouts[0] and "android/qrels/" in layouts[0]  # every subset is expected
    with pytest.raises(DatasetError, match=r"not a BEIR folder, missing .*cqadupstack/gaming/corpus.jsonl"):
        load_dataset("beir/cqadupstack/gaming")


def test_folder_named_like_catalog_gets_its_flags(tmp_path, data_dir, fake_model):
    assert load_dataset(f"beir:{copy_tiny(tmp_path, 'quora')}").ignore_identical_ids


def test_msmarco_dev_and_trec_dl_splits(tmp_path, data_dir, fake_model):
    folder = shutil.copytree(BEIR_TINY, data_dir / "beir" / "msmarco")
    (folder / "qrels" / "test.tsv").rename(folder / "qrels" / "dev.tsv")
    (folder / "qrels" / "dl19.tsv").write_text("q4 0 d7 3\nq4 0 d8 0\nq6 0 d12 2\n")  # TREC format
    ds = load_dataset("msmarco")
    assert ds.eval_split == "dev" and sorted(ds.splits) == ["dev", "dl19", "train"]
    assert ds.split("dl19").qrels == {"q4": {"d7": 3, "d8": 0}, "q6": {"d12": 2}}
    assert fake_model.calls == [12, 6]  # dl19 queries are shared with dev: encoded once
    assert load_dataset("beir/msmarco", split="dl19").eval_split == "dl19"


def test_offline_download_error(data_dir, fake_model, monkeypatch):
    import requests

    def offline(*args, **kwargs):
        raise requests.ConnectionError("Failed to resolve 'public.ukp.informatik.tu-darmstadt.de'")

    monkeypatch.setattr(requests, "get", offline)
    with pytest.raises(DatasetError) as err:
        load_dataset("beir/scifact")
    msg = str(err.value)
    url = "https://public.ukp.informatik.tu-darmstadt.de/thakur/BEIR/datasets/scifact.zip"
    assert msg.startswith(f"download of beir/scifact (URL and md5 from catalog.toml) failed: {url}: ConnectionError: "
                          f"Failed to resolve 'public.ukp.informatik.tu-darmstadt.de'; is the network unavailable?")
    assert f"{data_dir / 'beir' / 'scifact'}/corpus.jsonl" in msg and "VQBENCH_DATA_DIR" in msg
    assert list((data_dir / "beir").iterdir()) == []  # no temp file left behind


def test_download_without_requests(data_dir, monkeypatch):
    monkeypatch.setitem(sys.modules, "requests", None)
    with pytest.raises(DatasetError, match=r"needs the 'requests' package.*Download https://\S+/nfcorpus.zip by hand"):
        load_dataset("beir/nfcorpus")


def test_manual_unknown_and_subset_names(data_dir):
    with pytest.raises(DatasetError, match=r"beir/bioasq is not publicly downloadable: register at bioasq.org"):
        load_dataset("beir/bioasq")
    with pytest.raises(DatasetError, match=r"unknown BEIR dataset 'nope'; known: \['arguana'"):
        load_dataset("beir/nope")
    with pytest.raises(DatasetError, match=r"load beir/cqadupstack/<subset> with <subset> in \['android'"):
        load_dataset("beir/cqadupstack")
    with pytest.raises(DatasetError, match=r"no such folder or .zip file"):
        load_dataset("beir:/nonexistent/folder")


def test_catalog_and_list_datasets():
    catalog = load_catalog()
    assert len(catalog) == 19 and "msmarco" in catalog
    manual = sorted(n for n, e in catalog.items() if "url" not in e)
    assert manual == ["bioasq", "robust04", "signal1m", "trec-news"]
    for name, e in catalog.items():
        assert {"description", "splits", "eval_split", "num_docs", "num_queries", "license", "has_train"} <= set(e)
        assert e["eval_split"] in e["splits"]
        if "url" in e:
            assert e["url"] == f"https://public.ukp.informatik.tu-darmstadt.de/thakur/BEIR/datasets/{name}.zip"
        else:
            assert "obtain" in e
    assert catalog["msmarco"]["num_queries"] == 6980 and catalog["msmarco"]["eval_split"] == "dev"
    assert {n for n, e in catalog.items() if e.get("ignore_identical_ids")} == {"arguana", "quora"}
    names = [n for n, _ in list_datasets()]
    assert names[:3] == ["synthetic", "synthetic:quick", "msmarco"]
    assert {"beir/scifact", "beir/cqadupstack/<subset>", "beir:<folder-or-zip>", "npy:<dir>"} <= set(names)


def test_datasets_folder_is_not_a_package():
    assert not list((Path(__file__).parents[1] / "datasets").glob("*.py"))


# ---------------------------------------------------------------- BEIR: bad input

def corrupt(folder: Path, case: str) -> None:
    corpus, queries, qrels = folder / "corpus.jsonl", folder / "queries.jsonl", folder / "qrels"
    if case == "bad-json":
        lines = corpus.read_text().splitlines()
        lines[2] = lines[2][:-1]
        corpus.write_text("\n".join(lines) + "\n")
    elif case == "no-id":
        append(corpus, '{"title": "x", "text": "no id here"}\n')
    elif case == "no-text":
        append(queries, '{"_id": "q8"}\n')
    elif case == "dup-doc":
        append(corpus, '{"_id": "d3", "text": "again"}\n')
    elif case == "dup-query":
        append(queries, '{"_id": "q2", "text": "again"}\n')
    elif case == "unknown-doc":
        append(qrels / "test.tsv", "q5\td99\t1\n")
    elif case == "unknown-query":
        append(qrels / "test.tsv", "q99\td1\t1\n")
    elif case == "bad-score":
        append(qrels / "train.tsv", "q2\td3\thigh\n")
    elif case == "empty-split":
        (qrels / "test.tsv").write_text("query-id\tcorpus-id\tscore\n")
    elif case == "no-queries-file":
        queries.unlink()
    elif case == "no-qrels":
        shutil.rmtree(qrels)


BEIR_BAD = {
    "bad-json": r"corpus.jsonl:3: malformed JSON",
    "no-id": r"corpus.jsonl:13: missing field '_id'",
    "no-text": r"queries.jsonl:8: missing field 'text'",
    "dup-doc": r"corpus.jsonl \(field '_id'\): 1 duplicate ids, e.g. \['d3'\]",
    "dup-query": r"queries.jsonl \(field '_id'\): 1 duplicate ids, e.g. \['q2'\]",
    "unknown-doc": r"test.tsv: 1 qrels point at unknown doc ids, e.g. \[\('q5', 'd99'\)\]",
    "unknown-query": r"test.tsv: 1 qrels query ids have no query, e.g. \['q99'\]",
    "bad-score": r"train.tsv:6: relevance 'high' is not an integer",
    "empty-split": r"test.tsv: empty query set",
    "no-queries-file": r"not a BEIR folder, missing .*queries.jsonl",
    "no-qrels": r"not a BEIR folder, missing .*qrels/",
}


@pytest.mark.parametrize("case", sorted(BEIR_BAD))
def test_beir_bad_input(case, tmp_path, data_dir, fake_model):
    folder = copy_tiny(tmp_path)
    corrupt(folder, case)
    with pytest.raises(DatasetError, match=BEIR_BAD[case]):
        load_beir_dataset(f"beir:{folder}")
    assert fake_model.loads == [] and fake_model.calls == []  # raised before any encoding


def test_drop_unknown_qrels(tmp_path, data_dir, fake_model):
    folder = copy_tiny(tmp_path)
    corrupt(folder, "unknown-doc")
    append(folder / "qrels" / "test.tsv", "q99\td1\t1\n")
    ds = load_beir_dataset(f"beir:{folder}", drop_unknown_qrels=True)
    assert ds.split("test").qrels == TEST_QRELS and ds.meta["dropped_qrels"] == {"test": 2}


def test_bad_zip(tmp_path, data_dir):
    (tmp_path / "broken.zip").write_bytes(b"not a zip")
    with pytest.raises(DatasetError, match=r"broken.zip: not a readable zip file"):
        load_dataset(f"beir:{tmp_path / 'broken.zip'}")


def test_precomputed_embeddings_for_beir(tmp_path, data_dir, fake_model):
    emb = tmp_path / "emb"
    emb.mkdir()
    doc_ids = [f"d{i}" for i in (3, 1, 2, 4, 5, 6, 7, 8, 9, 10, 11, 12)]  # not the corpus order
    (emb / "corpus_ids.txt").write_text("\n".join(doc_ids) + "\n")
    np.save(emb / "corpus.npy", np.eye(12, 12, dtype=np.float16))
    (emb / "queries_ids.txt").write_text("\n".join(f"q{i}" for i in range(1, 8)) + "\n")
    np.save(emb / "queries.npy", np.ones((7, 12), np.float16))
    ds = load_beir_dataset(f"beir:{BEIR_TINY}", embeddings=emb)
    assert fake_model.loads == [] and ds.doc_ids == doc_ids and ds.doc_emb.dtype == np.float32
    assert ds.doc_texts[0].startswith("Volcanic eruptions") and ds.meta["model"] is None
    (emb / "corpus_ids.txt").write_text("\n".join(doc_ids[:-1] + ["d99"]) + "\n")
    with pytest.raises(DatasetError, match=r"1 docs without embedding \(e.g. \['d12'\]\), 1 unknown ids"):
        load_beir_dataset(f"beir:{BEIR_TINY}", embeddings=emb)


# ---------------------------------------------------------------- npy loader

def make_npy(root: Path, dtype=np.float32, trec: bool = False, dim: int = 8) -> Path:
    """6 docs, 5 queries (q4 judged nowhere); qrels in ``root/qrels``."""
    rng = np.random.default_rng(0)
    root.mkdir(parents=True)
    np.save(root / "corpus.npy", rng.standard_normal((6, dim)).astype(dtype))
    (root / "corpus_ids.txt").write_text("".join(f"d{i}\n" for i in range(6)))
    np.save(root / "queries.npy", rng.standard_normal((5, dim)).astype(dtype))
    (root / "queries_ids.txt").write_text("".join(f"q{i}\n" for i in range(5)))
    (root / "qrels").mkdir()
    if trec:
        (root / "qrels" / "test.tsv").write_text("q0 0 d0 1\nq1 0 d1 2\nq1 0 d2 0\n")
    else:
        (root / "qrels" / "test.tsv").write_text("query-id\tcorpus-id\tscore\nq0\td0\t1\nq1\td1\t2\nq1\td2\t0\n")
    (root / "qrels" / "train.tsv").write_text("q2\td3\t1\nq3\td4\t1\n")  # BEIR columns, no header
    return root


@pytest.mark.parametrize("dtype", [np.float32, np.float16])
@pytest.mark.parametrize("trec", [False, True])
def test_npy_loader(tmp_path, dtype, trec, data_dir):
    root = make_npy(tmp_path / "emb", dtype, trec)
    ds = load_dataset(f"npy:{root}")
    assert ds.doc_emb.dtype == np.float32 and ds.eval_split == "test" and sorted(ds.splits) == ["test", "train"]
    assert isinstance(ds.doc_emb, np.memmap)   # float32 stays memory-mapped, float16 is mapped from its float32 file
    assert len(list(data_dir.glob("float32/corpus-*.npy"))) == (dtype == np.float16)
    np.testing.assert_array_equal(ds.doc_emb, np.load(root / "corpus.npy").astype(np.float32))
    test = ds.split("test")
    assert test.query_ids == ["q0", "q1"] and test.qrels == {"q0": {"d0": 1}, "q1": {"d1": 2, "d2": 0}}
    np.testing.assert_array_equal(test.query_emb, np.load(root / "queries.npy")[:2].astype(np.float32))
    assert ds.split("train").qrels == {"q2": {"d3": 1}, "q3": {"d4": 1}}
    assert ds.meta["doc_dtype_on_disk"] == np.dtype(dtype).name


def test_npy_qrels_in_parent_docs_name_and_per_split_queries(tmp_path):
    data = tmp_path / "data"
    make_npy(data / "minilm")
    (data / "minilm" / "qrels").rename(data / "qrels")
    emb = data / "minilm"
    (emb / "corpus.npy").rename(emb / "docs.npy")
    (emb / "corpus_ids.txt").rename(emb / "docs_ids.txt")
    np.save(emb / "queries_extra.npy", np.ones((2, 8), np.float32))
    (emb / "queries_extra_ids.txt").write_text("x0\nx1\n")
    ds = load_npy_dataset(emb, include_unlabeled=True, split="train")
    assert ds.meta["qrels_dir"] == str(data / "qrels") and ds.eval_split == "train"
    assert ds.split("extra").query_ids == ["x0", "x1"] and not ds.split("extra").labeled
    assert ds.split("train-unlabeled").query_ids == ["q4"]


def test_read_qrels_formats(tmp_path):
    (tmp_path / "a.tsv").write_text("query-id\tcorpus-id\tscore\nq\td\t1\n\nq\te\t0\n")
    (tmp_path / "b.tsv").write_text("q Q0 d 3\nq Q0 e 0\n")
    assert read_qrels(tmp_path / "a.tsv") == {"q": {"d": 1, "e": 0}}
    assert read_qrels(tmp_path / "b.tsv") == {"q": {"d": 3, "e": 0}}
    (tmp_path / "c.tsv").write_text("q d\n")
    with pytest.raises(DatasetError, match=r"c.tsv:1: expected 3 columns .* or 4 .*got 2"):
        read_qrels(tmp_path / "c.tsv")
    (tmp_path / "d.tsv").write_text("q 0 d 1\nq d 1\n")
    with pytest.raises(DatasetError, match=r"d.tsv:2: expected 4 columns like the first line, got 3"):
        read_qrels(tmp_path / "d.tsv")


def break_npy(root: Path, case: str) -> None:
    if case == "dim":
        np.save(root / "queries.npy", np.zeros((5, 4), np.float32))
    elif case == "nan":
        docs = np.load(root / "corpus.npy")
        docs[3, 1] = np.nan
        np.save(root / "corpus.npy", docs)
    elif case == "inf-query":
        q = np.load(root / "queries.npy")
        q[1, 0] = np.inf
        np.save(root / "queries.npy", q)
    elif case == "ids-length":
        (root / "corpus_ids.txt").write_text("d0\nd1\nd2\n")
    elif case == "dup-ids":
        (root / "queries_ids.txt").write_text("q0\nq1\nq2\nq1\nq4\n")
    elif case == "empty-split":
        (root / "qrels" / "test.tsv").write_text("query-id\tcorpus-id\tscore\n")
    elif case == "unknown-doc":
        append(root / "qrels" / "test.tsv", "q0\td42\t1\n")
    elif case == "no-corpus":
        (root / "corpus.npy").unlink()
    elif case == "no-ids":
        (root / "queries_ids.txt").unlink()
    elif case == "int-dtype":
        np.save(root / "corpus.npy", np.zeros((6, 8), np.int64))
    elif case == "no-qrels":
        shutil.rmtree(root / "qrels")


NPY_BAD = {
    "dim": r"queries.npy: embedding dim mismatch: queries are 4-d but docs .* are 8-d",
    "nan": r"corpus.npy: row 3 contains NaN/inf",
    "inf-query": r"queries.npy \(split 'test'\): row 1 contains NaN/inf",
    "ids-length": r"corpus_ids.txt: 3 ids but .*corpus.npy has 6 rows",
    "dup-ids": r"queries_ids.txt: 1 duplicate ids, e.g. \['q1'\]",
    "empty-split": r"test.tsv: split 'test' has an empty query set",
    "unknown-doc": r"test.tsv: 1 qrels point at unknown doc ids, e.g. \[\('q0', 'd42'\)\]",
    "no-corpus": r"no doc embeddings file \(expected one of corpus.npy, docs.npy\)",
    "no-ids": r"queries_ids.txt: missing",
    "int-dtype": r"corpus.npy: expected float16/float32 embeddings, got dtype int64",
    "no-qrels": r"no qrels folder: looked for .*qrels and .*qrels",
}


@pytest.mark.parametrize("case", sorted(NPY_BAD))
def test_npy_bad_input(case, tmp_path):
    root = make_npy(tmp_path / "emb")
    break_npy(root, case)
    with pytest.raises(DatasetError, match=NPY_BAD[case]):
        load_npy_dataset(root)


def test_npy_missing_split_and_drop_unknown(tmp_path):
    root = make_npy(tmp_path / "emb")
    with pytest.raises(DatasetError, match=r"split 'dev' not found; available splits: \['test', 'train'\]"):
        load_npy_dataset(root, split="dev")
    append(root / "qrels" / "test.tsv", "q0\td42\t1\n")
    assert load_npy_dataset(root, drop_unknown_qrels=True).split("test").qrels["q0"] == {"d0": 1}


def test_dev_split_carved_from_train_hides_test():
    full = load_dataset("synthetic:quick")
    ds = load_dataset("synthetic:quick", dev_queries=100, dev_seed=3)
    train, dev = ds.split("train"), ds.split("dev")
    assert ds.eval_split == "dev" and set(ds.splits) == {"train", "train-unlabeled", "dev"}   # no test split
    assert len(dev) == 100 and len(train) == len(full.split("train")) - 100
    assert not set(dev.query_ids) & set(train.query_ids)
    assert set(dev.query_ids) | set(train.query_ids) == set(full.split("train").query_ids)
    rows = {q: i for i, q in enumerate(full.split("train").query_ids)}
    q = dev.query_ids[7]
    np.testing.assert_array_equal(dev.query_emb[7], full.split("train").query_emb[rows[q]])
    assert dev.qrels[q] == full.split("train").qrels[q] and ds.meta["dev"] == {
        "carved_from": "train", "queries": 100, "seed": 3}
    again = load_dataset("synthetic:quick", dev_queries=100, dev_seed=3)
    assert again.split("dev").query_ids == dev.query_ids
    assert load_dataset("synthetic:quick", dev_queries=100, dev_seed=4).split("dev").query_ids != dev.query_ids
    # what a method may train on never includes the dev queries
    from benchmark.runner import train_data
    td = train_data(ds, seed=0, device="cpu", cache_dir=None)
    assert not set(td.train_query_ids) & set(dev.query_ids)
    with pytest.raises(DatasetError, match=r"dev_queries must be in \[1, 799\]"):
        load_dataset("synthetic:quick", dev_queries=800)


# ---------------------------------------------------------------- the name -> loader table and dataset options

@pytest.mark.parametrize("name, key, rest", [
    ("synthetic", "synthetic", ""), ("synthetic:quick", "synthetic:quick", ""), ("msmarco", "msmarco", ""),
    ("beir/msmarco", "beir/", "msmarco"), ("beir/cqadupstack/android", "beir/", "cqadupstack/android"),
    ("beir:/data/x.zip", "beir:", "/data/x.zip"), ("npy:rel/dir", "npy:", "rel/dir"),
])
def test_resolve_table(name, key, rest):
    entry, got = resolve(name)
    assert (entry.key, got) == (key, rest)


@pytest.mark.parametrize("name, message", [
    ("synthtic", r"unknown dataset 'synthtic' \(did you mean 'synthetic'"),
    ("synthetic:quik", r"unknown dataset 'synthetic:quik' \(did you mean 'synthetic:quick'"),
    ("scifact", r"unknown dataset 'scifact' \(did you mean 'beir/scifact'\?\); valid forms: 'synthetic'"),
    ("npy", r"unknown dataset 'npy' \(did you mean 'npy:<dir>'\?\)"),
    ("npy:", r"unknown dataset 'npy:' \(did you mean 'npy:<dir>'\?\)"),
    ("wat", r"^unknown dataset 'wat'; valid forms: 'synthetic', 'synthetic:quick', 'msmarco', 'beir/<name>', "
            r"'beir:<folder-or-zip>', 'npy:<dir>'$"),
    ("beir/sci-fact", r"unknown BEIR dataset 'sci-fact' \(did you mean 'beir/scifact'\?\); known: \['arguana'"),
    ("beir/cqadupstack/andriod", r"with <subset> in \['android', .*\] \(did you mean 'beir/cqadupstack/android'\?\)"),
    ("beir/scifact/x", r"beir/scifact has no subsets"),
])
def test_unknown_names_get_close_matches(name, message):
    with pytest.raises(DatasetError, match=message):
        check_dataset_name(name)


def test_files_checked_by_check_dataset_not_by_name(tmp_path):
    check_dataset_name("npy:/no/such/dir")  # the name alone is valid
    with pytest.raises(DatasetError, match=r"^dataset 'npy:/no/such/dir': npy dataset folder /no/such/dir does not"):
        check_dataset("npy:/no/such/dir")
    with pytest.raises(DatasetError, match=r"scifact: no such folder or .zip file .*\(did you mean 'beir/scifact'\?\)"):
        check_dataset("beir:scifact")


def test_declared_options_match_the_loader_signatures():
    """Declared option defaults are the loader functions' own defaults, so a spec means the same either way."""
    def defaults(fn, skip):
        return {k: p.default for k, p in inspect.signature(fn).parameters.items() if k not in skip}
    assert {k: p.default for k, p in beir.OPTIONS.items()} == defaults(beir.load_beir_dataset, {"name"})
    assert {k: p.default for k, p in npy.OPTIONS.items()} == defaults(npy.load_npy_dataset, {"name", "path"})
    assert {k: p.default for k, p in synthetic.OPTIONS.items()} == defaults(synthetic.make_synthetic, {"name"})
    quick = dataset_options("synthetic:quick")
    assert quick["num_docs"].default == 4000 and quick["signal_dim"].default == 24 and quick["seed"].default == 0
    assert dataset_options("synthetic")["num_docs"].default == 50_000
    assert set(dataset_options("msmarco")) == set(beir.OPTIONS) | {"dev_queries", "dev_seed", "teacher",
                                                                    "teacher_nlist", "teacher_nprobe", "teacher_recall"}
    assert dataset_options("npy:x")["drop_unknown_qrels"].type is bool
    lines = describe_dataset_options("npy:x")
    assert lines[2] == ("drop_unknown_qrels=False  (bool)  drop judgments naming an unknown doc or query id "
                        "instead of failing")


def test_check_dataset_options(tmp_path):
    root = make_npy(tmp_path / "emb")
    values = check_dataset(f"npy:{root}", {"drop_unknown_qrels": True, "qrels_dir": root / "qrels"})
    assert values["drop_unknown_qrels"] is True and values["qrels_dir"] == str(root / "qrels")  # a Path is a str
    assert values["split"] is None and values["dev_queries"] == 0
    with pytest.raises(DatasetError) as err:
        check_dataset(f"npy:{root}", {"drop_unknown_qrel": True, "split": 3, "dev_queries": -1}, label="mine")
    lines = str(err.value).splitlines()
    assert len(lines) == 3  # one line per problem
    assert lines[0].startswith("dataset 'mine': unknown option 'drop_unknown_qrel' (did you mean "
                               "'drop_unknown_qrels'?); options of npy:<dir>: split, qrels_dir, drop_unknown_qrels")
    assert ("[datasets.<alias>] in a config file (drop_unknown_qrels = true)" in lines[0]
            and "--dataset-opt drop_unknown_qrels=true" in lines[0])
    assert lines[1] == "dataset 'mine' option split: expected str or None, got 3"
    assert lines[2] == "dataset 'mine' option dev_queries: expected int >= 0, got -1"
    with pytest.raises(DatasetError, match=r"^dataset 'x' option drop_unknown_qrels: expected bool, got 'yes'$"):
        check_dataset("beir/scifact", {"drop_unknown_qrels": "yes"}, label="x")
    with pytest.raises(DatasetError, match=r"option max_length: expected int >= 1 or None, got 0"):
        check_dataset("beir/scifact", {"max_length": 0})
    with pytest.raises(DatasetError, match=r"option nuisance_energy: expected float >= 0 and <= 1, got 1.5"):
        check_dataset("synthetic", {"nuisance_energy": 1.5})
    with pytest.raises(DatasetError,
                       match=r"^dataset 'synthetic:quick' option signal_dim: expected < dim \(24\), got 24"):
        check_dataset("synthetic:quick", {"dim": 24})   # the preset's signal_dim (24) no longer fits
    with pytest.raises(DatasetError, match=r"unknown option 'model'; options of synthetic:quick: num_docs"):
        load_dataset("synthetic:quick", model="x")


def test_options_reach_the_loader_with_preset_defaults():
    ds = load_dataset("synthetic:quick", num_docs=500, num_test=20)
    assert ds.num_docs == 500 and ds.dim == 64 and len(ds.split("test")) == 20 and len(ds.split("train")) == 800
    assert ds.meta["params"]["signal_dim"] == 24


@pytest.mark.parametrize("text, expected", [
    ("drop_unknown_qrels=true", ("drop_unknown_qrels", True)),
    ("drop_unknown_qrels=False", ("drop_unknown_qrels", False)),
    ("split=dev", ("split", "dev")), ("split=\"2019\"", ("split", "2019")), ("split=none", ("split", None)),
    ("dev_queries=2000", ("dev_queries", 2000)), ("max_length=128", ("max_length", 128)),
])
def test_parse_dataset_opt(text, expected):
    assert parse_dataset_opt("beir/scifact", text) == expected


@pytest.mark.parametrize("text, message", [
    ("drop_unknown_qrels", r"--dataset-opt 'drop_unknown_qrels': expected KEY=VALUE"),
    ("drop_unkown_qrels=true", r"has no option 'drop_unkown_qrels' \(did you mean 'drop_unknown_qrels'\?\)"),
    ("drop_unknown_qrels=yes", r"option drop_unknown_qrels: expected bool, got 'yes'"),
    ("max_length=long", r"option max_length: expected int >= 1 or None, got 'long'"),
])
def test_parse_dataset_opt_errors(text, message):
    with pytest.raises(DatasetError, match=message):
        parse_dataset_opt("beir/scifact", text)


def test_hints_name_both_ways_to_set_an_option(tmp_path, data_dir, fake_model):
    folder = copy_tiny(tmp_path)
    corrupt(folder, "unknown-doc")
    with pytest.raises(DatasetError) as err:
        load_dataset(f"beir:{folder}")
    assert ("set drop_unknown_qrels = true under [datasets.<alias>] in a config file, or pass --dataset-opt "
            "drop_unknown_qrels=true on the command line") in str(err.value)
    with pytest.raises(DatasetError, match=r"available splits: \['test', 'train'\] \(to pick one, set split = "
                                           r"\"test\" under \[datasets.<alias>\] .* --dataset-opt split=test"):
        load_dataset(f"beir:{BEIR_TINY}", split="dev")
    with pytest.raises(DatasetError, match=r"option dev_queries must be in \[1, 799\].*--dataset-opt dev_queries=80 "):
        load_dataset("synthetic:quick", dev_queries=800)


def test_data_package_imports_have_no_cycle_and_types_import_no_loader():
    """Every import in benchmark/data (function-level ones too) forms an acyclic graph; dataset.py imports no
    loader, and beir.py knows nothing of the synthetic presets or of the dispatch table."""
    pkg = Path(__file__).parents[1] / "benchmark" / "data"
    graph = {}
    for f in pkg.glob("*.py"):
        mod = f"benchmark.data.{f.stem}" if f.stem != "__init__" else "benchmark.data"
        deps = set()
        for node in ast.walk(ast.parse(f.read_text())):
            if isinstance(node, ast.ImportFrom) and node.module:
                deps |= {f"{node.module}.{a.name}" if node.module == "benchmark.data" and f.stem != "__init__"
                         else node.module for a in node.names}
            elif isinstance(node, ast.Import):
                deps |= {a.name for a in node.names}
        graph[mod] = {d for d in deps if d.startswith("benchmark.data")}
    assert graph["benchmark.data.dataset"] == set()
    assert "benchmark.data.synthetic" not in graph["benchmark.data.beir"]
    assert "benchmark.data.loaders" not in graph["benchmark.data.beir"] | graph["benchmark.data.npy"]
    seen: dict[str, int] = {}

    def visit(mod: str, path: list[str]) -> None:
        assert seen.get(mod) != 1, f"import cycle: {' -> '.join(path + [mod])}"
        if seen.get(mod) == 2:
            return
        seen[mod] = 1
        for dep in graph.get(mod, ()):
            visit(dep, path + [mod])
        seen[mod] = 2

    for mod in graph:
        visit(mod, [])
    assert len(graph) >= 8


# ---------------------------------------------------------------- issue #14: rows named by the file, BOMs

def test_npy_inf_row_is_the_files_row_not_the_qrels_order(tmp_path):
    root = make_npy(tmp_path / "emb")
    (root / "qrels" / "test.tsv").write_text("q3\td1\t1\nq2\td2\t1\nq4\td0\t1\n")  # q2: 2nd judged, row 2
    (root / "qrels" / "train.tsv").write_text("q0\td3\t1\n")
    q = np.load(root / "queries.npy")
    q[2, 5] = np.inf
    np.save(root / "queries.npy", q)
    with pytest.raises(DatasetError, match=r"queries.npy \(split 'test'\): row 2 contains NaN/inf values"):
        load_dataset(f"npy:{root}")


def test_beir_precomputed_inf_row_is_the_files_row(tmp_path, data_dir, fake_model):
    emb = tmp_path / "emb"
    emb.mkdir()
    (emb / "corpus_ids.txt").write_text("".join(f"d{i}\n" for i in range(1, 13)))
    np.save(emb / "corpus.npy", np.eye(12, 12, dtype=np.float32))
    (emb / "queries_ids.txt").write_text("".join(f"q{i}\n" for i in (7, 6, 5, 4, 3, 2, 1)))  # reversed
    q = np.ones((7, 12), np.float32)
    q[5, 0] = np.nan   # the file's row 5 = q2, 5th of the queries the splits ask for (q4 q5 q6 q1 q2 q3)
    np.save(emb / "queries.npy", q)
    with pytest.raises(DatasetError, match=r"queries.npy: row 5 contains NaN/inf"):
        load_beir_dataset(f"beir:{BEIR_TINY}", embeddings=emb)


@pytest.mark.parametrize("header", [False, True])
def test_qrels_with_utf8_bom(tmp_path, header):
    root = make_npy(tmp_path / "emb")
    body = ("query-id\tcorpus-id\tscore\n" if header else "") + "q0\td0\t1\nq1\td1\t2\n"
    (root / "qrels" / "test.tsv").write_bytes(b"\xef\xbb\xbf" + body.encode())
    (root / "queries_ids.txt").write_bytes(b"\xef\xbb\xbf" + "".join(f"q{i}\n" for i in range(5)).encode())
    ds = load_dataset(f"npy:{root}")
    assert ds.split("test").qrels == {"q0": {"d0": 1}, "q1": {"d1": 2}} and ds.split("test").query_ids == ["q0", "q1"]


def test_beir_qrels_with_utf8_bom(tmp_path, data_dir, fake_model):
    folder = copy_tiny(tmp_path)
    for f in ("corpus.jsonl", "queries.jsonl"):
        (folder / f).write_bytes(b"\xef\xbb\xbf" + (folder / f).read_bytes())
    (folder / "qrels" / "test.tsv").write_bytes(b"\xef\xbb\xbfq4\td7\t1\nq5\td9\t1\nq6\td12\t2\nq6\td11\t1\n")
    check_tiny(load_dataset(f"beir:{folder}"))


def test_every_listed_name_resolves_to_its_loader():
    rows = list_datasets()
    names = [n for n, _ in rows]
    assert len(names) == len(set(names)) == 2 + 19 + 2 and names[-2:] == ["beir:<folder-or-zip>", "npy:<dir>"]
    for name in names:
        if "<" not in name:
            check_dataset_name(name)
    assert resolve("beir/trec-covid")[0].key == "beir/" and resolve("msmarco")[0].key == "msmarco"


def test_bad_option_fails_before_reading_or_encoding(tmp_path, data_dir, fake_model, monkeypatch):
    read = []
    monkeypatch.setattr(beir, "_read_corpus", lambda path: read.append(path))
    with pytest.raises(DatasetError, match=r"^dataset 'beir:\S+beir_tiny' option include_unlabeled: expected bool"):
        load_dataset(f"beir:{BEIR_TINY}", include_unlabeled=1)
    assert read == [] and fake_model.loads == []


def test_a_float16_corpus_is_converted_by_blocks_never_whole(tmp_path, data_dir, monkeypatch):
    """Issue #29: a float16 corpus becomes a float32 file in the cache, written block by block (the largest numpy
    allocation is a block, not the N x d float32 matrix), converted once, again when the source changes."""
    import tracemalloc

    from benchmark.data import npy as npy_mod
    rng = np.random.default_rng(0)
    docs = rng.standard_normal((100_000, 64)).astype(np.float16)     # 25.6 MB as float32
    np.save(tmp_path / "corpus.npy", docs)
    monkeypatch.setattr(npy_mod, "CONVERT_BLOCK", 2000)
    src = np.load(tmp_path / "corpus.npy", mmap_mode="r")
    tracemalloc.start()
    out = npy_mod.as_float32(src)
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    assert peak < 2_000_000, peak                                       # a 2000-row block is 0.5 MB as float32
    assert isinstance(out, np.memmap) and out.dtype == np.float32 and not out.flags.writeable
    np.testing.assert_array_equal(out, docs.astype(np.float32))
    (made,) = data_dir.glob("float32/corpus-*.npy")
    stamp = made.stat().st_mtime_ns
    assert npy_mod.as_float32(np.load(tmp_path / "corpus.npy", mmap_mode="r")).filename == out.filename
    assert made.stat().st_mtime_ns == stamp                              # converted once
    np.save(tmp_path / "corpus.npy", docs[:10])                          # the source changed: a new conversion
    assert npy_mod.as_float32(np.load(tmp_path / "corpus.npy", mmap_mode="r")).shape == (10, 64)
    assert len(list(data_dir.glob("float32/corpus-*.npy"))) == 2
    assert not list(data_dir.glob("float32/.*.tmp"))                     # nothing half-written left behind

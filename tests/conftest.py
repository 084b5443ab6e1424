"""Shared fixtures."""
from __future__ import annotations

import zlib
from pathlib import Path

import numpy as np
import pytest

class FakeEncoder:
    """Stands in for a SentenceTransformer: hashed bag-of-words vectors (16-d); records every encode call."""

    dim = 16

    def __init__(self) -> None:
        self.loads: list[tuple] = []
        self.calls: list[int] = []

    def encode(self, texts, batch_size, show_progress_bar, normalize_embeddings, convert_to_numpy):
        self.calls.append(len(texts))
        out = np.zeros((len(texts), self.dim), np.float32)
        for i, text in enumerate(texts):
            for word in text.lower().split():
                out[i] += np.random.default_rng(zlib.crc32(word.encode())).standard_normal(self.dim)
        if normalize_embeddings:
            out /= np.maximum(np.linalg.norm(out, axis=1, keepdims=True), 1e-12)
        return out


@pytest.fixture
def fake_model(monkeypatch) -> FakeEncoder:
    """Replace model loading in benchmark.data.encode with a :class:`FakeEncoder` (``.loads`` / ``.calls`` count use)."""
    from benchmark.data import encode
    fake = FakeEncoder()

    def load(model: str, device: str, max_length: int | None) -> FakeEncoder:
        fake.loads.append((model, device, max_length))
        return fake

    monkeypatch.setattr(encode, "_load_model", load)
    return fake


@pytest.fixture
def data_dir(tmp_path, monkeypatch) -> Path:
    """A private ``$VQBENCH_DATA_DIR`` so tests never touch datasets/cache."""
    path = tmp_path / "cache"
    monkeypatch.setenv("VQBENCH_DATA_DIR", str(path))
    return path

"""Training device selection: clear errors for unusable devices; on a CUDA machine, GPU training matches CPU."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from benchmark.data import load_dataset
from benchmark.registry import make_method
from benchmark.runner import train_data
from benchmark.vq.torch_vq import torch_device

CUDA = torch.cuda.is_available()


def test_cpu_device_and_bad_names() -> None:
    assert torch_device("cpu") == torch.device("cpu")
    with pytest.raises(ValueError, match="unknown torch device 'gpu0'"):
        torch_device("gpu0")


@pytest.mark.skipif(CUDA, reason="checks the error of a machine without CUDA")
def test_cuda_without_gpu_says_so() -> None:
    with pytest.raises(ValueError, match="torch sees no CUDA GPU"):
        torch_device("cuda")


@pytest.mark.skipif(not CUDA, reason="needs a CUDA GPU")
@pytest.mark.parametrize("name, params", [
    ("jpq-ivf", {"M": 8, "nlist": 16, "top_k": 50, "opq_niter": 2, "max_train_points": 2000, "epochs": 0.5}),
    ("distill-vq", {"M": 8, "nlist": 16, "opq_niter": 2, "max_train_points": 2000, "epochs": 0.5}),
    ("infonce-pq", {"M": 8, "opq_niter": 2, "max_train_points": 2000, "hard_k": 50, "hard_negatives": 8}),
])
def test_cuda_training_matches_cpu(tmp_path, name: str, params: dict) -> None:
    quick = load_dataset("synthetic:quick")
    fits = {dev: make_method(name, params).fit(train_data(quick, 0, dev, str(tmp_path))) for dev in ("cpu", "cuda")}
    np.testing.assert_allclose(fits["cuda"].pq_codebooks, fits["cpu"].pq_codebooks, atol=1e-4)
    if fits["cpu"].nlist:
        np.testing.assert_allclose(fits["cuda"].ivf_centroids, fits["cpu"].ivf_centroids, atol=1e-4)


@pytest.mark.skipif(not CUDA, reason="needs a CUDA GPU")
def test_cuda_teacher_topk_matches_cpu() -> None:
    """The exact teacher on the GPU (faiss-GPU, or torch matmuls by blocks without it) mines the CPU's top-K."""
    from benchmark.vq.mining import exact_topk
    rng = np.random.default_rng(0)
    docs = rng.standard_normal((5000, 64)).astype(np.float32)
    queries = rng.standard_normal((300, 64)).astype(np.float32)
    cpu_scores, cpu_ids = exact_topk(docs, queries, 50, doc_chunk=1200)
    gpu_scores, gpu_ids = exact_topk(docs, queries, 50, doc_chunk=1200, gpu=True)
    np.testing.assert_allclose(gpu_scores, cpu_scores, rtol=1e-4, atol=1e-4)
    assert np.mean(gpu_ids == cpu_ids) > 0.999      # ties aside

"""The dataset layer: dataset types and validation, and the loaders (synthetic, npy, BEIR, encoding, catalog)."""
from benchmark.data.dataset import (DatasetError, Qrels, RetrievalDataset, Split, carve_dev, check_dataset_name,
                                    check_embeddings, check_qrels, check_unique, load_dataset, validate)

__all__ = ["DatasetError", "Qrels", "RetrievalDataset", "Split", "carve_dev", "check_dataset_name",
           "check_embeddings", "check_qrels", "check_unique", "load_dataset", "validate"]

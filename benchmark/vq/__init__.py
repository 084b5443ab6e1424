"""The quantizer layer: parameters and their faiss round trip, the torch quantizer, faiss inits, candidate mining,
and the shared training core of learned objectives (:mod:`benchmark.vq.train`)."""
from benchmark.vq.params import (ADD_CHUNK, WRITEBACK_MODES, BuiltIndex, VQParams, add_in_chunks, build_index,
                                 empty_index, encode_docs, encode_pq, exact_index, factory_string,
                                 fold_query_map, fold_single_centroid, params_from_index, reconstruct, rotate)

__all__ = ["ADD_CHUNK", "WRITEBACK_MODES", "BuiltIndex", "VQParams", "add_in_chunks", "build_index",
           "empty_index", "encode_docs", "encode_pq", "exact_index", "factory_string", "fold_query_map",
           "fold_single_centroid",
           "params_from_index", "reconstruct", "rotate"]

"""Trained VQ parameters and their round trip to and from a real faiss index.

A method's ``fit`` returns :class:`VQParams`; the harness turns it into a faiss index with :func:`build_index`
(IndexPQ or IndexIVFPQ, inner product, optional OPQ pre-transform). 4-bit codes are searched by faiss's fast-scan
(``IndexPQFastScan`` / ``IndexIVFPQFastScan``, SIMD scans of 8-bit quantized lookup tables) unless ``search="plain"``
(see :data:`SEARCH_MODES`; a method passes its own choice, e.g. score-aware's ``search`` param).
:func:`params_from_index` reads a trained faiss index (fast-scan too) back into :class:`VQParams` (how learned
methods are initialised from faiss).

Conventions: ``rotation`` is faiss's OPQ matrix A (d x d), applied as ``x @ A.T``; IVF centroids and PQ codebooks live
in the rotated space; the PQ encodes the residual ``x - centroid[assign]`` (``by_residual``) when there is an IVF.
"""
from __future__ import annotations

from dataclasses import dataclass, field, replace

import faiss
import numpy as np
from faiss.contrib import inspect_tools, ivf_tools

WRITEBACK_MODES = ("codes", "preassigned", "reencode")
# How an index of 4-bit codes is searched. "fastscan": the codes are packed (blocks of FASTSCAN_BBS docs) into faiss's
# IndexPQFastScan / IndexIVFPQFastScan, whose SIMD scan adds 8-bit quantized lookup tables in 16-bit accumulators
# (the analogue of ScaNN's LUT16 scan): scores are approximate, off by at most about (sub-quantizers + 1) / 2 LUT
# quantization steps (a step = the widest sub-quantizer's LUT range / 255), so near-ties may reorder. "plain":
# IndexPQ / IndexIVFPQ scanning float lookup tables one code at a time (exact scores of the codes, no SIMD).
# 8-bit codes have no fast-scan kernel in faiss and are always searched plain.
SEARCH_MODES = ("fastscan", "plain")
FASTSCAN_BBS = 32   # docs per packed fast-scan block (faiss's default bbs)
ADD_CHUNK = 65536


def factory_string(M: int, nlist: int = 0, opq: bool = False, nbits: int = 8, fastscan: bool = False) -> str:
    """The faiss ``index_factory`` string ``[OPQ{M},][IVF{nlist},]PQ{M}x{nbits}[fs]`` (``nlist`` 0: no IVF;
    ``fs``: fast-scan)."""
    pq = f"PQ{M}x{nbits}" + ("fs" if fastscan else "")
    return ",".join(([f"OPQ{M}"] if opq else []) + ([f"IVF{nlist}"] if nlist else []) + [pq])


@dataclass
class VQParams:
    """What a VQ method learned. Optional doc assignment/codes are the training-time ones (for write-back)."""

    pq_codebooks: np.ndarray                      # (M, 256, d/M) float32
    ivf_centroids: np.ndarray | None = None       # (nlist, d) float32, rotated space
    rotation: np.ndarray | None = None            # (d, d) float32, faiss OPQ matrix A
    doc_assign: np.ndarray | None = None          # (n,) int64 IVF list of each doc
    doc_codes: np.ndarray | None = None           # (n, M) uint8 PQ codes of each doc
    query_map: np.ndarray | None = None           # (d, d) float32 applied to queries only: q @ query_map.T
    writeback: str = "reencode"                   # how build_index writes docs (see WRITEBACK_MODES)
    info: dict = field(default_factory=dict)      # method-specific facts worth recording (losses, epochs, ...)
    search: str = "fastscan"                      # how 4-bit codes are searched (see SEARCH_MODES; 8-bit: plain)

    def __post_init__(self) -> None:
        if self.writeback not in WRITEBACK_MODES:
            raise ValueError(f"writeback must be one of {WRITEBACK_MODES}, got {self.writeback!r}")
        if self.search not in SEARCH_MODES:
            raise ValueError(f"search must be one of {SEARCH_MODES}, got {self.search!r}")
        if self.pq_codebooks.ndim != 3:
            raise ValueError(f"pq_codebooks must be (M, ksub, dsub), got shape {self.pq_codebooks.shape}")

    @property
    def M(self) -> int:
        return int(self.pq_codebooks.shape[0])

    @property
    def nbits(self) -> int:
        return int(np.log2(self.pq_codebooks.shape[1]))

    @property
    def dim(self) -> int:
        return int(self.pq_codebooks.shape[0] * self.pq_codebooks.shape[2])

    @property
    def nlist(self) -> int:
        return 0 if self.ivf_centroids is None else int(self.ivf_centroids.shape[0])

    @property
    def fastscan(self) -> bool:
        """Whether :func:`build_index` builds a fast-scan index (4-bit codes and ``search="fastscan"``)."""
        return self.nbits == 4 and self.search == "fastscan"

    @property
    def factory(self) -> str:
        """The faiss ``index_factory`` string of the index this builds."""
        return factory_string(self.M, self.nlist, self.rotation is not None, self.nbits, self.fastscan)

    @property
    def bytes_per_vector(self) -> int:
        return self.M * self.nbits // 8


@dataclass
class BuiltIndex:
    """A method's result that is already a faiss index holding every doc, in corpus order (ids 0..n-1): exact
    search, or a faiss-native quantizer (scalar, RaBitQ, fast-scan, binary) the harness searches as it is."""

    index: faiss.Index
    info: dict = field(default_factory=dict)
    query_map: np.ndarray | None = None           # (d, d) float32 applied to queries only, as in VQParams


def add_in_chunks(index: faiss.Index, doc_emb: np.ndarray) -> faiss.Index:
    """Add every doc (ids 0..n-1) as float32, ``ADD_CHUNK`` rows at a time (memory-mapped corpora stay on disk)."""
    for start in range(0, doc_emb.shape[0], ADD_CHUNK):
        index.add(np.ascontiguousarray(doc_emb[start:start + ADD_CHUNK], dtype=np.float32))
    return index


def exact_index(doc_emb: np.ndarray) -> faiss.Index:
    """A searchable IndexFlatIP over all docs (the ``flat`` reference: a full float32 copy)."""
    return add_in_chunks(faiss.IndexFlatIP(doc_emb.shape[1]), doc_emb)


def empty_index(vq: VQParams) -> faiss.Index:
    """A trained-but-empty faiss index holding ``vq``'s rotation, centroids and codebooks."""
    d, M, nbits = vq.dim, vq.M, vq.nbits
    if vq.nlist:
        quantizer = faiss.IndexFlatIP(d)
        quantizer.add(np.ascontiguousarray(vq.ivf_centroids, dtype=np.float32))
        base = faiss.IndexIVFPQ(quantizer, d, vq.nlist, M, nbits, faiss.METRIC_INNER_PRODUCT)
        base.own_fields = True
        quantizer.this.disown()
        pq = base.pq
    else:
        base = faiss.IndexPQ(d, M, nbits, faiss.METRIC_INNER_PRODUCT)
        pq = base.pq
    faiss.copy_array_to_vector(np.ascontiguousarray(vq.pq_codebooks, dtype=np.float32).ravel(), pq.centroids)
    base.is_trained = True
    if vq.rotation is None:
        return base
    opq = faiss.OPQMatrix(d, M)
    faiss.copy_array_to_vector(np.ascontiguousarray(vq.rotation, dtype=np.float32).ravel(), opq.A)
    opq.is_trained = True
    opq.set_is_orthonormal()
    index = faiss.IndexPreTransform(opq, base)
    index.own_fields = True
    base.this.disown()
    opq.this.disown()
    return index


def fold_query_map(index: faiss.Index, query_map: np.ndarray | None) -> faiss.Index:
    """The populated ``index`` with a query-side map ``M`` (queries searched as ``q @ M.T``) folded into the
    transform faiss applies to queries: into the OPQ matrix ``A`` (one ``A @ M`` matrix, so a query pays one d x d
    product, not two) or, without a pre-transform, a new linear one in front. Scores are those of ``M`` then the
    index (float32 rounding aside). Search-only: the docs are already encoded and ``add`` would send new docs through
    the map too, so add every doc first (``build_index``), then fold. ``None``: the index itself."""
    if query_map is None:
        return index
    m = np.asarray(query_map, dtype=np.float64)
    if isinstance(index, faiss.IndexPreTransform) and index.chain.size() >= 1:
        chain = [faiss.downcast_VectorTransform(index.chain.at(i)) for i in range(index.chain.size())]
        first = chain[0]
        if isinstance(first, faiss.LinearTransform):
            a = faiss.vector_to_array(first.A).reshape(first.d_out, first.d_in).astype(np.float64)
            folded = faiss.LinearTransform(first.d_in, first.d_out, bool(first.have_bias))
            faiss.copy_array_to_vector(np.ascontiguousarray(a @ m, dtype=np.float32).ravel(), folded.A)
            if first.have_bias:
                faiss.copy_array_to_vector(faiss.vector_to_array(first.b), folded.b)
            folded.is_trained = True
            out = faiss.IndexPreTransform(folded, index.index)
            for vt in chain[1:]:               # the rest of the chain, in its order, after the folded one
                out.chain.push_back(vt)
            out.referenced_objects = [index, folded, *chain[1:]]   # keep what the new index points into alive
            return out
    lt = faiss.LinearTransform(m.shape[1], m.shape[0], False)
    faiss.copy_array_to_vector(np.ascontiguousarray(m, dtype=np.float32).ravel(), lt.A)
    lt.is_trained = True
    out = faiss.IndexPreTransform(lt, index)
    out.referenced_objects = [index, lt]
    return out


def _base(index: faiss.Index) -> faiss.Index:
    return faiss.downcast_index(index.index) if isinstance(index, faiss.IndexPreTransform) else index


def rotate(vq: VQParams, x: np.ndarray) -> np.ndarray:
    x = np.asarray(x, dtype=np.float32)
    return x if vq.rotation is None else x @ vq.rotation.T


def _sa_codes(vq: VQParams, index: faiss.Index, rows: slice) -> np.ndarray:
    codes = np.ascontiguousarray(vq.doc_codes[rows], dtype=np.uint8)
    if vq.nbits != 8:  # faiss packs sub-codes of fewer bits (PQ{M}x4: two per byte, low bits first)
        codes = faiss.pack_bitstrings(codes.astype(np.int32), vq.nbits)
    if not vq.nlist:
        return codes
    ccs = _base(index).coarse_code_size()
    listno = np.ascontiguousarray(vq.doc_assign[rows], dtype="<i8").view(np.uint8).reshape(-1, 8)[:, :ccs]
    return np.ascontiguousarray(np.hstack([listno, codes]))


def to_fastscan(index: faiss.Index) -> faiss.Index:
    """The same 4-bit index (pre-transform, IVF centroids, codebooks, every doc's list and codes, ids) as a fast-scan
    index: faiss's converting constructors ``IndexPQFastScan(IndexPQ)`` / ``IndexIVFPQFastScan(IndexIVFPQ)`` pack
    the stored codes as they are (nothing is re-encoded), so learned codes that are not the nearest codewords (e.g.
    anisotropic ones) survive. The plain index's codes are freed with it."""
    pre = index if isinstance(index, faiss.IndexPreTransform) else None
    base = _base(index)
    if base.pq.nbits != 4:
        raise ValueError(f"fast-scan needs 4-bit codes, got {base.pq.nbits}-bit")
    if isinstance(base, faiss.IndexIVFPQ):
        fast = faiss.IndexIVFPQFastScan(base, FASTSCAN_BBS)   # shares base's quantizer: takes over its ownership
        fast.own_fields, base.own_fields = base.own_fields, False
        fast.nprobe = base.nprobe
        fast.referenced_objects = []   # the plain index is no longer needed (nothing of it is shared but the quantizer)
    elif isinstance(base, faiss.IndexPQ):
        fast = faiss.IndexPQFastScan(base, FASTSCAN_BBS)     # copies pq and codes
    else:
        raise ValueError(f"no fast-scan counterpart for {type(base).__name__}")
    if pre is None:
        return fast
    # swap the base under the pre-transform; the wrapper owns the fast-scan index, Python frees the plain one
    if not pre.own_fields:
        raise ValueError("to_fastscan needs an IndexPreTransform that owns its base index")
    pre.index = fast
    fast.this.disown()
    base.this.acquire()
    del base
    pre.ntotal = fast.ntotal
    return pre


def build_index(vq: VQParams, doc_emb: np.ndarray, writeback: str | None = None) -> faiss.Index:
    """Build a searchable faiss index from learned parameters; doc i gets id i.

    ``writeback``: ``codes`` keeps the training-time list assignment and PQ codes as they are (no re-encoding);
    ``preassigned`` keeps the training-time IVF assignment and PQ-encodes the residuals with the learned codebooks
    (``ivf_tools.add_preassigned``); ``reencode`` assigns and encodes every doc afresh with the learned parameters.
    With 4-bit codes and ``vq.search == "fastscan"`` the index is built plain as above and then converted
    (:func:`to_fastscan`): the fast-scan index stores exactly the codes the plain one did.
    """
    mode = writeback or vq.writeback
    if mode not in WRITEBACK_MODES:
        raise ValueError(f"writeback must be one of {WRITEBACK_MODES}, got {mode!r}")
    if mode == "codes" and (vq.doc_codes is None or (vq.nlist and vq.doc_assign is None)):
        raise ValueError("writeback='codes' needs doc_codes (and doc_assign for an IVF index)")
    if mode == "preassigned" and vq.nlist and vq.doc_assign is None:
        raise ValueError("writeback='preassigned' needs doc_assign for an IVF index")
    index = empty_index(vq)
    if mode == "codes":
        add_codes(index, vq)
        return to_fastscan(index) if vq.fastscan else index
    n = doc_emb.shape[0]
    for start in range(0, n, ADD_CHUNK):
        rows = slice(start, min(n, start + ADD_CHUNK))
        ids = np.arange(rows.start, rows.stop, dtype=np.int64)  # keep a reference: faiss only sees a pointer
        if mode == "preassigned" and vq.nlist:
            x = rotate(vq, doc_emb[rows])
            ivf_tools.add_preassigned(_base(index), x, np.asarray(vq.doc_assign[rows], dtype=np.int64), ids=ids)
        else:
            index.add(np.ascontiguousarray(doc_emb[rows], dtype=np.float32))
        index.ntotal = _base(index).ntotal
    return to_fastscan(index) if vq.fastscan else index


def add_codes(index: faiss.Index, vq: VQParams) -> faiss.Index:
    """Add ``vq``'s recorded doc codes (and IVF list ids) to the empty ``index`` (:func:`empty_index`) as they are,
    no re-encoding; doc i gets id i. Returns ``index``."""
    n = vq.doc_codes.shape[0]
    for start in range(0, n, ADD_CHUNK):
        rows = slice(start, min(n, start + ADD_CHUNK))
        ids = np.arange(rows.start, rows.stop, dtype=np.int64)  # keep a reference: faiss only sees a pointer
        _base(index).add_sa_codes(_sa_codes(vq, index, rows), ids)
        index.ntotal = _base(index).ntotal
    return index


def _unpack_blocks(packer: faiss.CodePacker, raw: np.ndarray, n: int) -> np.ndarray:
    """The first ``n`` flat codes (n, code_size) of fast-scan blocks ``raw`` (whole blocks, ``packer``'s layout)."""
    blocks = (n + packer.nvec - 1) // packer.nvec
    raw = np.ascontiguousarray(raw[:blocks * packer.block_size])
    out = np.empty((blocks * packer.nvec, packer.code_size), dtype=np.uint8)
    for b in range(blocks):
        packer.unpack_all(faiss.swig_ptr(raw[b * packer.block_size:]), faiss.swig_ptr(out[b * packer.nvec:]))
    return out[:n]


def fastscan_codes(base: faiss.Index) -> tuple[np.ndarray | None, np.ndarray]:
    """(IVF list of each doc or None, flat PQ codes (n, code_size) of each doc) stored in a fast-scan index
    (``IndexPQFastScan`` or ``IndexIVFPQFastScan``, ids 0..n-1), unpacked from its SIMD block layout."""
    packer = base.get_CodePacker()
    if not isinstance(base, faiss.IndexIVF):
        return None, _unpack_blocks(packer, faiss.AlignedTable_to_array(base.codes), base.ntotal)
    invlists = faiss.downcast_InvertedLists(base.invlists)
    assign = np.full(base.ntotal, -1, dtype=np.int64)
    codes = np.zeros((base.ntotal, packer.code_size), dtype=np.uint8)
    for lst in range(base.nlist):
        size = invlists.list_size(lst)
        if not size:
            continue
        ids = faiss.rev_swig_ptr(invlists.get_ids(lst), size).copy()
        blocks = (size + packer.nvec - 1) // packer.nvec
        raw = faiss.rev_swig_ptr(invlists.get_codes(lst), blocks * packer.block_size)
        assign[ids] = lst
        codes[ids] = _unpack_blocks(packer, raw, size)
    return assign, codes


def params_from_index(index: faiss.Index, with_doc_codes: bool = True) -> VQParams:
    """Read rotation, IVF centroids, PQ codebooks and (optionally) each doc's list and codes from a faiss index
    (plain or fast-scan PQ; ``search`` says which).

    Doc ids must be 0..n-1 (as :func:`build_index` and sequential ``add`` produce).
    """
    rotation = None
    base = index
    if isinstance(index, faiss.IndexPreTransform):
        if index.chain.size() != 1:
            raise ValueError("only a single OPQ/linear pre-transform is supported")
        lt = faiss.downcast_VectorTransform(index.chain.at(0))
        A, _ = inspect_tools.get_LinearTransform_matrix(lt)
        rotation = A.astype(np.float32)
        base = faiss.downcast_index(index.index)
    pq = base.pq
    codebooks = inspect_tools.get_pq_centroids(pq).astype(np.float32)
    fast = isinstance(base, (faiss.IndexPQFastScan, faiss.IndexIVFPQFastScan))
    centroids = assign = codes = None
    if isinstance(base, faiss.IndexIVF):
        quantizer = faiss.downcast_index(base.quantizer)
        centroids = quantizer.reconstruct_n(0, quantizer.ntotal).astype(np.float32)
    if with_doc_codes and base.ntotal:
        if fast:
            assign, codes = fastscan_codes(base)
        elif isinstance(base, faiss.IndexIVF):
            assign = np.full(base.ntotal, -1, dtype=np.int64)
            codes = np.zeros((base.ntotal, pq.code_size), dtype=np.uint8)
            for lst in range(base.nlist):
                ids, lcodes = inspect_tools.get_invlist(base.invlists, lst)
                if len(ids):    # a list may be empty (a centroid no doc is nearest to)
                    assign[ids] = lst
                    codes[ids] = lcodes.reshape(len(ids), -1)
        else:
            codes = inspect_tools.get_flat_codes(base).reshape(base.ntotal, pq.code_size)
        if pq.nbits != 8:   # packed sub-codes (PQ{M}x4: two per byte) -> one sub-code per column
            codes = faiss.unpack_bitstrings(codes, pq.M, pq.nbits).astype(np.uint8)
    return VQParams(pq_codebooks=codebooks, ivf_centroids=centroids, rotation=rotation, doc_assign=assign,
                    doc_codes=codes, writeback="codes" if codes is not None else "reencode",
                    search="fastscan" if fast else "plain")


def reconstruct(vq: VQParams, rows: np.ndarray | slice | None = None) -> np.ndarray:
    """Numpy reconstruction (rotated space) centroid[assign] + PQ(codes) of docs from their stored codes."""
    rows = slice(None) if rows is None else rows
    codes = vq.doc_codes[rows]
    M = vq.M
    out = np.concatenate([vq.pq_codebooks[m][codes[:, m]] for m in range(M)], axis=1)
    if vq.nlist:
        out = out + vq.ivf_centroids[vq.doc_assign[rows]]
    return out.astype(np.float32)


def encode_pq(codebooks: np.ndarray, residuals: np.ndarray) -> np.ndarray:
    """Nearest-codeword (L2) PQ codes of ``residuals`` (n, d) under ``codebooks`` (M, ksub, dsub)."""
    M, ksub, dsub = codebooks.shape
    pq = faiss.ProductQuantizer(M * dsub, M, int(np.log2(ksub)))
    faiss.copy_array_to_vector(np.ascontiguousarray(codebooks, dtype=np.float32).ravel(), pq.centroids)
    return pq.compute_codes(np.ascontiguousarray(residuals, dtype=np.float32))


def fold_single_centroid(vq: VQParams) -> VQParams:
    """``OPQ,IVF1,PQ`` -> ``OPQ,PQ`` with the same reconstructions: codebook[m] += centroid[m-th slice]."""
    M, _, dsub = vq.pq_codebooks.shape
    offset = vq.ivf_centroids[0].reshape(M, 1, dsub)
    return replace(vq, pq_codebooks=(vq.pq_codebooks + offset).astype(np.float32), ivf_centroids=None,
                   doc_assign=None)


def encode_docs(vq: VQParams, doc_emb: np.ndarray) -> np.ndarray:
    """Nearest-codeword PQ codes (n, M) of every doc's (residual) vector under ``vq``, ``ADD_CHUNK`` rows at a
    time; IVF lists stay ``vq.doc_assign``."""
    out = np.empty((doc_emb.shape[0], vq.M), dtype=np.uint8)
    for start in range(0, len(out), ADD_CHUNK):
        rows = slice(start, min(len(out), start + ADD_CHUNK))
        x = rotate(vq, doc_emb[rows])
        out[rows] = encode_pq(vq.pq_codebooks, x - vq.ivf_centroids[vq.doc_assign[rows]] if vq.nlist else x)
    return out

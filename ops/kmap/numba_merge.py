"""Numba CPU kernel maps by sorted merge-join (the default CPU conv map).

With keys packed lexicographically (b slowest, z fastest), translating every
output coordinate by a fixed offset preserves their order, so for one offset the
queries of lexicographically sorted outputs form a non-decreasing key sequence.
Each (offset, chunk of outputs) task therefore walks the sorted input keys with
a forward-only pointer: sequential memory access, no hashing, O(N + M) per offset.
All divisions (stride quantization) are done once up front; per query the work is
three bounds checks, a few multiply-adds and a pointer advance.
"""
from __future__ import annotations

from functools import lru_cache

import numpy as np
from numba import njit, prange

__all__ = ["SortedCoords", "merge_query", "pairs_from_nbmap"]

_PAD = 64  # INT64_MAX sentinels after the sorted keys (>= the longest z-column of offsets)


@njit(cache=True, nogil=True)
def _quantize(coords, mins, strides, q):
    for i in range(coords.shape[0]):
        q[i, 0] = coords[i, 0] - mins[0]
        for a in range(3):
            r = coords[i, a + 1] - mins[a + 1]
            q[i, a + 1] = r // strides[a]


@njit(cache=True, nogil=True)
def _quantize_checked(coords, mins, strides, q):
    """Quantize ``coords`` into ``q``; returns (on_lattice, lexicographically_sorted)."""
    lattice = True
    ordered = True
    for i in range(coords.shape[0]):
        q[i, 0] = coords[i, 0] - mins[0]
        for a in range(3):
            r = coords[i, a + 1] - mins[a + 1]
            if r % strides[a] != 0:
                lattice = False
            q[i, a + 1] = r // strides[a]
        if i and ordered:
            for a in range(4):
                if q[i, a] != q[i - 1, a]:
                    if q[i, a] < q[i - 1, a]:
                        ordered = False
                    break
    return lattice, ordered


@njit(cache=True, nogil=True)
def _keys(q, dims, keys):
    """keys of quantized coords; returns True if non-decreasing."""
    ok = True
    for i in range(q.shape[0]):
        keys[i] = ((q[i, 0] * dims[1] + q[i, 1]) * dims[2] + q[i, 2]) * dims[3] + q[i, 3]
        if i and keys[i] < keys[i - 1]:
            ok = False
    return ok


class SortedCoords:
    """Packed, sorted keys of one coordinate set (built once per tensor stride).

    ``keys [N]`` int64 ascending; ``perm [N]`` maps sorted position -> row (identity
    when the rows were already sorted, the usual case after ``sparse_quantize``).
    """

    def __init__(self, coords: np.ndarray, mins, dims, strides):
        self.mins = np.asarray(mins, np.int64)
        self.dims = np.asarray(dims, np.int64)
        self.strides = np.asarray(strides, np.int64)
        q = np.empty((coords.shape[0], 4), np.int64)
        _quantize(coords, self.mins, self.strides, q)
        keys = np.empty(coords.shape[0], np.int64)
        self.q = q
        if _keys(q, self.dims, keys):
            self.keys, self.perm = keys, np.arange(coords.shape[0], dtype=np.int64)
        else:
            self.perm = np.argsort(keys, kind="stable").astype(np.int64)
            self.keys = keys[self.perm]
        dup = np.flatnonzero(self.keys[1:] == self.keys[:-1])
        self.keys_padded = np.concatenate([self.keys, np.full(_PAD, np.iinfo(np.int64).max, np.int64)])
        if dup.size:
            a, b = self.perm[dup[0]], self.perm[dup[0] + 1]
            raise ValueError(
                f"duplicate coordinates: rows {int(min(a, b))} and {int(max(a, b))} are both "
                f"{coords[a].tolist()}; deduplicate with sparse3d.sparse_quantize")

    def query(self, out_coords: np.ndarray, offsets: np.ndarray, symmetric: bool, same: bool = False) -> np.ndarray:
        return merge_query(self, out_coords, offsets, symmetric, same)


@njit(cache=True, nogil=True, parallel=True)
def _merge(keys, perm, dims, qo, order, qoff, col_k, col_n, consec, K, symmetric, nbmap, chunk):
    """Walk the sorted input keys once per (chunk, xy-column of offsets).

    Offsets sharing (dx, dy) differ only in z, i.e. by small steps of the packed key:
    one forward walk per column finds the first candidate, then each z offset of
    the column is a short local walk.
    """
    M = qo.shape[0]
    N = keys.shape[0] - _PAD
    ncols = col_k.shape[0]
    nchunks = (M + chunk - 1) // chunk
    # one task = one chunk of outputs x all offsets: threads own disjoint rows (no false sharing)
    for c in prange(nchunks):
        j0 = c * chunk
        j1 = min(M, j0 + chunk)
        for col in range(ncols):
            k0 = col_k[col, 0]
            ob = qoff[k0, 0]
            ox = qoff[k0, 1]
            oy = qoff[k0, 2]
            oz0 = qoff[k0, 3]
            i = -1
            for jj in range(j0, j1):
                j = order[jj]
                b = qo[j, 0] + ob
                x = qo[j, 1] + ox
                y = qo[j, 2] + oy
                if b < 0 or x < 0 or y < 0 or b >= dims[0] or x >= dims[1] or y >= dims[2]:
                    continue
                z = qo[j, 3]
                base = ((b * dims[1] + x) * dims[2] + y) * dims[3]
                zt = z + oz0
                if zt < 0:
                    zt = 0
                target = base + zt
                if i < 0:
                    i = np.searchsorted(keys, target)
                else:
                    step = 1
                    while i + step < N and keys[i + step] < target:
                        i += step
                        step *= 2
                    while i < N and keys[i] < target:
                        i += 1
                if i >= N:
                    break
                if consec[col]:
                    # z offsets zlo..zlo+n-1 are consecutive: since keys are unique integers,
                    # only keys[i : i+n] can match (keys carry INT64_MAX sentinels at the end)
                    zlo = qoff[col_k[col, 0], 3]
                    n = col_n[col]
                    q0 = base + z + zlo
                    for t in range(n):
                        d = keys[i + t] - q0
                        if d >= n:
                            break
                        if d >= 0:
                            zz = z + zlo + d
                            if zz < dims[3]:
                                k = col_k[col, d]
                                src = perm[i + t]
                                nbmap[j, k] = src
                                if symmetric:
                                    nbmap[src, K - 1 - k] = j
                    continue
                i2 = i
                for t in range(col_n[col]):
                    k = col_k[col, t]
                    zz = z + qoff[k, 3]
                    if zz < 0:
                        continue
                    if zz >= dims[3]:
                        break
                    key = base + zz
                    while i2 < N and keys[i2] < key:
                        i2 += 1
                    if i2 >= N:
                        break
                    if keys[i2] == key:
                        src = perm[i2]
                        nbmap[j, k] = src
                        if symmetric:
                            nbmap[src, K - 1 - k] = j
        if symmetric:
            for jj in range(j0, j1):
                nbmap[jj, K // 2] = jj


def _columns(qoff: np.ndarray, probe: np.ndarray):
    """Group probed offsets by (dx, dy): ``col_k [C, maxKz]`` (k ascending in dz), ``col_n [C]``."""
    cols = {}
    for k in probe:
        cols.setdefault((int(qoff[k, 1]), int(qoff[k, 2])), []).append(int(k))
    ncol = len(cols)
    width = max((len(v) for v in cols.values()), default=1)
    col_k = np.full((max(ncol, 1), width), -1, np.int64)
    col_n = np.zeros(max(ncol, 1), np.int64)
    for c, ks in enumerate(cols.values()):
        ks.sort(key=lambda k: qoff[k, 3])
        col_k[c, : len(ks)] = ks
        col_n[c] = len(ks)
    return col_k[:ncol], col_n[:ncol]


def _column_plan(qoff: np.ndarray, K: int, symmetric: bool):
    """:func:`_columns` plus per-column "dz consecutive" flags, cached per offset pattern (same every layer)."""
    return _column_plan_cached(qoff.astype(np.int64).tobytes(), qoff.shape, K, symmetric)


@lru_cache(maxsize=256)
def _column_plan_cached(qbytes: bytes, shape, K: int, symmetric: bool):
    qoff = np.frombuffer(qbytes, np.int64).reshape(shape)
    col_k, col_n = _columns(qoff, np.arange(K // 2 if symmetric else K))
    if col_n.size and col_n.max() > _PAD:
        raise ValueError(f"kernel has {int(col_n.max())} offsets along z; at most {_PAD} supported")
    zs = [qoff[col_k[c, : col_n[c]], 3] for c in range(len(col_n))]
    consec = np.array([bool(np.all(np.diff(z) == 1)) for z in zs], dtype=np.bool_)
    return col_k, col_n, consec


def merge_query(table: SortedCoords, out_coords: np.ndarray, offsets: np.ndarray, symmetric: bool,
                same: bool = False) -> np.ndarray:
    """``nbmap [M, K]`` int32 of input rows at ``out + offset`` (-1 if absent).

    ``out_coords`` must lie on the table's stride lattice shifted by multiples of it
    (true for submanifold, strided and transposed maps). With ``symmetric`` only the
    first K//2 offsets are walked and each hit fills its mirror entry. ``same`` says
    ``out_coords`` are the table's own rows (submanifold): their quantization and sort
    order are reused.
    """
    M, K = out_coords.shape[0], offsets.shape[0]
    nbmap = np.full((M, K), -1, dtype=np.int32)
    if M == 0 or table.keys.shape[0] == 0:
        return nbmap
    st = table.strides
    off = np.asarray(offsets, np.int64)
    if (off % st).any():
        raise ValueError(f"kernel offsets {off.tolist()} are not multiples of the tensor stride {st.tolist()}")
    qoff = np.zeros((K, 4), np.int64)
    qoff[:, 1:] = off // st
    if same:
        qo, order = table.q, table.perm
    else:
        qo = np.empty((M, 4), np.int64)
        lattice, ordered = _quantize_checked(out_coords, table.mins, st, qo)
        if not lattice:
            raise ValueError("output coordinates are not on the input stride lattice")
        if ordered:
            order = np.arange(M, dtype=np.int64)
        else:
            # lexicographic order of the outputs (translation-invariant)
            order = np.lexsort((qo[:, 3], qo[:, 2], qo[:, 1], qo[:, 0])).astype(np.int64)
    col_k, col_n, consec = _column_plan(qoff, K, symmetric)
    _merge(table.keys_padded, table.perm, table.dims, qo, order, qoff, col_k, col_n, consec, K, symmetric,
           nbmap, 1024)
    return nbmap


@njit(cache=True, nogil=True, parallel=True)
def _block_counts(nbmap, block, counts):
    M, K = nbmap.shape
    for b in prange(counts.shape[0]):
        for j in range(b * block, min(M, b * block + block)):
            for k in range(K):
                if nbmap[j, k] >= 0:
                    counts[b, k] += 1


@njit(cache=True, nogil=True, parallel=True)
def _block_fill(nbmap, block, starts, in_idx, out_idx):
    M, K = nbmap.shape
    for b in prange(starts.shape[0]):
        pos = starts[b].copy()
        for j in range(b * block, min(M, b * block + block)):
            for k in range(K):
                i = nbmap[j, k]
                if i >= 0:
                    in_idx[pos[k]] = i
                    out_idx[pos[k]] = j
                    pos[k] += 1


def pairs_from_nbmap(nbmap: np.ndarray):
    """Offset-grouped pairs ``(in_idx [P], out_idx [P], sizes [K])`` int64, outputs ascending
    within each offset. Two row-major passes over ``nbmap`` (cache friendly)."""
    M, K = nbmap.shape
    block = 2048
    nb = max(1, -(-M // block))
    counts = np.zeros((nb, K), np.int64)
    if M:
        _block_counts(nbmap, block, counts)
    sizes = counts.sum(0)
    base = np.zeros(K, np.int64)
    base[1:] = np.cumsum(sizes)[:-1]
    starts = base[None, :] + np.cumsum(counts, 0) - counts
    P = int(sizes.sum())
    in_idx = np.empty(P, np.int64)
    out_idx = np.empty(P, np.int64)
    if P:
        _block_fill(nbmap, block, np.ascontiguousarray(starts), in_idx, out_idx)
    return in_idx, out_idx, sizes

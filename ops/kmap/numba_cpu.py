"""Numba CPU kernel maps: an open-addressing hash table over packed int64 keys.

The table stores (key, value) interleaved in one int64 array, so a probe touches
one cache line. Slots come from the *high* bits of a multiplicative hash
(Fibonacci hashing); linear probing; load factor <= 0.5.
"""
from __future__ import annotations

import numpy as np
from numba import njit, prange

__all__ = ["HashTable", "query_nbmap", "downsample_unique", "hash_lookup"]

_GOLDEN = np.uint64(0x9E3779B97F4A7C15)
EMPTY = -1


@njit(cache=True, nogil=True, inline="always")
def _slot(key, shift, mask):
    return np.int64((np.uint64(key) * _GOLDEN) >> shift) & mask


@njit(cache=True, nogil=True, inline="always")
def _pack(b, x, y, z, mins, dims, strides):
    """Packed key of (b, x, y, z), or -1 if outside the box / off the stride lattice."""
    rb = b - mins[0]
    rx = x - mins[1]
    ry = y - mins[2]
    rz = z - mins[3]
    if rb < 0 or rx < 0 or ry < 0 or rz < 0:
        return -1
    if rx % strides[0] != 0 or ry % strides[1] != 0 or rz % strides[2] != 0:
        return -1
    qx = rx // strides[0]
    qy = ry // strides[1]
    qz = rz // strides[2]
    if rb >= dims[0] or qx >= dims[1] or qy >= dims[2] or qz >= dims[3]:
        return -1
    return ((rb * dims[1] + qx) * dims[2] + qy) * dims[3] + qz


@njit(cache=True, nogil=True)
def _build(coords, mins, dims, strides, bits):
    """Insert every row; returns (table [2*cap], first duplicate row or -1, its earlier twin)."""
    cap = np.int64(1) << bits
    mask = cap - 1
    shift = np.uint64(64 - bits)
    table = np.full(2 * cap, EMPTY, dtype=np.int64)
    for i in range(coords.shape[0]):
        key = _pack(np.int64(coords[i, 0]), np.int64(coords[i, 1]), np.int64(coords[i, 2]),
                    np.int64(coords[i, 3]), mins, dims, strides)
        s = _slot(key, shift, mask)
        while True:
            k = table[2 * s]
            if k == EMPTY:
                table[2 * s] = key
                table[2 * s + 1] = i
                break
            if k == key:
                return table, i, table[2 * s + 1]
            s = (s + 1) & mask
    return table, -1, -1


@njit(cache=True, nogil=True, inline="always")
def _lookup(table, key, shift, mask):
    if key < 0:
        return -1
    s = _slot(key, shift, mask)
    while True:
        k = table[2 * s]
        if k == key:
            return table[2 * s + 1]
        if k == EMPTY:
            return -1
        s = (s + 1) & mask


class HashTable:
    """Hash table over the coordinates of one tensor stride (built once, queried per layer)."""

    def __init__(self, coords: np.ndarray, mins, dims, strides):
        n = coords.shape[0]
        self.bits = max(4, int(np.ceil(np.log2(max(2 * n, 16)))))
        self.mins = np.asarray(mins, dtype=np.int64)
        self.dims = np.asarray(dims, dtype=np.int64)
        self.strides = np.asarray(strides, dtype=np.int64)
        self.table, dup, twin = _build(coords, self.mins, self.dims, self.strides, self.bits)
        if dup >= 0:
            raise ValueError(
                f"duplicate coordinates: rows {int(twin)} and {int(dup)} are both {coords[dup].tolist()}; "
                "deduplicate with sparse3d.sparse_quantize")

    def query(self, out_coords: np.ndarray, offsets: np.ndarray, symmetric: bool) -> np.ndarray:
        return query_nbmap(self.table, self.bits, self.mins, self.dims, self.strides,
                           out_coords, offsets, symmetric)


@njit(cache=True, nogil=True, parallel=True)
def _query(table, bits, mins, dims, strides, out, offsets, symmetric, nbmap):
    M = out.shape[0]
    K = offsets.shape[0]
    mask = (np.int64(1) << bits) - 1
    shift = np.uint64(64 - bits)
    kq = K // 2 if symmetric else K
    nblk = (M + 255) // 256
    for blk in prange(nblk):
        for j in range(blk * 256, min(M, blk * 256 + 256)):
            b = np.int64(out[j, 0])
            x = np.int64(out[j, 1])
            y = np.int64(out[j, 2])
            z = np.int64(out[j, 3])
            for k in range(kq):
                key = _pack(b, x + offsets[k, 0], y + offsets[k, 1], z + offsets[k, 2], mins, dims, strides)
                i = _lookup(table, key, shift, mask)
                nbmap[j, k] = i
                if symmetric and i >= 0:
                    # j sees i at offset k  <=>  i sees j at the mirrored offset
                    nbmap[i, K - 1 - k] = j
            if symmetric:
                nbmap[j, K // 2] = j


def query_nbmap(table, bits, mins, dims, strides, out_coords, offsets, symmetric):
    """``nbmap [M, K]`` int32 of input rows at ``out + offset`` (-1 if absent).

    With ``symmetric`` (submanifold, odd kernel, out == in), only the first K//2
    offsets are probed and each hit also fills its mirror entry.
    """
    M, K = out_coords.shape[0], offsets.shape[0]
    nbmap = np.full((M, K), -1, dtype=np.int32)
    if M:
        _query(table, np.int64(bits), mins, dims, strides, out_coords, offsets.astype(np.int64), symmetric, nbmap)
    return nbmap


@njit(cache=True, nogil=True)
def _dedup(c, mins, dims, strides, bits):
    cap = np.int64(1) << bits
    mask = cap - 1
    shift = np.uint64(64 - bits)
    table = np.full(cap, EMPTY, dtype=np.int64)
    keys = np.empty(c.shape[0], dtype=np.int64)
    m = 0
    for i in range(c.shape[0]):
        key = _pack(c[i, 0], c[i, 1], c[i, 2], c[i, 3], mins, dims, strides)
        s = _slot(key, shift, mask)
        while True:
            k = table[s]
            if k == EMPTY:
                table[s] = key
                keys[m] = key
                m += 1
                break
            if k == key:
                break
            s = (s + 1) & mask
    keys = np.sort(keys[:m])
    out = np.empty((m, 4), dtype=np.int32)
    for r in range(m):
        key = keys[r]
        qz = key % dims[3]
        key //= dims[3]
        qy = key % dims[2]
        key //= dims[2]
        qx = key % dims[1]
        b = key // dims[1]
        out[r, 0] = b + mins[0]
        out[r, 1] = qx * strides[0] + mins[1]
        out[r, 2] = qy * strides[1] + mins[2]
        out[r, 3] = qz * strides[2] + mins[3]
    return out


def downsample_unique(c: np.ndarray, mins, dims, strides) -> np.ndarray:
    """Unique rows of already-downsampled int64 coords ``c [N, 4]``, sorted by packed key."""
    bits = max(4, int(np.ceil(np.log2(max(2 * c.shape[0], 16)))))
    return _dedup(c, np.asarray(mins, np.int64), np.asarray(dims, np.int64), np.asarray(strides, np.int64), bits)


@njit(cache=True, nogil=True, parallel=True)
def _lookup_many(table, bits, mins, dims, strides, q, out):
    mask = (np.int64(1) << bits) - 1
    shift = np.uint64(64 - bits)
    for j in prange(q.shape[0]):
        key = _pack(np.int64(q[j, 0]), np.int64(q[j, 1]), np.int64(q[j, 2]), np.int64(q[j, 3]), mins, dims, strides)
        out[j] = _lookup(table, key, shift, mask)


def hash_lookup(table: "HashTable", queries: np.ndarray) -> np.ndarray:
    """Row index of each query coordinate ``[Q, 4]`` in the table, -1 where absent (``[Q]`` int64)."""
    out = np.empty(queries.shape[0], dtype=np.int64)
    if queries.shape[0]:
        _lookup_many(table.table, np.int64(table.bits), table.mins, table.dims, table.strides,
                     np.ascontiguousarray(queries), out)
    return out


HashTable.lookup = hash_lookup

"""A Merkle tree over the audit log, as Certificate Transparency builds it (RFC 9162 §2.1).

* leaf hash ``SHA-256(0x00 || entry)``, interior node ``SHA-256(0x01 || left || right)``;
  the tree head over the first *n* entries is ``MTH(D[0:n])``, split at the largest power
  of two below *n*; the empty tree's head is ``SHA-256("")``.
* inclusion proofs (``PATH``) and consistency proofs (``PROOF``), with RFC 9162's
  verification algorithms (§2.1.3.2, §2.1.4.2), which need nothing but the proof.

The audit log's entries are its events' chain hashes (32 bytes each), so the hash chain
stays as it is and the tree is a second, independent structure over it.

Pruning keeps verification possible with a *compact range*: the hashes of the perfect
subtrees that cover ``[0, p)`` (one per set bit of *p*, largest first; the "frontier").
Every node of a larger tree that lies within ``[0, p)`` and is needed for its head, or for
a consistency proof from a size of at least *p*, is one of them (``Tree`` uses them in place
of the pruned leaves, and says so when a proof would need a node that is gone).
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Sequence

EMPTY_ROOT = hashlib.sha256(b"").digest()


class MissingNodes(ValueError):
    """The proof needs hashes of pruned leaves that the compact range does not keep."""


def leaf_hash(entry: bytes) -> bytes:
    return hashlib.sha256(b"\x00" + entry).digest()


def node_hash(left: bytes, right: bytes) -> bytes:
    return hashlib.sha256(b"\x01" + left + right).digest()


def _split(n: int) -> int:
    """The largest power of two smaller than ``n`` (n >= 2)."""
    return 1 << ((n - 1).bit_length() - 1)


def frontier_sizes(size: int) -> list[int]:
    """Sizes of the perfect subtrees covering ``[0, size)``, largest first."""
    return [1 << b for b in range(size.bit_length() - 1, -1, -1) if size >> b & 1]


class Stack:
    """A compact range growing to the right: push leaf hashes (or aligned perfect
    subtrees), read the head at any moment. Holds at most log2(n) hashes."""

    def __init__(self, nodes: Iterable[tuple[int, bytes]] = ()) -> None:
        self.nodes: list[tuple[int, bytes]] = []  # (level, hash); sizes 2**level, falling
        for level, h in nodes:
            self.push(h, level)

    def push(self, h: bytes, level: int = 0) -> None:
        while self.nodes and self.nodes[-1][0] == level:
            h = node_hash(self.nodes.pop()[1], h)
            level += 1
        if self.nodes and self.nodes[-1][0] < level:
            raise ValueError("a subtree pushed onto a compact range must be aligned")
        self.nodes.append((level, h))

    @property
    def size(self) -> int:
        return sum(1 << level for level, _ in self.nodes)

    def root(self) -> bytes:
        if not self.nodes:
            return EMPTY_ROOT
        acc = self.nodes[-1][1]
        for _, h in reversed(self.nodes[:-1]):
            acc = node_hash(h, acc)
        return acc

    def hashes(self) -> list[bytes]:
        return [h for _, h in self.nodes]


def frontier_nodes(size: int, hashes: Sequence[bytes]) -> list[tuple[int, bytes]]:
    """``(level, hash)`` pairs of the compact range of ``[0, size)`` from its hashes."""
    sizes = frontier_sizes(size)
    if len(sizes) != len(hashes):
        raise ValueError(f"a compact range of {size} leaves has {len(sizes)} hashes, "
                         f"not {len(hashes)}")
    return [(s.bit_length() - 1, h) for s, h in zip(sizes, hashes, strict=True)]


class Tree:
    """The tree over ``offset + len(leaves)`` entries, of which the first ``offset`` are
    known only by the compact range ``frontier`` of ``[0, offset)`` (pruned), the rest by
    their leaf hashes."""

    def __init__(self, leaves: Sequence[bytes], *, offset: int = 0,
                 frontier: Sequence[bytes] = ()) -> None:
        self.leaves = leaves
        self.offset = offset
        self._known: dict[tuple[int, int], bytes] = {}
        start = 0
        for n, h in zip(frontier_sizes(offset), frontier, strict=True):
            self._known[(start, start + n)] = h
            start += n

    @classmethod
    def of_entries(cls, entries: Iterable[bytes]) -> Tree:
        return cls([leaf_hash(e) for e in entries])

    @property
    def size(self) -> int:
        return self.offset + len(self.leaves)

    def _check(self, n: int) -> None:
        if not 0 <= n <= self.size:
            raise ValueError(f"the tree has {self.size} leaves, not {n}")

    def _mth(self, lo: int, hi: int) -> bytes:
        """``MTH(D[lo:hi])``."""
        known = self._known.get((lo, hi))
        if known is not None:
            return known
        if lo >= self.offset:
            stack = Stack()
            for h in self.leaves[lo - self.offset:hi - self.offset]:
                stack.push(h)
            return stack.root()
        if hi - lo == 1:
            raise MissingNodes(f"leaf {lo} was pruned and is not in the kept compact range")
        k = _split(hi - lo)
        return node_hash(self._mth(lo, lo + k), self._mth(lo + k, hi))

    def root(self, size: int | None = None) -> bytes:
        """The tree head over the first ``size`` entries (default: all)."""
        n = self.size if size is None else size
        self._check(n)
        return EMPTY_ROOT if n == 0 else self._mth(0, n)

    def leaf(self, index: int) -> bytes:
        if not self.offset <= index < self.size:
            raise MissingNodes(f"leaf {index} is not held")
        return self.leaves[index - self.offset]

    def inclusion_proof(self, index: int, size: int | None = None) -> list[bytes]:
        """``PATH(index, D[0:size])``: the audit path of leaf ``index``."""
        n = self.size if size is None else size
        self._check(n)
        if not 0 <= index < n:
            raise ValueError(f"leaf {index} is not in a tree of {n}")
        return self._path(index, 0, n)

    def _path(self, m: int, lo: int, hi: int) -> list[bytes]:
        n = hi - lo
        if n == 1:
            return []
        k = _split(n)
        if m < k:
            return [*self._path(m, lo, lo + k), self._mth(lo + k, hi)]
        return [*self._path(m - k, lo + k, hi), self._mth(lo, lo + k)]

    def consistency_proof(self, old_size: int, size: int | None = None) -> list[bytes]:
        """``PROOF(old_size, D[0:size])``; empty when ``old_size`` is 0 or ``size``."""
        n = self.size if size is None else size
        self._check(n)
        if not 0 <= old_size <= n:
            raise ValueError(f"old size {old_size} is not within 0..{n}")
        if old_size in (0, n):
            return []
        return self._subproof(old_size, 0, n, True)

    def _subproof(self, m: int, lo: int, hi: int, whole: bool) -> list[bytes]:
        n = hi - lo
        if m == n:
            return [] if whole else [self._mth(lo, hi)]
        k = _split(n)
        if m <= k:
            return [*self._subproof(m, lo, lo + k, whole), self._mth(lo + k, hi)]
        return [*self._subproof(m - k, lo + k, hi, False), self._mth(lo, lo + k)]

    def frontier(self, size: int | None = None) -> list[bytes]:
        """The compact range of ``[0, size)`` (what pruning keeps)."""
        n = self.size if size is None else size
        self._check(n)
        out, start = [], 0
        for s in frontier_sizes(n):
            out.append(self._mth(start, start + s))
            start += s
        return out

    def range_nodes(self, start: int, end: int) -> list[tuple[int, bytes]]:
        """The aligned perfect subtrees covering ``[start, end)``, left to right, as
        ``(level, hash)``: pushed onto the compact range of ``[0, start)``, they give the
        compact range of ``[0, end)`` (how an export of a window proves a later head)."""
        self._check(end)
        out = []
        while start < end:
            level = 0
            while (start % (2 << level) == 0 and start + (2 << level) <= end):
                level += 1
            out.append((level, self._mth(start, start + (1 << level))))
            start += 1 << level
        return out


def tree_root(entries: Sequence[bytes]) -> bytes:
    return Tree.of_entries(entries).root()


def verify_inclusion(leaf: bytes, index: int, size: int, proof: Sequence[bytes],
                     root: bytes) -> bool:
    """RFC 9162 §2.1.3.2: does ``proof`` show the leaf hash ``leaf`` at ``index`` in the
    tree of ``size`` with head ``root``?"""
    if index < 0 or index >= size:
        return False
    fn, sn, r = index, size - 1, leaf
    for p in proof:
        if sn == 0:
            return False
        if fn & 1 or fn == sn:
            r = node_hash(p, r)
            if not fn & 1:
                while fn and not fn & 1:
                    fn >>= 1
                    sn >>= 1
        else:
            r = node_hash(r, p)
        fn >>= 1
        sn >>= 1
    return sn == 0 and r == root


def verify_consistency(old_size: int, new_size: int, old_root: bytes, new_root: bytes,
                       proof: Sequence[bytes]) -> bool:
    """RFC 9162 §2.1.4.2: does ``proof`` show that the tree of ``new_size`` with head
    ``new_root`` extends the tree of ``old_size`` with head ``old_root``?"""
    if old_size < 0 or old_size > new_size:
        return False
    if old_size == new_size:
        return not proof and old_root == new_root
    if old_size == 0:
        return not proof and old_root == EMPTY_ROOT
    if not proof:
        return False
    path = list(proof)
    if old_size & (old_size - 1) == 0:  # an exact power of two: its head starts the path
        path.insert(0, old_root)
    fn, sn = old_size - 1, new_size - 1
    while fn & 1:
        fn >>= 1
        sn >>= 1
    fr = sr = path[0]
    for c in path[1:]:
        if sn == 0:
            return False
        if fn & 1 or fn == sn:
            fr = node_hash(c, fr)
            sr = node_hash(c, sr)
            if not fn & 1:
                while fn and not fn & 1:
                    fn >>= 1
                    sn >>= 1
        else:
            sr = node_hash(sr, c)
        fn >>= 1
        sn >>= 1
    return fr == old_root and sr == new_root and sn == 0

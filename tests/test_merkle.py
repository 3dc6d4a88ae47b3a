"""The audit log's Merkle tree against RFC 9162 / RFC 6962: the reference tree heads and
proofs of Certificate Transparency's test vectors, every proof of every small tree (the
non-power-of-two sizes are where implementations go wrong), tampered proofs refused, and a
tree whose first leaves were pruned (only their compact range kept) gives the same heads
and proofs as the whole tree."""

from __future__ import annotations

import hashlib

import pytest

from faceledger.governance.merkle import (
    EMPTY_ROOT,
    MissingNodes,
    Stack,
    Tree,
    frontier_nodes,
    frontier_sizes,
    leaf_hash,
    node_hash,
    tree_root,
    verify_consistency,
    verify_inclusion,
)

# Certificate Transparency's reference leaves and tree heads for sizes 1..8.
CT_ENTRIES = [bytes.fromhex(h) for h in (
    "", "00", "10", "2021", "3031", "40414243", "5051525354555657",
    "606162636465666768696a6b6c6d6e6f")]
CT_ROOTS = [bytes.fromhex(h) for h in (
    "6e340b9cffb37a989ca544e6bb780a2c78901d3fb33738768511a30617afa01d",
    "fac54203e7cc696cf0dfcb42c92a1d9dbaf70ad9e621f4bd8d98662f00e3c125",
    "aeb6bcfe274b70a14fb067a5e5578264db0fa9b51af5e0ba159158f329e06e77",
    "d37ee418976dd95753c1c73862b9398fa2a2cf9b4ff0fdfe8b30cd95209614b7",
    "4e3bbb1f7b478dcfe71fb631631519a3bca12c9aefca1612bfce4c13a86264d4",
    "76e67dadbcdf1e10e1b74ddc608abd2f98dfb16fbce75277b5232a127f2087ef",
    "ddb89be403809e325750d3d263cd78929c2942b7942a34b77e122c9594a74c8c",
    "5dc9da79a70659a9ad559cb701ded9a2ab9d823aad2f4960cfe370eff4604328")]
CT_INCLUSION = {
    (0, 8): ["96a296d224f285c67bee93c30f8a309157f0daa35dc5b87e410b78630a09cfc7",
             "5f083f0a1a33ca076a95279832580db3e0ef4584bdff1f54c8a360f50de3031e",
             "6b47aaf29ee3c2af9af889bc1fb9254dabd31177f16232dd6aab035ca39bf6e4"],
    (5, 8): ["bc1a0643b12e4d2d7c77918f44e0f4f79a838b6cf9ec5b5c283e1f4d88599e6b",
             "ca854ea128ed050b41b35ffc1b87b8eb2bde461e9e3b5596ece6b9d5975a0ae0",
             "d37ee418976dd95753c1c73862b9398fa2a2cf9b4ff0fdfe8b30cd95209614b7"],
}
CT_CONSISTENCY = {
    (2, 8): ["5f083f0a1a33ca076a95279832580db3e0ef4584bdff1f54c8a360f50de3031e",
             "6b47aaf29ee3c2af9af889bc1fb9254dabd31177f16232dd6aab035ca39bf6e4"],
    (6, 8): ["0ebc5d3437fbe2db158b9f126a1d118e308181031d0a949f8dededebc558ef6a",
             "ca854ea128ed050b41b35ffc1b87b8eb2bde461e9e3b5596ece6b9d5975a0ae0",
             "d37ee418976dd95753c1c73862b9398fa2a2cf9b4ff0fdfe8b30cd95209614b7"],
    (2, 5): ["5f083f0a1a33ca076a95279832580db3e0ef4584bdff1f54c8a360f50de3031e",
             "bc1a0643b12e4d2d7c77918f44e0f4f79a838b6cf9ec5b5c283e1f4d88599e6b"],
}


def _sha(data: bytes) -> bytes:
    return hashlib.sha256(data).digest()


# --- RFC 9162 §2.1.1-2.1.4 written out literally, over entry lists (the reference) -------
def _k(n: int) -> int:
    k = 1
    while k * 2 < n:
        k *= 2
    return k


def ref_mth(d: list[bytes]) -> bytes:
    if not d:
        return _sha(b"")
    if len(d) == 1:
        return _sha(b"\x00" + d[0])
    k = _k(len(d))
    return _sha(b"\x01" + ref_mth(d[:k]) + ref_mth(d[k:]))


def ref_path(m: int, d: list[bytes]) -> list[bytes]:
    if len(d) == 1:
        return []
    k = _k(len(d))
    if m < k:
        return [*ref_path(m, d[:k]), ref_mth(d[k:])]
    return [*ref_path(m - k, d[k:]), ref_mth(d[:k])]


def ref_subproof(m: int, d: list[bytes], b: bool) -> list[bytes]:
    if m == len(d):
        return [] if b else [ref_mth(d)]
    k = _k(len(d))
    if m <= k:
        return [*ref_subproof(m, d[:k], b), ref_mth(d[k:])]
    return [*ref_subproof(m - k, d[k:], False), ref_mth(d[:k])]


ENTRIES = [f"event {i}".encode() for i in range(40)]


def test_hashes_are_rfc_6962s() -> None:
    assert EMPTY_ROOT.hex() == "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
    assert leaf_hash(b"") == _sha(b"\x00") == CT_ROOTS[0]
    a, b = leaf_hash(b"l"), leaf_hash(b"r")
    assert node_hash(a, b) == _sha(b"\x01" + a + b) != node_hash(b, a)


def test_reference_tree_heads() -> None:
    assert tree_root([]) == EMPTY_ROOT
    for n in range(1, 9):
        assert tree_root(CT_ENTRIES[:n]) == CT_ROOTS[n - 1], n
        assert Tree.of_entries(CT_ENTRIES).root(n) == CT_ROOTS[n - 1]


@pytest.mark.parametrize(("index", "size"), sorted(CT_INCLUSION))
def test_reference_inclusion_proofs(index: int, size: int) -> None:
    tree = Tree.of_entries(CT_ENTRIES)
    proof = tree.inclusion_proof(index, size)
    assert [p.hex() for p in proof] == CT_INCLUSION[(index, size)]
    assert verify_inclusion(leaf_hash(CT_ENTRIES[index]), index, size, proof,
                            CT_ROOTS[size - 1])


@pytest.mark.parametrize(("first", "second"), sorted(CT_CONSISTENCY))
def test_reference_consistency_proofs(first: int, second: int) -> None:
    tree = Tree.of_entries(CT_ENTRIES)
    proof = tree.consistency_proof(first, second)
    assert [p.hex() for p in proof] == CT_CONSISTENCY[(first, second)]
    assert verify_consistency(first, second, CT_ROOTS[first - 1], CT_ROOTS[second - 1], proof)


def test_small_hand_made_trees() -> None:
    """Sizes 1, 2, 3 and 5 worked by hand: the split is at the largest power of two below
    n (not the midpoint), so the odd leaf climbs alone."""
    a, b, c, d, e = (leaf_hash(x) for x in (b"a", b"b", b"c", b"d", b"e"))
    tree = Tree.of_entries([b"a", b"b", b"c", b"d", b"e"])
    assert tree.root(1) == a
    assert tree.root(2) == node_hash(a, b)
    assert tree.root(3) == node_hash(node_hash(a, b), c)
    ab_cd = node_hash(node_hash(a, b), node_hash(c, d))
    assert tree.root(5) == node_hash(ab_cd, e)
    assert tree.inclusion_proof(4, 5) == [ab_cd]  # e's sibling is the whole left subtree
    assert tree.inclusion_proof(2, 5) == [d, node_hash(a, b), e]
    assert tree.inclusion_proof(2, 3) == [node_hash(a, b)]
    assert tree.consistency_proof(3, 5) == [c, d, node_hash(a, b), e]
    assert tree.consistency_proof(4, 5) == [e]  # a power of two: its head is implied
    assert tree.consistency_proof(1, 3) == [b, c]
    assert verify_consistency(3, 5, tree.root(3), tree.root(5), [c, d, node_hash(a, b), e])


def test_every_proof_of_every_small_tree() -> None:
    tree = Tree.of_entries(ENTRIES)
    for n in range(0, len(ENTRIES) + 1):
        root = tree.root(n)
        assert root == ref_mth(ENTRIES[:n])
        for i in range(n):
            proof = tree.inclusion_proof(i, n)
            assert proof == ref_path(i, ENTRIES[:n])
            assert verify_inclusion(tree.leaves[i], i, n, proof, root)
        for m in range(0, n + 1):
            proof = tree.consistency_proof(m, n)
            if 0 < m < n:
                assert proof == ref_subproof(m, ENTRIES[:n], True)
            else:
                assert proof == []
            assert verify_consistency(m, n, tree.root(m), root, proof), (m, n)


def test_tampered_inclusion_proofs_are_refused() -> None:
    tree = Tree.of_entries(ENTRIES)
    for n in range(2, 20):
        root = tree.root(n)
        for i in range(n):
            proof = tree.inclusion_proof(i, n)
            leaf = tree.leaves[i]
            assert not verify_inclusion(leaf, i, n, proof[:-1], root)
            assert not verify_inclusion(leaf, i, n, [*proof, bytes(32)], root)
            flipped = [*proof[:-1], bytes([proof[-1][0] ^ 1]) + proof[-1][1:]]
            assert not verify_inclusion(leaf, i, n, flipped, root)
            assert not verify_inclusion(tree.leaves[(i + 1) % n], i, n, proof, root)
            assert not verify_inclusion(leaf, i, n, proof, tree.root(n - 1))
            assert not verify_inclusion(leaf, n, n, proof, root)
            if (i ^ 1) < n and tree.leaves[i ^ 1] != leaf:
                assert not verify_inclusion(leaf, i ^ 1, n, proof, root)


def test_tampered_consistency_proofs_are_refused() -> None:
    tree = Tree.of_entries(ENTRIES)
    for n in range(2, 24):
        for m in range(1, n):
            proof = tree.consistency_proof(m, n)
            old, new = tree.root(m), tree.root(n)
            assert not verify_consistency(m, n, old, new, proof[:-1])
            assert not verify_consistency(m, n, old, new, [*proof, bytes(32)])
            assert not verify_consistency(m, n, old, new, [bytes(32), *proof[1:]])
            assert not verify_consistency(m, n, old, tree.root(n - 1), proof)
            # an "edited" old tree: same size, another head
            assert not verify_consistency(m, n, tree.root(m - 1) if m > 1 else bytes(32),
                                          new, proof)
            assert not verify_consistency(n, m, new, old, proof)
    assert verify_consistency(4, 4, tree.root(4), tree.root(4), [])
    assert not verify_consistency(4, 4, tree.root(4), tree.root(5), [])
    assert not verify_consistency(4, 4, tree.root(4), tree.root(4), [bytes(32)])
    assert verify_consistency(0, 8, EMPTY_ROOT, tree.root(8), [])
    assert not verify_consistency(0, 8, tree.root(1), tree.root(8), [])
    assert not verify_consistency(6, 8, tree.root(6), tree.root(8), [])


def test_frontier_is_the_compact_range() -> None:
    assert frontier_sizes(0) == []
    assert frontier_sizes(1) == [1]
    assert frontier_sizes(6) == [4, 2]
    assert frontier_sizes(13) == [8, 4, 1]
    tree = Tree.of_entries(ENTRIES)
    for n in range(0, 33):
        stack = Stack()
        for h in tree.leaves[:n]:
            stack.push(h)
        assert stack.size == n
        assert stack.hashes() == tree.frontier(n)
        assert stack.root() == tree.root(n)
        assert Stack(frontier_nodes(n, tree.frontier(n))).root() == tree.root(n)


def test_range_nodes_extend_a_compact_range() -> None:
    """A window's export: the compact range of [0, a), the window's leaves, and the aligned
    subtrees of [b, n) give the head of n."""
    tree = Tree.of_entries(ENTRIES)
    for a in range(0, 20):
        for b in range(a, 26):
            for n in (b, b + 1, 27, 32, 40):
                if n < b:
                    continue
                stack = Stack(frontier_nodes(a, tree.frontier(a)))
                for h in tree.leaves[a:b]:
                    stack.push(h)
                for level, h in tree.range_nodes(b, n):
                    stack.push(h, level)
                assert stack.root() == tree.root(n), (a, b, n)
    with pytest.raises(ValueError, match="aligned"):
        Stack(frontier_nodes(3, tree.frontier(3))).push(tree.root(2), 1)


@pytest.mark.parametrize("pruned", [1, 2, 3, 5, 8, 13, 16, 21])
def test_a_pruned_tree_gives_the_same_heads_and_proofs(pruned: int) -> None:
    whole = Tree.of_entries(ENTRIES)
    kept = Tree(whole.leaves[pruned:], offset=pruned, frontier=whole.frontier(pruned))
    assert kept.size == whole.size
    for n in range(pruned, whole.size + 1):
        assert kept.root(n) == whole.root(n)
        for i in range(pruned, n):
            assert kept.inclusion_proof(i, n) == whole.inclusion_proof(i, n)
        for m in range(pruned, n + 1):
            assert kept.consistency_proof(m, n) == whole.consistency_proof(m, n)
        assert kept.frontier(n) == whole.frontier(n)
    assert kept.range_nodes(pruned, whole.size) == whole.range_nodes(pruned, whole.size)


def test_a_pruned_tree_says_what_it_cannot_prove() -> None:
    whole = Tree.of_entries(ENTRIES)
    kept = Tree(whole.leaves[8:], offset=8, frontier=whole.frontier(8))
    with pytest.raises(MissingNodes):
        kept.root(3)  # a head inside the pruned range
    with pytest.raises(MissingNodes):
        kept.consistency_proof(2, 20)  # needs leaves 2..3, pruned
    with pytest.raises(MissingNodes):
        kept.inclusion_proof(1, 20)
    with pytest.raises(ValueError, match="leaves"):
        kept.root(41)

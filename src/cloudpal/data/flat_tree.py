"""flat-tree: the in-order layout of a binary tree that Hypercore's Merkle tree uses.

A port of the JS `flat-tree` 1.13 package (flat-tree/index.js). Leaves (blocks) sit at even
indices (`block i -> 2i`), parents at odd ones; `depth(i)` is the number of trailing 1-bits.
Every proof in merkle.py walks this layout, and peers compare node *indices* on the wire, so the
functions below keep JS's exact semantics (including `left_child(even) == -1`). Python ints have
no 2^31 limits, so `twoPow`/`rightShift` collapse to shifts.
"""

from __future__ import annotations

__all__ = [
    "Iterator",
    "children",
    "count",
    "count_leaves",
    "depth",
    "full_roots",
    "future_roots",
    "index",
    "iterator",
    "left_child",
    "left_span",
    "next_leaf",
    "offset",
    "parent",
    "patch",
    "right_child",
    "right_span",
    "sibling",
    "spans",
]


def depth(i: int) -> int:
    """Number of trailing 1-bits of `i` (0 for leaves)."""
    d = 0
    i += 1
    while not i & 1:
        d += 1
        i >>= 1
    return d


def offset(i: int, d: int | None = None) -> int:
    """Position of `i` among the nodes of its depth, counted from the left."""
    if not i & 1:
        return i // 2
    if not d:
        d = depth(i)
    return ((i + 1) // (1 << d) - 1) // 2


def index(d: int, off: int) -> int:
    """Flat index of the node at depth `d`, offset `off`."""
    return (1 + 2 * off) * (1 << d) - 1


def parent(i: int, d: int | None = None) -> int:
    if not d:
        d = depth(i)
    return index(d + 1, offset(i, d) >> 1)


def sibling(i: int, d: int | None = None) -> int:
    if not d:
        d = depth(i)
    off = offset(i, d)
    return index(d, off - 1 if off & 1 else off + 1)


def left_child(i: int, d: int | None = None) -> int:
    """Left child of `i`, -1 for a leaf (as in JS)."""
    if not i & 1:
        return -1
    if not d:
        d = depth(i)
    return index(d - 1, offset(i, d) * 2)


def right_child(i: int, d: int | None = None) -> int:
    """Right child of `i`, -1 for a leaf (as in JS)."""
    if not i & 1:
        return -1
    if not d:
        d = depth(i)
    return index(d - 1, 1 + offset(i, d) * 2)


def children(i: int, d: int | None = None) -> tuple[int, int] | None:
    """Both children of `i`, None for a leaf."""
    if not i & 1:
        return None
    if not d:
        d = depth(i)
    off = offset(i, d) * 2
    return index(d - 1, off), index(d - 1, off + 1)


def left_span(i: int, d: int | None = None) -> int:
    """Leftmost leaf under `i`."""
    if not i & 1:
        return i
    if not d:
        d = depth(i)
    return offset(i, d) * (1 << (d + 1))


def right_span(i: int, d: int | None = None) -> int:
    """Rightmost leaf under `i`."""
    if not i & 1:
        return i
    if not d:
        d = depth(i)
    return (offset(i, d) + 1) * (1 << (d + 1)) - 2


def spans(i: int, d: int | None = None) -> tuple[int, int]:
    """(leftmost leaf, rightmost leaf) under `i`."""
    if not i & 1:
        return i, i
    if not d:
        d = depth(i)
    off = offset(i, d)
    width = 1 << (d + 1)
    return off * width, (off + 1) * width - 2


def count(i: int, d: int | None = None) -> int:
    """Number of nodes (leaves and parents) in the subtree rooted at `i`."""
    if not i & 1:
        return 1
    if not d:
        d = depth(i)
    return (1 << (d + 1)) - 1


def count_leaves(i: int) -> int:
    return (count(i) + 1) // 2


def next_leaf(i: int) -> int:
    factor = 1
    r = i
    while r & 1:
        r = (r - 1) // 2
        factor *= 2
    return i + factor + 1


def full_roots(i: int) -> list[int]:
    """Roots of the tree whose leaves end before leaf index `i` (`i = 2 * length`)."""
    if i & 1:
        raise ValueError("You can only look up roots for depth(0) blocks")
    result: list[int] = []
    i //= 2
    off = 0
    factor = 1
    while i:
        while factor * 2 <= i:
            factor *= 2
        result.append(off + factor - 1)
        off += 2 * factor
        i -= factor
        factor = 1
    return result


def future_roots(i: int) -> list[int]:
    """The gaps that become roots when the tree with head `i` grows to a full power of two."""
    if i & 1:
        raise ValueError("You can only look up future roots for depth(0) blocks")
    result: list[int] = []
    factor = 1
    while factor * 2 <= i:
        factor *= 2
    if factor * 2 - 2 == i:
        return result
    pos = factor // 2 - 1
    while pos + factor // 2 - 1 != i:
        pos += factor
        while pos + factor // 2 - 1 > i:
            factor //= 2
            pos -= factor // 2
        result.append(pos - factor // 2)
    return result


def patch(start: int, end: int) -> list[int]:
    """Nodes that turn the roots of head `start` into the roots of head `end` (flat-tree `patch`)."""
    if start == 0 or start >= end:
        return []
    roots = full_roots(start)
    target = full_roots(end)
    i = 0
    while i < len(target):
        if i >= len(roots) or roots[i] != target[i]:
            break
        i += 1
    out: list[int] = []
    if i < len(roots):
        prev = len(roots) - 1
        ite = iterator(roots[prev])
        prev -= 1
        while ite.index != target[i]:
            ite.sibling()
            if prev >= 0 and ite.index == roots[prev]:
                prev -= 1
            else:
                out.append(ite.index)
            out.append(ite.parent())
        i += 1
    out.extend(target[i:])
    return out


class Iterator:
    """A cursor over the flat tree (`flat.iterator` in JS): index, offset and factor = 2^(depth+1)."""

    __slots__ = ("factor", "index", "offset")

    def __init__(self, i: int = 0) -> None:
        self.index = 0
        self.offset = 0
        self.factor = 0
        self.seek(i)

    def __repr__(self) -> str:
        return f"Iterator(index={self.index}, offset={self.offset}, factor={self.factor})"

    def seek(self, i: int) -> None:
        self.index = i
        if i & 1:
            self.offset = offset(i)
            self.factor = 1 << (depth(i) + 1)
        else:
            self.offset = i // 2
            self.factor = 2

    def is_left(self) -> bool:
        return not self.offset & 1

    def is_right(self) -> bool:
        return bool(self.offset & 1)

    def is_root(self, length: int) -> bool:
        current_length = 1 + (self.index + self.factor // 2 - 1) // 2
        if length < current_length:
            return False
        factor = self.factor * 2
        i = self.index - self.factor // 2 if self.offset & 1 else self.index + self.factor // 2
        parent_length = 1 + (i + factor // 2 - 1) // 2
        return parent_length > length

    def contains(self, i: int) -> bool:
        """True when node `i` lies in the subtree rooted at the current node."""
        if i > self.index:
            return i < self.index + self.factor // 2
        if i < self.index:
            return i > self.index - self.factor // 2
        return True

    def prev(self) -> int:
        if not self.offset:
            return self.index
        self.offset -= 1
        self.index -= self.factor
        return self.index

    def next(self) -> int:
        self.offset += 1
        self.index += self.factor
        return self.index

    def count(self) -> int:
        if not self.index & 1:
            return 1
        return self.factor - 1

    def count_leaves(self) -> int:
        return (self.count() + 1) // 2

    def sibling(self) -> int:
        return self.next() if self.is_left() else self.prev()

    def parent(self) -> int:
        if self.offset & 1:
            self.index -= self.factor // 2
            self.offset = (self.offset - 1) // 2
        else:
            self.index += self.factor // 2
            self.offset //= 2
        self.factor *= 2
        return self.index

    def left_span(self) -> int:
        self.index = self.index - self.factor // 2 + 1
        self.offset = self.index // 2
        self.factor = 2
        return self.index

    def peek_left_span(self) -> int:
        return self.index - self.factor // 2 + 1

    def right_span(self) -> int:
        self.index = self.index + self.factor // 2 - 1
        self.offset = self.index // 2
        self.factor = 2
        return self.index

    def peek_right_span(self) -> int:
        return self.index + self.factor // 2 - 1

    def left_child(self) -> int:
        if self.factor == 2:
            return self.index
        self.factor //= 2
        self.index -= self.factor // 2
        self.offset *= 2
        return self.index

    def right_child(self) -> int:
        if self.factor == 2:
            return self.index
        self.factor //= 2
        self.index += self.factor // 2
        self.offset = 2 * self.offset + 1
        return self.index

    def next_tree(self) -> int:
        self.index = self.index + self.factor // 2 + 1
        self.offset = self.index // 2
        self.factor = 2
        return self.index

    def prev_tree(self) -> int:
        if not self.offset:
            self.index = 0
            self.factor = 2
        else:
            self.index = self.index - self.factor // 2 - 1
            self.offset = self.index // 2
            self.factor = 2
        return self.index

    def full_root(self, i: int) -> bool:
        """Grow the current leaf into the full root it starts, for a tree with head `i`.

        Returns False once the leaf is at or past the head (the loop
        `ite.fullRoot(to); ite.nextTree()` therefore visits the roots of `to` left to right).
        """
        if i <= self.index or self.index & 1:
            return False
        while i > self.index + self.factor + self.factor // 2:
            self.index += self.factor // 2
            self.factor *= 2
            self.offset //= 2
        return True


def iterator(i: int = 0) -> Iterator:
    return Iterator(i)

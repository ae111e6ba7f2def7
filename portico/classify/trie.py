"""The merged prefix trie: every container's addresses in one tree per address family.

Theory of operation. A node is a prefix (network, length). Its ``holders`` map
says who contributed it and how many times: a container holding 10.1.0.0/16
directly and again through a nested container counts twice, so removing one
reason leaves the other. Looking up an address walks from the root and
collects the holders of every node on the path, so 10.1.2.3 finds both the
container holding 10.0.0.0/8 and the one holding 10.1.0.0/16: all matches, not
only the longest.

The tree is path-compressed (a Patricia trie): a node exists only if it has
holders or is the branching point of two subtrees. Inserting a prefix
splits an edge at most once; removing the last holder splices the node out
and, if its parent is left as a branch point with a single child, splices that
out too. So N prefixes never need more than 2N - 1 nodes, and a deleted
container leaves nothing behind (``check`` asserts it).

Holders are opaque hashable keys (``portico.classify.containers`` uses container
names and rule-literal prefixes). The trie does no interpretation of them.
"""

from __future__ import annotations

from collections.abc import Hashable, Iterator


class Node:
    __slots__ = ("network", "length", "children", "parent", "holders")

    def __init__(self, network: int, length: int, parent: Node | None) -> None:
        self.network = network
        self.length = length
        self.children: list[Node | None] = [None, None]
        self.parent = parent
        self.holders: dict[Hashable, int] = {}

    def __repr__(self) -> str:
        return f"Node({self.network:#x}/{self.length}, holders={self.holders})"


class PrefixTrie:
    """Prefixes of one family (``width`` 32 or 128) with reference-counted holders."""

    def __init__(self, width: int) -> None:
        if width not in (32, 128):
            raise ValueError(f"width must be 32 or 128, got {width}")
        self.width = width
        self.root: Node | None = None
        self.node_count = 0

    # ---------------------------------------------------------------- helpers
    def _mask(self, length: int) -> int:
        return ((1 << length) - 1) << (self.width - length) if length else 0

    def _bit(self, network: int, at: int) -> int:
        """Bit ``at`` (0 = most significant) of ``network``."""
        return (network >> (self.width - 1 - at)) & 1

    def _common(self, a: int, a_len: int, b: int, b_len: int) -> int:
        """Length of the longest prefix ``a/a_len`` and ``b/b_len`` share."""
        most = min(a_len, b_len)
        differ = a ^ b
        if differ == 0:
            return most
        return min(most, self.width - differ.bit_length())

    def _replace(self, old: Node, new: Node | None) -> None:
        """Put ``new`` where ``old`` hangs (under old's parent, or at the root)."""
        parent = old.parent
        if new is not None:
            new.parent = parent
        if parent is None:
            self.root = new
        elif parent.children[0] is old:
            parent.children[0] = new
        else:
            parent.children[1] = new

    def _check_prefix(self, network: int, length: int) -> None:
        if not 0 <= length <= self.width:
            raise ValueError(f"prefix length {length} outside 0..{self.width}")
        if network & ~self._mask(length) & ((1 << self.width) - 1) or network >> self.width:
            raise ValueError(f"{network:#x}/{length} has host bits set or is too wide")

    # ---------------------------------------------------------------- queries
    def find(self, network: int, length: int) -> Node | None:
        """The node of exactly this prefix, or None."""
        node = self.root
        while node is not None and node.length <= length:
            if self._common(node.network, node.length, network, length) < node.length:
                return None
            if node.length == length:
                return node
            node = node.children[self._bit(network, node.length)]
        return None

    def path(self, address: int) -> Iterator[Node]:
        """Nodes with holders whose prefix covers ``address``, shortest first."""
        node = self.root
        while node is not None:
            if self._common(node.network, node.length, address, self.width) < node.length:
                return
            if node.holders:
                yield node
            if node.length == self.width:
                return
            node = node.children[self._bit(address, node.length)]

    def holders_of(self, address: int) -> set[Hashable]:
        """Every holder of every prefix covering ``address``."""
        found: set[Hashable] = set()
        for node in self.path(address):
            found.update(node.holders)
        return found

    def covering(self, node: Node) -> Node | None:
        """The nearest ancestor of ``node`` that has holders."""
        up = node.parent
        while up is not None and not up.holders:
            up = up.parent
        return up

    def below(self, node: Node) -> Iterator[Node]:
        """``node`` and every node under it, parents before children."""
        stack = [node]
        while stack:
            current = stack.pop()
            yield current
            stack.extend(child for child in reversed(current.children) if child is not None)

    def __iter__(self) -> Iterator[Node]:
        return self.below(self.root) if self.root is not None else iter(())

    # ---------------------------------------------------------------- updates
    def add(self, network: int, length: int, holder: Hashable, count: int = 1) -> tuple[Node, bool]:
        """Count ``holder`` ``count`` more times at the prefix; create the node if needed.

        Returns the node and whether the holder is new there (its set of holders changed).
        """
        self._check_prefix(network, length)
        if count <= 0:
            raise ValueError(f"count must be positive, got {count}")
        node = self._node(network, length)
        new = holder not in node.holders
        node.holders[holder] = node.holders.get(holder, 0) + count
        return node, new

    def remove(
        self, network: int, length: int, holder: Hashable, count: int = 1
    ) -> tuple[bool, Node, bool]:
        """Drop ``count`` references of ``holder`` at the prefix.

        Returns (whether the holder is gone from the prefix, the node, whether the node
        is still in the tree). A node spliced out keeps its ``children`` pointers, so
        the caller can still reach the subtrees that hung below it.
        Raises KeyError when the holder does not hold the prefix that many times.
        """
        node = self.find(network, length)
        have = node.holders.get(holder, 0) if node is not None else 0
        if node is None or have < count:
            raise KeyError(f"{holder!r} does not hold {network:#x}/{length} {count} time(s)")
        if have > count:
            node.holders[holder] = have - count
            return False, node, True
        del node.holders[holder]
        return True, node, not self._prune(node)

    def _node(self, network: int, length: int) -> Node:
        """The node for the prefix, splitting an edge or adding a leaf if it is missing."""
        if self.root is None:
            self.root = self._new(network, length, None)
            return self.root
        node = self.root
        while True:
            common = self._common(node.network, node.length, network, length)
            if common < node.length:
                # The prefix diverges inside node's edge: split it.
                if common == length:
                    fresh = self._new(network, length, None)
                    self._replace(node, fresh)
                    fresh.children[self._bit(node.network, length)] = node
                    node.parent = fresh
                    return fresh
                branch = self._new(network & self._mask(common), common, None)
                self._replace(node, branch)
                fresh = self._new(network, length, branch)
                branch.children[self._bit(node.network, common)] = node
                branch.children[self._bit(network, common)] = fresh
                node.parent = branch
                return fresh
            if node.length == length:
                return node
            side = self._bit(network, node.length)
            child = node.children[side]
            if child is None:
                fresh = self._new(network, length, node)
                node.children[side] = fresh
                return fresh
            node = child

    def _new(self, network: int, length: int, parent: Node | None) -> Node:
        self.node_count += 1
        return Node(network, length, parent)

    def _prune(self, node: Node | None) -> bool:
        """Splice out nodes that hold nothing and branch nowhere, walking up.

        Returns whether the first node was spliced out.
        """
        spliced_first = False
        walked = 0
        while node is not None and not node.holders:
            kids = [child for child in node.children if child is not None]
            if len(kids) == 2:
                break
            parent = node.parent
            self._replace(node, kids[0] if kids else None)
            self.node_count -= 1
            spliced_first = spliced_first or walked == 0
            walked += 1
            node = parent
        return spliced_first

    # ---------------------------------------------------------------- invariants
    def check(self) -> None:
        """Raise AssertionError if the tree breaks an invariant (tests call this)."""
        seen = 0
        for node in self:
            seen += 1
            kids = [child for child in node.children if child is not None]
            assert node.holders or len(kids) == 2, f"dangling node {node}"
            assert all(count > 0 for count in node.holders.values()), f"zero count in {node}"
            assert node.network & ~self._mask(node.length) == 0, f"host bits in {node}"
            for side, child in enumerate(node.children):
                if child is None:
                    continue
                assert child.parent is node, f"{child} does not point back to {node}"
                assert child.length > node.length, f"{child} not longer than {node}"
                common = self._common(node.network, node.length, child.network, child.length)
                assert common == node.length, f"{child} not inside {node}"
                assert self._bit(child.network, node.length) == side, f"{child} on wrong side"
        assert seen == self.node_count, f"counted {seen} nodes, believed {self.node_count}"

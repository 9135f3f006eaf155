"""THREAD (RFC 5256 §3): the ORDEREDSUBJECT and REFERENCES algorithms, and the answer.

Both work on `sort.SortItem`s (UID, dates, header facts) and return a forest of
`Node`s; `render` writes it as the THREAD response's thread lists with whatever
numbers the client asked for (UIDs or sequence numbers). Deep reply chains are
common in government mail (a circular answered down a whole ministry), so nothing
here recurses: every walk over the forest uses an explicit stack.

What this is not: the search that picks the messages (session) or the header reading
(`sort.facts_of`).
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field

from appliance.mail.imap.sort import SortItem


@dataclass(eq=False)
class Node:
    """A message of a thread, or a dummy standing for one that is not in the set."""

    item: SortItem | None = None
    parent: Node | None = None
    children: list[Node] = field(default_factory=list)

    def date_key(self) -> tuple[float, int]:
        """Sent date, then mailbox order (RFC 5256 §2.2, §4); a dummy uses its first child."""
        node = self
        while node.item is None and node.children:
            node = node.children[0]
        if node.item is None:
            return (0.0, 0)
        return (node.item.sent, node.item.uid)

    def is_ancestor_of(self, other: Node) -> bool:
        node: Node | None = other
        while node is not None:
            if node is self:
                return True
            node = node.parent
        return False


def _link(child: Node, parent: Node | None) -> None:
    if child.parent is not None:
        child.parent.children.remove(child)
    child.parent = parent
    if parent is not None:
        parent.children.append(child)


# ---------------------------------------------------------------------------------------
# ORDEREDSUBJECT (RFC 5256 §3)


def ordered_subject(items: Iterable[SortItem]) -> list[Node]:
    """Group by base subject; threads in order of their first message's sent date.

    Within a thread the first message is the parent and every other one its child,
    in sent-date order (so the tree is at most two levels deep).
    """
    ordered = sorted(items, key=lambda i: (i.facts.subject, i.sent, i.uid))
    roots: list[Node] = []
    for _, group in itertools.groupby(ordered, key=lambda i: i.facts.subject):
        members = list(group)
        root = Node(members[0])
        for member in members[1:]:
            _link(Node(member), root)
        roots.append(root)
    roots.sort(key=Node.date_key)
    return roots


# ---------------------------------------------------------------------------------------
# REFERENCES (RFC 5256 §4)


def references(items: Iterable[SortItem]) -> list[Node]:
    """Thread by Message-ID, References and In-Reply-To, then gather by subject."""
    by_id: dict[str, Node] = {}
    containers: list[Node] = []
    unique = itertools.count()
    for item in sorted(items, key=lambda i: i.uid):
        # (1A) The message's container, by Message-ID; a missing or duplicate id gets
        # a container of its own.
        message_id = item.facts.message_id
        node = by_id.get(message_id) if message_id is not None else None
        if node is None or node.item is not None:
            node = Node(item)
            key = message_id if message_id is not None and message_id not in by_id else None
            by_id[key if key is not None else f"\0{next(unique)}"] = node
            containers.append(node)
        else:
            node.item = item
        # (1B) Link the References chain, each id the child of the one before it,
        # unless it already has a parent or the link would make a loop.
        chain: list[Node] = []
        for ref in item.facts.references:
            ref_node = by_id.get(ref)
            if ref_node is None:
                ref_node = by_id[ref] = Node()
                containers.append(ref_node)
            chain.append(ref_node)
        for parent, child in itertools.pairwise(chain):
            if child.parent is None and not child.is_ancestor_of(parent) and child is not parent:
                _link(child, parent)
        # (1C) The last reference is the message's parent; this replaces what earlier
        # chains presumed, unless it would make a loop.
        last = chain[-1] if chain else None
        if last is not None and (last is node or node.is_ancestor_of(last)):
            last = None
        if last is not None or node.parent is not None:
            _link(node, last)
    # (2) The root set.
    roots = [c for c in containers if c.parent is None]
    # (4) Prune dummies: an empty one goes; one with children gives them to its
    # parent, but a root dummy only when it has a single child.
    roots = _prune(roots)
    # (5) Gather the root set by base subject.
    roots = _gather_by_subject(roots)
    # (6) Sort every set of siblings (the root set included) by sent date.
    _sort_siblings(roots)
    return roots


def _prune(roots: list[Node]) -> list[Node]:
    new_roots: list[Node] = []
    # Post-order over the forest with an explicit stack: children are pruned before
    # their parent looks at them.
    stack: list[tuple[Node, bool]] = [(root, False) for root in reversed(roots)]
    while stack:
        node, done = stack.pop()
        if not done:
            stack.append((node, True))
            stack.extend((child, False) for child in reversed(node.children))
            continue
        if node.item is not None or node.parent is None:
            continue
        parent = node.parent
        position = parent.children.index(node)
        parent.children[position : position + 1] = node.children
        for child in node.children:
            child.parent = parent
        node.children = []
        node.parent = None
    for root in roots:
        if root.item is None:
            if not root.children:
                continue
            if len(root.children) == 1:
                child = root.children[0]
                child.parent = None
                root.children = []
                new_roots.append(child)
                continue
        new_roots.append(root)
    return new_roots


def _subject_of(node: Node) -> tuple[str, bool]:
    item = node.item if node.item is not None else node.children[0].item
    if item is None:  # a dummy under a dummy never survives pruning
        return "", False
    return item.facts.subject, item.facts.is_reply


def _gather_by_subject(roots: list[Node]) -> list[Node]:
    # (5A-C) The table: one root per base subject, preferring a dummy, then a
    # message whose subject is not a reply.
    table: dict[str, Node] = {}
    for root in roots:
        subject, is_reply = _subject_of(root)
        if not subject:
            continue
        old = table.get(subject)
        if (
            old is None
            or (root.item is None and old.item is not None)
            or (old.item is not None and _subject_of(old)[1] and not is_reply)
        ):
            table[subject] = root
    # (5D) Merge each root with the table's root of its subject.
    result = list(roots)
    removed: set[int] = set()
    for root in roots:
        if id(root) in removed:
            continue
        subject, is_reply = _subject_of(root)
        if not subject:
            continue
        other = table.get(subject)
        if other is None or other is root:
            continue
        if other.item is None and root.item is None:
            # Both dummies: one takes the other's children.
            for child in list(root.children):
                _link(child, other)
            removed.add(id(root))
        elif other.item is None:
            _link(root, other)
            removed.add(id(root))
        elif root.item is None:
            # The table's message joins this dummy, which takes its place.
            _link(other, root)
            removed.add(id(other))
            table[subject] = root
        elif not _subject_of(other)[1] and is_reply:
            _link(root, other)
            removed.add(id(root))
        else:
            # Neither is the other's reply: a new dummy holds both.
            dummy = Node()
            position = next(i for i, r in enumerate(result) if r is other)
            result[position] = dummy
            _link(other, dummy)
            _link(root, dummy)
            removed.add(id(root))
            table[subject] = dummy
    return [r for r in result if id(r) not in removed]


def _sort_siblings(roots: list[Node]) -> None:
    # Deepest sets first, so a dummy's date key sees its children sorted.
    order: list[Node] = []
    stack = list(roots)
    while stack:
        node = stack.pop()
        order.append(node)
        stack.extend(node.children)
    for node in reversed(order):
        node.children.sort(key=Node.date_key)
    roots.sort(key=Node.date_key)


# ---------------------------------------------------------------------------------------
# The answer


def render(roots: Sequence[Node], number: Callable[[int], int]) -> str:
    """The THREAD response's data (RFC 5256 §5: thread-list), numbers by *number(uid)*.

    A message with one child continues its list (``(1 2)``); with several, each
    child's subtree is a nested list (``(1 (2)(3))``); a dummy shows only its
    children (``((1)(2))``).
    """
    out: list[str] = []
    for root in roots:
        out.append("(")
        stack: list[Node | str] = [")", root]
        while stack:
            entry = stack.pop()
            if isinstance(entry, str):
                out.append(entry)
                continue
            if entry.item is not None:
                out.append(str(number(entry.item.uid)))
            kids = entry.children
            if not kids:
                continue
            if entry.item is not None and len(kids) == 1:
                out.append(" ")
                stack.append(kids[0])
                continue
            if entry.item is not None:
                out.append(" ")
            for kid in reversed(kids):
                stack.extend((")", kid, "("))
        # A root list closes with the ")" pushed first.
    return "".join(out)

"""A conversation's messages as a tree: paths, versions and the newest branch, in memory.

Pure functions over the skeleton of a conversation (id, parent and time of every message,
oldest first), so the API reads the tree in one small query and the full rows of one path
only. Nothing here touches the database.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime
from typing import NamedTuple


class Node(NamedTuple):
    id: uuid.UUID
    parent_id: uuid.UUID | None
    created_at: datetime


@dataclass(frozen=True)
class Tree:
    """Who is whose parent, and each parent's children oldest first (None: the roots)."""

    parents: dict[uuid.UUID, uuid.UUID | None]
    children: dict[uuid.UUID | None, list[uuid.UUID]]

    def __contains__(self, message_id: object) -> bool:
        return message_id in self.parents


def tree_of(nodes: Iterable[Node]) -> Tree:
    # Sorted here rather than trusted: children lists must be oldest first, ties by id, for
    # "newest" and the siblings' order to be the same whoever built the skeleton.
    ordered = sorted(nodes, key=lambda node: (node.created_at, node.id))
    parents: dict[uuid.UUID, uuid.UUID | None] = {}
    children: dict[uuid.UUID | None, list[uuid.UUID]] = {}
    for node in ordered:
        parents[node.id] = node.parent_id
        children.setdefault(node.parent_id, []).append(node.id)
    return Tree(parents=parents, children=children)


def path_to(tree: Tree, leaf_id: uuid.UUID) -> list[uuid.UUID]:
    """The ids from the root down to `leaf_id`, oldest first."""
    path: list[uuid.UUID] = []
    seen: set[uuid.UUID] = set()
    current: uuid.UUID | None = leaf_id
    # `seen` guards against a cycle, which the foreign key alone does not rule out.
    while current is not None and current in tree.parents and current not in seen:
        seen.add(current)
        path.append(current)
        current = tree.parents[current]
    path.reverse()
    return path


def newest_descendant(tree: Tree, message_id: uuid.UUID) -> uuid.UUID:
    """Down from `message_id`, always to the newest child, to a message with none."""
    current = message_id
    seen = {current}
    while (kids := tree.children.get(current)) and kids[-1] not in seen:
        current = kids[-1]
        seen.add(current)
    return current


def default_leaf(tree: Tree) -> uuid.UUID | None:
    """Where a conversation with no active leaf (none saved yet, or it was deleted) ends:
    the newest branch from the newest first message."""
    roots = tree.children.get(None)
    return newest_descendant(tree, roots[-1]) if roots else None


def path_through(tree: Tree, message_id: uuid.UUID | None) -> list[uuid.UUID]:
    """The path that runs through `message_id`, continued down its newest branch."""
    if message_id is None or message_id not in tree:
        leaf = default_leaf(tree)
        return path_to(tree, leaf) if leaf is not None else []
    return path_to(tree, newest_descendant(tree, message_id))


def siblings(tree: Tree, message_id: uuid.UUID) -> list[uuid.UUID]:
    """The versions of a message, itself included, oldest first."""
    return list(tree.children.get(tree.parents.get(message_id), [message_id]))

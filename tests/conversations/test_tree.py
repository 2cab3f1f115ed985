"""The tree functions behind the API's paths and version switchers (pure, no database)."""

from __future__ import annotations

import uuid
from datetime import datetime, timedelta

from conversations.tree import Node, newest_descendant, path_through, path_to, siblings, tree_of

T0 = datetime(2026, 12, 1, 12, 0)


def ids(*names: str) -> dict[str, uuid.UUID]:
    return {name: uuid.uuid5(uuid.NAMESPACE_DNS, name) for name in names}


# q1 ─ a1 ─ q2 ─ a2      a first message q1 with a reply a1, then q2 answered twice
#            └─ a2b      (a2b regenerated later); q2b is an edit of q2 (a sibling);
#       └─ q2b ─ a3      r1 is a new first message (an edit of q1), a sibling of q1.
# r1
M = ids("q1", "a1", "q2", "a2", "a2b", "q2b", "a3", "r1")
ROWS = [
    ("q1", None, 0),
    ("a1", "q1", 1),
    ("q2", "a1", 2),
    ("a2", "q2", 3),
    ("q2b", "a1", 4),
    ("a3", "q2b", 5),
    ("a2b", "q2", 6),
    ("r1", None, 7),
]
# Given out of order: the functions must not trust the caller's order.
TREE = tree_of(
    Node(M[name], M[parent] if parent else None, T0 + timedelta(minutes=minute))
    for name, parent, minute in reversed(ROWS)
)


def names(found: list[uuid.UUID]) -> list[str]:
    back = {v: k for k, v in M.items()}
    return [back[i] for i in found]


def test_a_path_runs_from_the_root_to_its_leaf() -> None:
    assert names(path_to(TREE, M["a3"])) == ["q1", "a1", "q2b", "a3"]
    assert names(path_to(TREE, M["a2"])) == ["q1", "a1", "q2", "a2"]


def test_through_a_message_the_path_follows_the_newest_versions_down() -> None:
    assert names(path_through(TREE, M["q2"])) == ["q1", "a1", "q2", "a2b"]
    assert names(path_through(TREE, M["q1"])) == ["q1", "a1", "q2b", "a3"]
    assert newest_descendant(TREE, M["a2"]) == M["a2"]


def test_with_no_leaf_the_newest_first_message_s_branch_is_shown() -> None:
    assert names(path_through(TREE, None)) == ["r1"]
    assert names(path_through(TREE, uuid.uuid4())) == ["r1"]


def test_versions_are_the_children_of_one_parent_oldest_first() -> None:
    assert names(siblings(TREE, M["a2b"])) == ["a2", "a2b"]
    assert names(siblings(TREE, M["q2"])) == ["q2", "q2b"]
    assert names(siblings(TREE, M["r1"])) == ["q1", "r1"]  # first messages are versions
    assert names(siblings(TREE, M["a3"])) == ["a3"]


def test_a_cycle_in_bad_data_ends_the_walk() -> None:
    x, y = uuid.uuid4(), uuid.uuid4()
    looped = tree_of([Node(x, y, T0), Node(y, x, T0 + timedelta(seconds=1))])
    assert path_to(looped, x) == [y, x]

"""The maintenance commands on conversations with versions: export keeps the whole tree,
pruning deletes it whole."""

from __future__ import annotations

import io
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

import pytest
from django.core.management import call_command
from django.db import connection, transaction
from django.utils import timezone

from conversations.export import export_lines
from conversations.models import Conversation, Message
from conversations.pruning import PruneResult, conversations_prune
from conversations.services import message_append
from personas.models import Persona

pytestmark = pytest.mark.django_db


@dataclass
class Tree:
    """q1 ─ a1 (first try) / a1b (regenerated) ─ q2 (sent) / q2b (edited) ─ a2b.

    The active path is q1, a1b, q2b, a2b; a1 and q2 are the versions left behind.
    """

    chat: Conversation
    q1: Message
    a1: Message
    a1b: Message
    q2: Message
    q2b: Message
    a2b: Message

    def ids(self) -> set[Any]:
        return {m.pk for m in (self.q1, self.a1, self.a1b, self.q2, self.q2b, self.a2b)}


def version(chat: Conversation, of: Message, content: str) -> Message:
    """A sibling of `of`, as regenerate or edit-and-resend makes one, and the new leaf."""
    sibling = Message.objects.create(
        conversation=chat,
        role=of.role,
        content=content,
        parent_id=of.parent_id,
        owner_id=chat.owner_id if of.role == Message.Role.USER else None,
    )
    Conversation.objects.filter(pk=chat.pk).update(current_leaf=sibling)
    chat.current_leaf = sibling
    return sibling


def tree(owner: Any, persona: Persona, *, title: str, days_old: float) -> Tree:
    chat = Conversation.objects.create(owner=owner, persona=persona, title=title)
    q1 = message_append(conversation=chat, role=Message.Role.USER, content=f"{title}: q1")
    a1 = message_append(conversation=chat, role=Message.Role.ASSISTANT, content="a1 first try")
    a1b = version(chat, a1, "a1 regenerated")
    q2 = message_append(conversation=chat, role=Message.Role.USER, content="q2 as sent")
    q2b = version(chat, q2, "q2 edited")
    a2b = message_append(conversation=chat, role=Message.Role.ASSISTANT, content="a2 to edit")
    Conversation.objects.filter(pk=chat.pk).update(
        updated_at=timezone.now() - timedelta(days=days_old)
    )
    chat.refresh_from_db()
    return Tree(chat, q1, a1, a1b, q2, q2b, a2b)


def run(*args: str) -> tuple[str, str]:
    out, err = io.StringIO(), io.StringIO()
    call_command(*args, stdout=out, stderr=err)
    return out.getvalue(), err.getvalue()


def test_export_holds_every_version_with_its_parent_and_the_active_leaf(
    alice: Any, bob: Any, persona: Persona, tmp_path: Any
) -> None:
    t = tree(alice, persona, title="Versions", days_old=0)
    tree(bob, persona, title="Bob's", days_old=0)
    output = tmp_path / "alice.jsonl"

    out, _ = run("export_conversations", "--user", "alice", "--output", str(output))

    assert out.strip() == f"export_conversations: 1 conversation(s) as jsonl to {output}"
    [record] = list(export_lines(output.open(encoding="utf-8")))
    assert record["id"] == str(t.chat.pk)
    assert record["current_leaf_id"] == str(t.a2b.pk)
    parents = {m["content"]: m["parent_id"] for m in record["messages"]}
    # Both replies to q1, both versions of the second question, each under its parent.
    assert parents == {
        "Versions: q1": None,
        "a1 first try": str(t.q1.pk),
        "a1 regenerated": str(t.q1.pk),
        "q2 as sent": str(t.a1b.pk),
        "q2 edited": str(t.a1b.pk),
        "a2 to edit": str(t.q2b.pk),
    }
    assert {m["id"] for m in record["messages"]} == {str(pk) for pk in t.ids()}
    assert "Bob's" not in output.read_text(encoding="utf-8")


def test_markdown_export_reads_the_active_path_only(alice: Any, persona: Persona) -> None:
    tree(alice, persona, title="Versions", days_old=0)

    out, _ = run("export_conversations", "--format", "md")

    for shown in ("Versions: q1", "a1 regenerated", "q2 edited", "a2 to edit"):
        assert shown in out
    for left_behind in ("a1 first try", "q2 as sent"):
        assert left_behind not in out
    assert out.index("a1 regenerated") < out.index("q2 edited") < out.index("a2 to edit")


def test_prune_deletes_whole_trees_and_leaves_the_rest(
    alice: Any, bob: Any, persona: Persona
) -> None:
    old = [tree(alice, persona, title=f"old {i}", days_old=100 + i) for i in range(3)]
    recent = tree(alice, persona, title="recent", days_old=1)
    bobs_old = tree(bob, persona, title="bob's old", days_old=200)

    dry, _ = run("prune_conversations", "--older-than", "90d", "--user", "alice", "--dry-run")
    assert dry.strip().splitlines()[0] == (
        "prune_conversations: dry run, would delete 3 conversation(s) of alice and "
        "18 message(s) older than 90d"
    )
    assert Message.objects.count() == 30

    out, _ = run(
        "prune_conversations", "--older-than", "90d", "--user", "alice", "--batch-size", "2"
    )

    assert out.strip().splitlines()[0] == (
        "prune_conversations: deleted 3 conversation(s) of alice and 18 message(s) older than 90d"
    )
    assert not Conversation.objects.filter(pk__in=[t.chat.pk for t in old]).exists()
    assert not Message.objects.filter(conversation__in=[t.chat.pk for t in old]).exists()
    # What is left is intact: every version, and the active path still ends where it did.
    assert set(Message.objects.values_list("pk", flat=True)) == recent.ids() | bobs_old.ids()
    for kept in (recent, bobs_old):
        kept.chat.refresh_from_db()
        assert kept.chat.current_leaf_id == kept.a2b.pk
        kept.a1b.refresh_from_db()
        assert kept.a1b.parent_id == kept.q1.pk


def test_prune_deletes_a_tree_whatever_its_leaf_points_at(alice: Any, persona: Persona) -> None:
    # An abandoned branch as the active leaf, and a conversation with no leaf at all: the
    # foreign keys between a conversation and its messages never stop the delete.
    on_old_branch = tree(alice, persona, title="on the old branch", days_old=100)
    Conversation.objects.filter(pk=on_old_branch.chat.pk).update(current_leaf=on_old_branch.a1)
    no_leaf = tree(alice, persona, title="no leaf", days_old=100)
    Conversation.objects.filter(pk=no_leaf.chat.pk).update(current_leaf=None)

    out, _ = run("prune_conversations", "--older-than", "90d")

    assert "deleted 2 conversation(s) and 12 message(s)" in out
    assert not Conversation.objects.exists()
    assert not Message.objects.exists()


def in_thread(work: Callable[[], Any]) -> tuple[threading.Thread, list[Any]]:
    """`work` on a thread of its own, so on a database connection of its own."""
    result: list[Any] = []

    def target() -> None:
        try:
            result.append(work())
        except BaseException as exc:  # reported to the test below
            result.append(exc)
        finally:
            connection.close()

    thread = threading.Thread(target=target, daemon=True)
    thread.start()
    return thread, result


@pytest.mark.django_db(transaction=True)
def test_prune_keeps_an_old_chat_that_a_reply_reaches_while_it_runs(
    alice: Any, persona: Persona
) -> None:
    doomed = tree(alice, persona, title="doomed", days_old=100)
    revived = tree(alice, persona, title="revived", days_old=100)
    written, release = threading.Event(), threading.Event()

    def late_reply() -> Message:
        # What reply_save does (the conversation's row first, then the reply), held open
        # until the prune is under way.
        with transaction.atomic():
            Conversation.objects.filter(pk=revived.chat.pk).update(
                updated_at=timezone.now(), current_leaf_id=None
            )
            message = Message.objects.create(
                conversation_id=revived.chat.pk,
                role=Message.Role.ASSISTANT,
                content="a reply saved late",
                parent_id=revived.q2b.pk,
            )
            written.set()
            release.wait(10)
        return message

    turn, saved = in_thread(late_reply)
    assert written.wait(10)
    prune, pruned = in_thread(lambda: conversations_prune(older_than=timedelta(days=90)))
    time.sleep(0.5)
    assert prune.is_alive()  # waiting for the turn, not deleting under it
    release.set()
    turn.join(10)
    prune.join(10)

    assert pruned == [PruneResult(conversations=1, messages=6, dry_run=False)]
    assert isinstance(saved[0], Message)
    assert not Conversation.objects.filter(pk=doomed.chat.pk).exists()
    kept = set(Message.objects.filter(conversation=revived.chat).values_list("pk", flat=True))
    assert kept == revived.ids() | {saved[0].pk}

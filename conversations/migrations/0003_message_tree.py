"""Conversations become trees: `parent` replaces `reply_to`, and each conversation names the
leaf of its active path. Existing conversations become single chains, as they were read."""

import django.db.models.deletion
from django.db import migrations, models

BATCH = 1000


def _check_now(schema_editor):
    # The schema changes that follow in this transaction cannot run while foreign-key
    # checks of the rows just written are still deferred (PostgreSQL's pending triggers).
    if schema_editor.connection.vendor == "postgresql":
        schema_editor.execute("SET CONSTRAINTS ALL IMMEDIATE")


def build_chains(apps, schema_editor):
    """A reply's parent is the message it answered (its `reply_to`). A user message's
    parent is the reply to the user message before it, so the chain reads as the page
    showed it, even where a reply was saved late (recovery after a worker died). Where the
    message before had no reply at all, the two become versions of one another.
    The active leaf is the newest user message's reply (or that message, unanswered)."""
    Message = apps.get_model("conversations", "Message")
    Conversation = apps.get_model("conversations", "Conversation")
    Message.objects.filter(role="assistant").update(parent_id=models.F("reply_to_id"))
    reply_of = dict(
        Message.objects.filter(role="assistant", reply_to__isnull=False)
        .order_by("created_at", "id")
        .values_list("reply_to_id", "id")
    )
    pending_messages = []
    pending_leaves = []
    current = None
    previous = None  # (id, parent_id) of the conversation's last user message so far
    users = (
        Message.objects.filter(role="user")
        .order_by("conversation_id", "created_at", "id")
        .values_list("id", "conversation_id")
    )

    def close(conversation_id, last):
        if conversation_id is not None and last is not None:
            leaf = reply_of.get(last[0], last[0])
            pending_leaves.append(Conversation(id=conversation_id, current_leaf_id=leaf))

    for message_id, conversation_id in users.iterator(chunk_size=BATCH):
        if conversation_id != current:
            close(current, previous)
            current, previous = conversation_id, None
        if previous is None:
            parent = None
        else:
            parent = reply_of.get(previous[0], previous[1])
        pending_messages.append(Message(id=message_id, parent_id=parent))
        previous = (message_id, parent)
        if len(pending_messages) >= BATCH:
            Message.objects.bulk_update(pending_messages, ["parent_id"])
            pending_messages.clear()
        if len(pending_leaves) >= BATCH:
            Conversation.objects.bulk_update(pending_leaves, ["current_leaf_id"])
            pending_leaves.clear()
    close(current, previous)
    Message.objects.bulk_update(pending_messages, ["parent_id"], batch_size=BATCH)
    Conversation.objects.bulk_update(pending_leaves, ["current_leaf_id"], batch_size=BATCH)
    _check_now(schema_editor)


def back_to_reply_to(apps, schema_editor):
    """Backwards: the first reply of each user message becomes its `reply_to`; later
    versions go, as the old schema cannot hold them."""
    Message = apps.get_model("conversations", "Message")
    first = {}
    for message_id, parent_id in (
        Message.objects.filter(role="assistant").order_by("created_at", "id").values_list("id", "parent_id")
    ):
        first.setdefault(parent_id, message_id)
    keep = set(first.values())
    Message.objects.filter(role="assistant").exclude(id__in=keep).delete()
    Message.objects.filter(role="assistant").update(reply_to_id=models.F("parent_id"))
    _check_now(schema_editor)


class Migration(migrations.Migration):
    dependencies = [
        ("conversations", "0002_message_owner"),
    ]

    operations = [
        migrations.AddField(
            model_name="message",
            name="parent",
            field=models.ForeignKey(
                blank=True,
                null=True,
                on_delete=django.db.models.deletion.CASCADE,
                related_name="children",
                to="conversations.message",
            ),
        ),
        migrations.AddField(
            model_name="conversation",
            name="current_leaf",
            field=models.ForeignKey(
                blank=True,
                null=True,
                on_delete=django.db.models.deletion.SET_NULL,
                related_name="+",
                to="conversations.message",
            ),
        ),
        migrations.AddField(
            model_name="message",
            name="rating",
            field=models.SmallIntegerField(blank=True, null=True),
        ),
        migrations.AddField(
            model_name="message",
            name="rating_comment",
            field=models.TextField(blank=True),
        ),
        migrations.AddField(
            model_name="message",
            name="rated_at",
            field=models.DateTimeField(blank=True, null=True),
        ),
        migrations.RunPython(build_chains, back_to_reply_to),
        migrations.RemoveConstraint(
            model_name="message",
            name="message_reply_to_only_assistant",
        ),
        migrations.RemoveField(
            model_name="message",
            name="reply_to",
        ),
        migrations.AddConstraint(
            model_name="message",
            constraint=models.CheckConstraint(
                condition=models.Q(("role", "user"), ("parent__isnull", False), _connector="OR"),
                name="message_reply_has_parent",
            ),
        ),
        migrations.AddConstraint(
            model_name="message",
            constraint=models.CheckConstraint(
                condition=models.Q(("rating__isnull", True), ("rating__in", [1, -1]), _connector="OR"),
                name="message_rating_values",
            ),
        ),
        migrations.AddIndex(
            model_name="message",
            index=models.Index(fields=["parent", "created_at"], name="message_parent_time"),
        ),
        migrations.AddIndex(
            model_name="message",
            index=models.Index(
                condition=models.Q(("rating__isnull", False)),
                fields=["rated_at"],
                name="message_rated",
            ),
        ),
    ]

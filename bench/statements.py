"""The SQL statements of one turn's two transactions, counted on the code that ships.

    DATABASE_URL=postgres://postgres@127.0.0.1:5432/statements_bench \\
        python -m bench.statements [--history 40] [--sql]

It prepares its own database (migrate, one persona, one user signed in, a conversation of
`--history` messages), then runs `turn_begin` as a socket does (its session checked) for a
new conversation and for the long one, `reply_save`,
and (where the code has it) `turn_regenerate`, each inside CaptureQueriesContext. Statements
include BEGIN-less savepoints and the COMMIT Django issues; they do not include the pool's
own checks. A turn's statement count must not grow with the conversation's length.
"""

from __future__ import annotations

import argparse
import os
import uuid
from typing import Any

from bench.prepare import django_setup, ensure_database


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--history", type=int, default=40, help="messages in the long chat")
    parser.add_argument("--sql", action="store_true", help="print each statement too")
    parser.add_argument(
        "--time",
        type=int,
        default=0,
        metavar="N",
        help="also time N turn_begin + reply_save pairs in the long conversation, 5 repeats",
    )
    args = parser.parse_args()
    ensure_database(os.environ["DATABASE_URL"])
    django_setup(pool=bool(args.time))  # timed as the worker runs: through Django's pool

    from django.contrib.auth import get_user_model
    from django.core.management import call_command
    from django.db import connection
    from django.test import Client
    from django.test.utils import CaptureQueriesContext

    from conversations import services
    from conversations.models import Conversation, Message
    from personas.models import Persona

    call_command("migrate", verbosity=0)
    Message.objects.all().delete()
    Conversation.objects.all().delete()
    Persona.objects.get_or_create(slug="bench", defaults={"name": "Bench", "is_default": True})
    user, _ = get_user_model().objects.get_or_create(username="statements-bench")
    signed_in = Client()
    signed_in.force_login(user, backend="django.contrib.auth.backends.ModelBackend")
    session_key = signed_in.session.session_key

    rows: list[tuple[str, list[str]]] = []

    def measure(label: str, call: Any) -> Any:
        with CaptureQueriesContext(connection) as captured:
            result = call()
        rows.append((label, [q["sql"] for q in captured.captured_queries]))
        return result

    def begin(conversation_id: uuid.UUID | None, content: str) -> Any:
        return services.turn_begin(
            user_id=user.id,
            conversation_id=conversation_id,
            persona_slug=None,
            content=content,
            client_id=uuid.uuid4(),
            history_limit=50,
            session_key=session_key,
        )

    def save(ctx: Any) -> Any:
        return services.reply_save(
            message_id=ctx.message_id,
            conversation_id=ctx.conversation_id,
            user_message_id=ctx.user_message_id,
            content="A reply.",
            status="complete",
            input_tokens=10,
            output_tokens=3,
            error="",
        )

    first = measure("turn_begin, new conversation", lambda: begin(None, "Hello"))
    measure("reply_save", lambda: save(first))
    ctx = first
    for index in range(args.history // 2):
        ctx = begin(first.conversation_id, f"message {index}")
        save(ctx)
    long = measure(
        f"turn_begin, conversation of {args.history + 2} messages",
        lambda: begin(first.conversation_id, "One more"),
    )
    assert len(long.history) > 0
    measure("reply_save (long conversation)", lambda: save(long))
    if hasattr(services, "turn_regenerate"):
        reply_id = long.message_id
        measure(
            "turn_regenerate",
            lambda: services.turn_regenerate(
                user_id=user.id,
                conversation_id=first.conversation_id,
                message_id=reply_id,
                client_id=uuid.uuid4(),
                history_limit=50,
                session_key=session_key,
            ),
        )
    if args.time:
        timed(args.time, lambda content: begin(first.conversation_id, content), save)
    width = max(len(label) for label, _ in rows)
    print(f"{'transaction':<{width}}  statements")
    for label, statements in rows:
        print(f"{label:<{width}}  {len(statements)}")
        if args.sql:
            for statement in statements:
                print(f"    {statement[:160]}")


def timed(count: int, begin: Any, save: Any) -> None:
    """turn_begin's wall time per call, as the worker makes it: each call takes a connection
    from Django's pool and gives it back (`conversations.db.released`, what `db_call` runs),
    so the pool's check counts. The median of each repeat, and the median and min-max of
    those. Each pair saves its reply, so the history keeps growing. Also the CPU a pair
    (turn_begin + reply_save) costs this process and the PostgreSQL backends of this
    database (read from /proc: a local server only). The session is the same on every call,
    as a socket's is."""
    import statistics
    import time

    from django.db import connection

    from conversations.db import released

    begin, save = released(begin), released(save)

    @released
    def backend_cpu() -> dict[int, float]:
        """CPU seconds of each client backend of this database (none: not a local server)."""
        with connection.cursor() as cursor:
            cursor.execute(
                "SELECT pid FROM pg_stat_activity"
                " WHERE datname = current_database() AND backend_type = 'client backend'"
            )
            pids = [row[0] for row in cursor.fetchall()]
        seconds = {}
        for pid in pids:
            try:
                with open(f"/proc/{pid}/stat") as stat:
                    fields = stat.read().rsplit(")", 1)[1].split()
            except OSError:
                continue  # not on this machine, or gone since
            seconds[pid] = (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
        return seconds

    repeats, clients, backends = [], [], []
    for repeat in range(5):
        times = []
        backend_before, client_before = backend_cpu(), time.process_time()
        for index in range(count):
            started = time.perf_counter()
            ctx = begin(f"timed {repeat}.{index}")
            times.append(time.perf_counter() - started)
            save(ctx)
        clients.append((time.process_time() - client_before) / count * 1e3)
        backend_after = backend_cpu()
        # Only backends there before and after: one that came or went would count as all
        # or none of its CPU.
        both = backend_before.keys() & backend_after.keys()
        if both:
            spent = sum(backend_after[pid] - backend_before[pid] for pid in both)
            backends.append(spent / count * 1e3)
        repeats.append(statistics.median(times) * 1e6)

    def spread(values: list[float], unit: str, digits: int) -> str:
        if not values:
            return "n/a (not a local server)"
        return (
            f"median {statistics.median(values):.{digits}f} {unit} "
            f"(repeats {min(values):.{digits}f}-{max(values):.{digits}f})"
        )

    print(f"turn_begin: {spread(repeats, 'µs per call', 0)}, {count} calls each")
    print(f"CPU per turn_begin + reply_save, this process: {spread(clients, 'ms', 2)}")
    print(f"CPU per turn_begin + reply_save, PostgreSQL backends: {spread(backends, 'ms', 2)}")


if __name__ == "__main__":
    main()

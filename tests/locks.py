"""Two transactions raced on PostgreSQL: one holds its locks while the other runs into them."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from django.db import connection, transaction


def waiting_on_a_lock() -> bool:
    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT count(*) FROM pg_stat_activity "
            "WHERE wait_event_type = 'Lock' AND datname = current_database()"
        )
        return bool(cursor.fetchone()[0])


@dataclass
class Race:
    held: Any  # what `hold` returned
    answer: Any  # what `then` returned
    waited: bool  # whether `then` was seen waiting on a lock before `hold` committed


def behind_a_lock(hold: Callable[[], Any], then: Callable[[], Any]) -> Race:
    """`hold()` in a transaction on one thread; while it is still open, `then()` on another.
    The first commits once the second waits on one of its locks (or after 30 s). Each
    thread's connection is closed; an exception in either is raised here."""
    holding, done = threading.Event(), threading.Event()
    results: dict[str, Any] = {}

    def run(name: str, work: Callable[[], Any], *, held: bool) -> None:
        try:
            if held:
                with transaction.atomic():
                    results[name] = work()
                    holding.set()
                    done.wait(30)
            else:
                results[name] = work()
        except BaseException as exc:
            results[f"{name} failed"] = exc
        finally:
            holding.set()  # a hold that failed lets the race end, not wait 30 s
            connection.close()

    holder = threading.Thread(target=run, args=("held", hold), kwargs={"held": True})
    holder.start()
    assert holding.wait(30)
    racer = threading.Thread(target=run, args=("answer", then), kwargs={"held": False})
    racer.start()
    deadline = time.monotonic() + 30
    while not (waited := waiting_on_a_lock()) and time.monotonic() < deadline:
        time.sleep(0.02)
    done.set()
    holder.join(30)
    racer.join(30)
    for name in ("held", "answer"):
        if f"{name} failed" in results:
            raise results[f"{name} failed"]
    return Race(results["held"], results["answer"], waited)

"""Pure prompt building: what the model is told, what history it sees, and how chats are named."""

from __future__ import annotations

import unicodedata
import uuid
from typing import Any

import pytest

from conversations.context import HistoryItem, PersonaInfo, ProfileInfo, TurnContext
from conversations.llm import ChatMessage
from conversations.prompts import build_request, system_instruction, trim_history
from conversations.text import one_line
from conversations.titles import TITLE_MAX_CHARS, clean_title, title_request
from conversations.titles_heuristic import title_from_message

PIRATE = PersonaInfo(
    slug="pirate",
    name="Captain Redbeard",
    description="Answers in pirate speak.",
    system_prompt="  You are a pirate. Answer in pirate speak.\n",
    avatar="🏴‍☠️",
    provider="",
    model="llama3.2",
    temperature=1.1,
)


def context(
    content: str = "Where is the treasure?",
    *,
    history: tuple[HistoryItem, ...] = (),
    display_name: str = "Alice",
    about: str = "I sail a small boat on weekends.",
    persona: PersonaInfo = PIRATE,
) -> TurnContext:
    return TurnContext(
        user_id=1,
        conversation_id=uuid.uuid4(),
        title=title_from_message(content),
        client_id=uuid.uuid4(),
        user_message_id=uuid.uuid4(),
        message_id=uuid.uuid4(),
        content=content,
        persona=persona,
        profile=ProfileInfo(display_name=display_name, about=about),
        history=history,
    )


def user(text: str) -> HistoryItem:
    return HistoryItem(role="user", content=text)


def assistant(text: str) -> HistoryItem:
    return HistoryItem(role="assistant", content=text)


# --- the system instruction ---------------------------------------------------------------


def test_system_instruction_holds_the_persona_prompt_and_the_profile() -> None:
    system = system_instruction(context())

    assert system.startswith("You are a pirate. Answer in pirate speak.")
    assert "The user's name is Alice." in system
    assert "I sail a small boat on weekends." in system
    assert system.index("pirate speak") < system.index("Alice")


def test_system_instruction_without_a_profile_is_the_persona_prompt() -> None:
    system = system_instruction(context(display_name="", about=""))

    assert system == "You are a pirate. Answer in pirate speak."


def test_system_instruction_with_only_the_about_text() -> None:
    system = system_instruction(context(display_name="", about="  Vegetarian.  "))

    assert "The user's name" not in system
    assert system.endswith("Vegetarian.")


def test_request_carries_persona_model_temperature_and_the_new_message_last() -> None:
    history = (user("Ahoy!"), assistant("Ahoy, matey!"))

    request = build_request(context("And the map?", history=history))

    assert request.model == "llama3.2"
    assert request.temperature == 1.1
    assert request.persona_name == "Captain Redbeard"
    assert request.user_name == "Alice"
    assert request.messages == (
        ChatMessage("user", "Ahoy!"),
        ChatMessage("assistant", "Ahoy, matey!"),
        ChatMessage("user", "And the map?"),
    )


# --- the history window -------------------------------------------------------------------

TURNS = (
    user("one " * 10),  # 40 characters each
    assistant("two " * 10),
    user("six " * 10),
    assistant("ten " * 10),
)


def test_history_within_the_budget_is_kept_whole() -> None:
    assert trim_history(TURNS, budget_chars=1000, newest_chars=100) == TURNS


def test_oldest_turns_are_dropped_first() -> None:
    # Room for the newest message (40) and two more items (80).
    kept = trim_history(TURNS, budget_chars=120, newest_chars=40)

    assert kept == TURNS[2:]


def test_history_never_starts_with_an_assistant_reply() -> None:
    # Room for three items, but the oldest of those is a reply whose question was dropped.
    kept = trim_history(TURNS, budget_chars=160, newest_chars=40)

    assert kept == TURNS[2:]
    assert kept[0].role == "user"


def test_a_newest_message_over_the_budget_leaves_no_history() -> None:
    assert trim_history(TURNS, budget_chars=100, newest_chars=5000) == ()


def test_trimming_stops_at_the_first_item_that_does_not_fit() -> None:
    # A long old message must not let even older short ones back in: no gaps in the history.
    history = (user("a"), assistant("b"), user("c" * 500), assistant("d"), user("e"))

    kept = trim_history(history, budget_chars=100, newest_chars=10)

    assert kept == (user("e"),)


def test_the_newest_message_and_the_system_prompt_always_reach_the_model(settings: Any) -> None:
    settings.HISTORY_MAX_CHARS = 200
    newest = "What now? " * 100  # 1000 characters, five times the budget
    history = tuple(
        item for i in range(20) for item in (user(f"question {i}"), assistant(f"answer {i}"))
    )

    request = build_request(context(newest, history=history))

    assert request.system.startswith("You are a pirate.")
    assert request.messages == (ChatMessage("user", newest),)


def test_a_small_budget_keeps_the_latest_complete_turns(settings: Any) -> None:
    settings.HISTORY_MAX_CHARS = 45
    history = tuple(
        item for i in range(10) for item in (user(f"question {i}"), assistant(f"answer {i}"))
    )

    request = build_request(context("last?", history=history))

    contents = [m.content for m in request.messages]
    assert contents[-1] == "last?"
    assert contents[0].startswith("question")
    assert contents[:-1] == ["question 8", "answer 8", "question 9", "answer 9"]


# --- heuristic titles ---------------------------------------------------------------------


@pytest.mark.parametrize(
    ("content", "title"),
    [
        ("Plan a trip to Lisbon", "Plan a trip to Lisbon"),
        ("   Plan   a trip\tto Lisbon  ", "Plan a trip to Lisbon"),
        ("Plan a trip to Lisbon\nwith three children and a dog", "Plan a trip to Lisbon"),
        ("\n\n  First real line\nsecond", "First real line"),
        ("", "New chat"),
        ("   \n  ", "New chat"),
        ('"Quoted question?"', '"Quoted question?"'),
        # A title shows to others (share pages): no override turns its line around.
        ("Pay invoice\u202efdp.exe today\u2069", "Pay invoicefdp.exe today"),
        ("\u200b\u200b\nsecond line", "second line"),
    ],
)
def test_heuristic_title(content: str, title: str) -> None:
    assert title_from_message(content) == title


def test_a_title_keeps_every_character_but_controls_and_bidi_overrides() -> None:
    """Each character of the Basic Multilingual Plane between two letters: a control
    character (Unicode's category Cc) or a bidirectional override is dropped, whitespace
    becomes one space, anything else stays, as a title shows it to its owner and on a share."""
    overrides = {*range(0x202A, 0x202F), *range(0x2066, 0x206A)}
    for code in range(0x10000):
        character = chr(code)
        if character.isspace():
            expected = "x y"
        elif unicodedata.category(character) == "Cc" or code in overrides:
            expected = "xy"
        else:
            expected = f"x{character}y"
        assert one_line(f"x{character}y") == expected, hex(code)


def test_heuristic_title_of_a_huge_message_is_cut_at_a_word() -> None:
    content = "Tell me everything about the history of sailing ships, " * 400

    title = title_from_message(content)

    assert len(title) <= 61
    assert title.endswith("…")
    assert content.startswith(title.removesuffix("…"))
    assert not title.removesuffix("…").endswith((" ", ","))


def test_heuristic_title_of_one_endless_word_is_cut_hard() -> None:
    title = title_from_message("x" * 5000)

    assert title == "x" * 60 + "…"


@pytest.mark.parametrize(
    ("content", "title"),
    [
        ("# Packing list for Lisbon\n- socks", "Packing list for Lisbon"),
        ("> Quoted error message here", "Quoted error message here"),
        ("```python\nprint('why does this fail?')\n```", "print('why does this fail?')"),
    ],
)
def test_heuristic_title_drops_markdown_markup(content: str, title: str) -> None:
    assert title_from_message(content) == title


# --- generated titles ---------------------------------------------------------------------


@pytest.mark.parametrize(
    ("answer", "title"),
    [
        ("Buried Treasure on Skull Island", "Buried Treasure on Skull Island"),
        ("Buried Treasure on Skull Island.", "Buried Treasure on Skull Island"),
        ('"Buried Treasure on Skull Island"', "Buried Treasure on Skull Island"),
        ("'Buried Treasure'", "Buried Treasure"),
        ("`Buried Treasure`", "Buried Treasure"),
        ("# Buried Treasure", "Buried Treasure"),
        ("## **Buried Treasure**", "Buried Treasure"),
        ('**"Buried Treasure."**', "Buried Treasure"),
        ("*Buried Treasure*", "Buried Treasure"),
        ("Title: Buried Treasure", "Buried Treasure"),
        ("\n\n  Buried   Treasure  \nHere is why I chose it.", "Buried Treasure"),
        ("", ""),
        ("   \n\n ", ""),
        ('""', ""),
        ("Title:", ""),
        ("**", ""),
        ("Buried\u202e Treasure\u0007", "Buried Treasure"),
        ("\u200b\u2060", ""),
    ],
)
def test_clean_title(answer: str, title: str) -> None:
    assert clean_title(answer) == title


@pytest.mark.parametrize(
    ("answer", "title"),
    [
        ("**Title:** Buried Treasure", "Buried Treasure"),
        ('Title: "Buried Treasure"', "Buried Treasure"),
        ('"Buried Treasure".', "Buried Treasure"),
        ("title: Buried Treasure", "Buried Treasure"),
    ],
)
def test_clean_title_removes_markup_around_a_title_prefix(answer: str, title: str) -> None:
    assert clean_title(answer) == title


def test_clean_title_of_a_huge_answer_is_bounded() -> None:
    title = clean_title("Buried treasure " * 200)

    assert 0 < len(title) <= TITLE_MAX_CHARS
    assert title == title.strip()
    assert title.startswith("Buried treasure")


def test_title_request_asks_briefly_about_the_first_message_only() -> None:
    ctx = context("Where is the treasure? " * 500, history=(user("old"), assistant("older")))

    request = title_request(ctx)

    assert request.purpose == "title"
    assert request.model == "llama3.2"
    assert [m.role for m in request.messages] == ["user"]
    assert len(request.messages[0].content) <= 2000
    assert "Alice" not in request.system

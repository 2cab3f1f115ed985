"""The provider system check: a broken default provider is reported before the first reply."""

from __future__ import annotations

from typing import Any

from django.core import checks

from conversations.checks import check_llm_providers, provider_problems


def test_the_offline_demo_needs_nothing(settings: Any) -> None:
    settings.LLM_PROVIDER = "demo"

    assert provider_problems() == {}
    assert check_llm_providers() == []


def test_default_provider_without_its_key_is_an_error(settings: Any) -> None:
    settings.LLM_PROVIDER = "gemini"
    settings.GEMINI_API_KEY = ""

    [message] = check_llm_providers()

    assert message.level == checks.ERROR
    assert message.id == "conversations.E001"
    assert "GEMINI_API_KEY" in message.msg


def test_unknown_default_provider_is_an_error(settings: Any) -> None:
    settings.LLM_PROVIDER = "claude"

    [message] = check_llm_providers()

    assert message.level == checks.ERROR
    assert "Unknown LLM provider 'claude'" in message.msg


def test_problems_are_listed_per_provider(settings: Any) -> None:
    settings.GEMINI_API_KEY = "some-key"
    settings.OPENAI_API_KEY = ""
    settings.OPENAI_BASE_URL = ""

    problems = provider_problems(["demo", "gemini", "openai", "openai"])

    assert list(problems) == ["openai"]
    assert "OPENAI_API_KEY" in problems["openai"]


def test_the_check_is_registered() -> None:
    assert check_llm_providers in checks.registry.registry.get_checks()


def test_startup_checks_stay_off_the_database(settings: Any) -> None:
    settings.LLM_PROVIDER = "openai"
    settings.OPENAI_API_KEY = ""
    settings.OPENAI_BASE_URL = ""

    # pytest-django blocks database access here: this passes only if nothing is queried.
    messages = check_llm_providers(databases=None)

    assert [message.id for message in messages] == ["conversations.E001"]

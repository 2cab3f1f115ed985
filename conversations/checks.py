"""System checks: a misconfigured model provider is reported at startup, not at the first reply."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

from django.apps import AppConfig
from django.conf import settings
from django.core.checks import CheckMessage, Error, Warning, register
from django.db import DEFAULT_DB_ALIAS, DatabaseError

from conversations.llm import ProviderError, get_provider


def provider_problems(names: Iterable[str] = ()) -> dict[str, str]:
    """Provider name -> what is wrong with it, for `names` or else the default provider.

    Needs no database, so /readyz can call it.
    """
    chosen = list(names) or [settings.LLM_PROVIDER]
    problems: dict[str, str] = {}
    for name in dict.fromkeys(chosen):
        try:
            problem = get_provider(name).configuration_error()
        except ProviderError as exc:
            problem = exc.message
        if problem:
            problems[name] = problem
    return problems


@register()
def check_llm_providers(
    app_configs: Sequence[AppConfig] | None = None,
    databases: Sequence[str] | None = None,
    **kwargs: Any,
) -> list[CheckMessage]:
    messages: list[CheckMessage] = [
        Error(
            f"The default LLM provider {name!r} cannot be used: {problem}",
            hint="Fix the setting named above, or set LLM_PROVIDER=demo to run offline.",
            id="conversations.E001",
        )
        for name, problem in provider_problems().items()
    ]
    # Django passes `databases` only where checks may query (migrate, check --database):
    # plain startup checks stay free of database access.
    if databases and DEFAULT_DB_ALIAS in databases:
        messages.extend(_persona_warnings())
    return messages


def _persona_warnings() -> list[CheckMessage]:
    from personas.models import Persona

    try:
        rows = list(
            Persona.objects.filter(is_active=True)
            .exclude(provider="")
            .values_list("slug", "provider")
        )
    except DatabaseError:
        # Before the first migrate the table does not exist yet; nothing to check then.
        return []
    problems = provider_problems(provider for _, provider in rows)
    return [
        Warning(
            f"Persona {slug!r} uses the LLM provider {provider!r}, which cannot be used: "
            f"{problems[provider]}",
            hint="Fix the provider's settings, or pick another provider for this persona in admin.",
            obj=slug,
            id="conversations.W001",
        )
        for slug, provider in rows
        if provider in problems
    ]

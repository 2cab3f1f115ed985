from __future__ import annotations

import re
import uuid
from typing import Any

from django import forms
from django.contrib import admin, messages
from django.contrib.admin.actions import delete_selected as django_delete_selected
from django.contrib.admin.utils import unquote
from django.db.models import Count, ProtectedError, QuerySet
from django.http import HttpRequest, HttpResponse, HttpResponseRedirect
from django.urls import reverse
from django.utils.html import format_html

from conversations.checks import provider_problems
from conversations.context import PersonaInfo, ProfileInfo, TurnContext
from conversations.prompts import system_instruction
from personas.models import Persona

# Lowercase words joined by single hyphens: the slug travels in URLs, API answers and
# `chat.send` frames, where "Pirate_" and "pirate" would be two personas to a client.
SLUG_PATTERN = re.compile(r"^[a-z0-9]+(?:-[a-z0-9]+)*$")

# The profile the prompt preview is shown for: what a typical user tells us about themselves.
SAMPLE_PROFILE = ProfileInfo(
    display_name="Sam",
    about="I am a nurse learning Python in the evenings. I like short answers with examples.",
)


def prompt_preview_text(persona: Persona, profile: ProfileInfo = SAMPLE_PROFILE) -> str:
    """The system instruction the model gets for this persona, built by the turn's own code."""
    ctx = TurnContext(
        user_id=0,
        conversation_id=uuid.UUID(int=0),
        conversation_created=True,
        title="",
        client_id=uuid.UUID(int=0),
        user_message_id=uuid.UUID(int=0),
        message_id=uuid.UUID(int=0),
        content="",
        persona=PersonaInfo(
            slug=persona.slug,
            name=persona.name,
            description=persona.description,
            system_prompt=persona.system_prompt or "",
            avatar=persona.avatar,
            provider=persona.provider,
            model=persona.model,
            temperature=persona.temperature,
        ),
        profile=profile,
        history=(),
    )
    return system_instruction(ctx)


class PersonaForm(forms.ModelForm):
    class Meta:
        model = Persona
        fields = "__all__"  # noqa: DJ007  (every field is an admin's to edit)

    def clean_slug(self) -> str:
        slug: str = self.cleaned_data["slug"]
        if not SLUG_PATTERN.match(slug):
            raise forms.ValidationError(
                "Use lowercase letters, digits and single hyphens, e.g. “code-reviewer”."
            )
        return slug

    def clean(self) -> dict[str, Any]:
        cleaned: dict[str, Any] = super().clean() or {}
        if cleaned.get("is_default") and not cleaned.get("is_active", True):
            self.add_error("is_active", "The default persona must be active.")
        return cleaned


def _unused_copy_slug(slug: str) -> str:
    base = f"{slug[:40]}-copy"
    candidate, n = base, 2
    while Persona.objects.filter(slug=candidate).exists():
        candidate, n = f"{base}-{n}", n + 1
    return candidate


@admin.register(Persona)
class PersonaAdmin(admin.ModelAdmin):
    form = PersonaForm
    list_display = [
        "avatar",
        "name",
        "slug",
        "is_active",
        "is_default",
        "provider_shown",
        "model_shown",
        "conversation_count",
        "order",
    ]
    list_display_links = ["avatar", "name"]
    list_editable = ["order"]
    list_filter = ["is_active", "is_default", "provider"]
    search_fields = ["name", "slug", "description", "system_prompt"]
    readonly_fields = ["prompt_preview", "created_at", "updated_at"]
    actions = ["activate", "deactivate", "duplicate", "delete_selected"]
    fieldsets = [
        (None, {"fields": ["name", "slug", "avatar", "description", "order"]}),
        ("Behaviour", {"fields": ["system_prompt", "prompt_preview"]}),
        ("Model", {"fields": ["provider", "model", "temperature"]}),
        ("Availability", {"fields": ["is_active", "is_default", "created_at", "updated_at"]}),
    ]
    prepopulated_fields = {"slug": ["name"]}

    def get_queryset(self, request: HttpRequest) -> QuerySet[Persona]:
        # One query for the list instead of one count per row.
        return super().get_queryset(request).annotate(conversations_total=Count("conversations"))

    @admin.display(description="conversations", ordering="conversations_total")
    def conversation_count(self, persona: Persona) -> int:
        return int(getattr(persona, "conversations_total", 0))

    @admin.display(description="provider", ordering="provider")
    def provider_shown(self, persona: Persona) -> str:
        return persona.provider or "default"

    @admin.display(description="model", ordering="model")
    def model_shown(self, persona: Persona) -> str:
        return persona.model or "provider's default"

    @admin.display(description="System prompt as a user gets it")
    def prompt_preview(self, persona: Persona) -> str:
        if not persona.pk:
            return "Save the persona to see the full prompt."
        problems = provider_problems([persona.provider] if persona.provider else [])
        warning = (
            format_html(
                '<p class="errornote">Provider problem: {}</p>', "; ".join(problems.values())
            )
            if problems
            else ""
        )
        # format_html escapes the prompt: persona text is data, never markup.
        return format_html(
            "{}<p>For a sample user named {} who wrote about themselves: “{}”</p>"
            '<pre style="white-space: pre-wrap; max-width: 60em">{}</pre>',
            warning,
            SAMPLE_PROFILE.display_name,
            SAMPLE_PROFILE.about,
            prompt_preview_text(persona),
        )

    # --- actions ------------------------------------------------------------------------

    @admin.action(description="Activate selected personas", permissions=["change"])
    def activate(self, request: HttpRequest, queryset: QuerySet[Persona]) -> None:
        updated = queryset.filter(is_active=False).update(is_active=True)
        self.message_user(request, f"{updated} persona(s) activated.", messages.SUCCESS)

    @admin.action(description="Deactivate selected personas", permissions=["change"])
    def deactivate(self, request: HttpRequest, queryset: QuerySet[Persona]) -> None:
        # New chats fall back to the default persona, so it must stay active.
        defaults = list(queryset.filter(is_default=True).values_list("name", flat=True))
        updated = queryset.filter(is_active=True, is_default=False).update(is_active=False)
        self.message_user(request, f"{updated} persona(s) deactivated.", messages.SUCCESS)
        if defaults:
            self.message_user(
                request,
                f"Kept {', '.join(defaults)} active: it is the default persona. "
                "Make another persona the default first.",
                messages.WARNING,
            )

    @admin.action(description="Duplicate selected personas", permissions=["add"])
    def duplicate(self, request: HttpRequest, queryset: QuerySet[Persona]) -> None:
        copies = []
        for persona in queryset.order_by("pk"):
            persona.pk = None
            persona._state.adding = True
            persona.slug = _unused_copy_slug(persona.slug)
            persona.name = f"{persona.name} (copy)"[:80]
            # A copy starts hidden, so users never see a half-edited persona.
            persona.is_default = False
            persona.is_active = False
            persona.save()
            copies.append(persona.slug)
        self.message_user(
            request,
            f"Created {len(copies)} inactive cop{'y' if len(copies) == 1 else 'ies'}: "
            f"{', '.join(copies)}. Edit, then activate.",
            messages.SUCCESS,
        )

    @admin.action(description="Delete selected personas", permissions=["delete"])
    def delete_selected(
        self, request: HttpRequest, queryset: QuerySet[Persona]
    ) -> HttpResponse | None:
        in_use = [
            f"{name} ({used} conversations)"
            for name, used in queryset.annotate(used=Count("conversations"))
            .filter(used__gt=0)
            .values_list("name", "used")
        ]
        if in_use:
            self.message_user(request, self._in_use_message(", ".join(in_use)), messages.ERROR)
            return None
        try:
            response: HttpResponse | None = django_delete_selected(self, request, queryset)
        except ProtectedError:
            # A conversation was started between the check above and the delete.
            self.message_user(request, self._in_use_message("A selected persona"), messages.ERROR)
            return None
        return response

    # --- deleting one -------------------------------------------------------------------

    def delete_view(
        self, request: HttpRequest, object_id: str, extra_context: dict[str, Any] | None = None
    ) -> HttpResponse:
        persona = self.get_object(request, unquote(object_id))
        if persona is not None and (used := persona.conversations.count()):
            return self._refuse_delete(request, persona, f"{persona.name} ({used} conversations)")
        try:
            return super().delete_view(request, object_id, extra_context)
        except ProtectedError:
            assert persona is not None
            return self._refuse_delete(request, persona, persona.name)

    def _refuse_delete(self, request: HttpRequest, persona: Persona, what: str) -> HttpResponse:
        self.message_user(request, self._in_use_message(what), messages.ERROR)
        return HttpResponseRedirect(
            reverse(
                "admin:personas_persona_change", args=[persona.pk], current_app=self.admin_site.name
            )
        )

    @staticmethod
    def _in_use_message(what: str) -> str:
        return (
            f"Cannot delete {what}: conversations use it, and deleting it would lose their "
            "history. Deactivate it instead: new chats stop offering it, existing chats "
            "keep working."
        )

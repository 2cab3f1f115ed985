from __future__ import annotations

import re
import uuid
from datetime import datetime, timedelta
from typing import Any

from django import forms
from django.contrib import admin, messages
from django.contrib.admin.actions import delete_selected as django_delete_selected
from django.contrib.admin.utils import unquote
from django.db.models import Count, IntegerField, OuterRef, ProtectedError, QuerySet, Subquery
from django.db.models.functions import Coalesce
from django.http import HttpRequest, HttpResponse, HttpResponseRedirect
from django.urls import reverse
from django.utils import timezone
from django.utils.html import format_html, format_html_join
from django.utils.safestring import SafeString

from conversations.checks import provider_problems
from conversations.context import PersonaInfo, ProfileInfo, TurnContext
from conversations.models import Message
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


# --- ratings ----------------------------------------------------------------------------

RATING_WINDOWS = (7, 30)  # days, by rated_at
LATEST_COMMENTS = 10


def _rating_count(rating: int, since: datetime) -> Coalesce:
    # A correlated subquery per column rather than a join: joining every rated message into
    # the list would multiply the conversation counts, and each of these can read its window
    # from the `message_rated` partial index.
    rated = (
        Message.objects.filter(
            conversation__persona=OuterRef("pk"), rating=rating, rated_at__gte=since
        )
        .order_by()
        .values("conversation__persona")
        .annotate(n=Count("pk"))
        .values("n")
    )
    return Coalesce(Subquery(rated, output_field=IntegerField()), 0)


def ratings_annotate(queryset: QuerySet[Persona], now: datetime) -> QuerySet[Persona]:
    """Adds `up_7`, `down_7`, `up_30`, `down_30`: 👍 / 👎 counts rated in the last N days."""
    return queryset.annotate(
        **{
            f"{name}_{days}": _rating_count(value, now - timedelta(days=days))
            for days in RATING_WINDOWS
            for name, value in (("up", 1), ("down", -1))
        }
    )


def rating_summary(up: int, down: int) -> str:
    """Like "3 👍 / 1 👎 · 75% 👍", or "no ratings": a ratio of nothing is not 0%."""
    if not up + down:
        return "no ratings"
    return f"{up} 👍 / {down} 👎 · {round(100 * up / (up + down))}% 👍"


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
        "groups_shown",
        "conversation_count",
        "ratings_7",
        "ratings_30",
        "order",
    ]
    list_display_links = ["avatar", "name"]
    list_editable = ["order"]
    list_filter = ["is_active", "is_default", "provider", "groups"]
    search_fields = ["name", "slug", "description", "system_prompt"]
    readonly_fields = [
        "prompt_preview",
        "created_at",
        "updated_at",
        "ratings_7",
        "ratings_30",
        "latest_comments",
    ]
    actions = ["activate", "deactivate", "duplicate", "delete_selected"]
    fieldsets = [
        (None, {"fields": ["name", "slug", "avatar", "description", "order"]}),
        ("Behaviour", {"fields": ["system_prompt", "prompt_preview"]}),
        ("Model", {"fields": ["provider", "model", "temperature"]}),
        (
            "Availability",
            {
                "fields": ["is_active", "is_default", "groups", "created_at", "updated_at"],
                "description": "Limit the persona to groups: only their members see it and may "
                "chat with it. No groups: everyone may.",
            },
        ),
        ("Ratings", {"fields": ["ratings_7", "ratings_30", "latest_comments"]}),
    ]
    prepopulated_fields = {"slug": ["name"]}
    filter_horizontal = ["groups"]

    def get_queryset(self, request: HttpRequest) -> QuerySet[Persona]:
        # One query for the list instead of one count per row; the change page reads its
        # object through this too, so it gets the same rating counts.
        queryset = (
            super()
            .get_queryset(request)
            .annotate(conversations_total=Count("conversations"))
            .prefetch_related("groups")
        )
        return ratings_annotate(queryset, timezone.now())

    @admin.display(description="conversations", ordering="conversations_total")
    def conversation_count(self, persona: Persona) -> int:
        return int(getattr(persona, "conversations_total", 0))

    @admin.display(description="ratings, 7 days")
    def ratings_7(self, persona: Persona) -> str:
        return self._ratings(persona, 7)

    @admin.display(description="ratings, 30 days")
    def ratings_30(self, persona: Persona) -> str:
        return self._ratings(persona, 30)

    @staticmethod
    def _ratings(persona: Persona, days: int) -> str:
        if not persona.pk:
            return "no ratings"
        return rating_summary(
            int(getattr(persona, f"up_{days}", 0)), int(getattr(persona, f"down_{days}", 0))
        )

    @admin.display(description=f"latest {LATEST_COMMENTS} comments")
    def latest_comments(self, persona: Persona) -> SafeString | str:
        if not persona.pk:
            return "none yet"
        comments = (
            Message.objects.filter(conversation__persona=persona, rating__isnull=False)
            .exclude(rating_comment="")
            .select_related("conversation")
            .order_by("-rated_at")[:LATEST_COMMENTS]
        )
        # format_html escapes each comment and title: users wrote them.
        items = format_html_join(
            "",
            '<li>{} <q>{}</q> <span class="quiet">{} · <a href="{}">{}</a></span></li>',
            (
                (
                    "👍" if message.rating == 1 else "👎",
                    message.rating_comment,
                    timezone.localtime(message.rated_at).strftime("%Y-%m-%d %H:%M")
                    if message.rated_at
                    else "",
                    reverse(
                        "admin:conversations_conversation_change",
                        args=[message.conversation_id],
                        current_app=self.admin_site.name,
                    ),
                    message.conversation,
                )
                for message in comments
            ),
        )
        return format_html('<ul class="rating-comments">{}</ul>', items) if items else "none yet"

    @admin.display(description="available to")
    def groups_shown(self, persona: Persona) -> str:
        names = sorted(group.name for group in persona.groups.all())
        return ", ".join(names) if names else "everyone"

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
        for persona in queryset.order_by("pk").prefetch_related("groups"):
            # A copy of a persona limited to groups stays limited to them: activating it
            # must not open it to everyone.
            groups = list(persona.groups.all())
            persona.pk = None
            persona._state.adding = True
            persona.slug = _unused_copy_slug(persona.slug)
            persona.name = f"{persona.name} (copy)"[:80]
            # A copy starts hidden, so users never see a half-edited persona.
            persona.is_default = False
            persona.is_active = False
            persona.save()
            # add(), not set(): set() would compare with the original's prefetched groups.
            persona.groups.add(*groups)
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
            "history. Deactivate it instead: new chats stop offering it, and its "
            "conversations stay readable but can no longer go on."
        )

from __future__ import annotations

from django.core.validators import MaxValueValidator, MinValueValidator
from django.db import models
from django.db.models import Exists, OuterRef, Q


class Provider(models.TextChoices):
    DEFAULT = "", "Default (LLM_PROVIDER)"
    DEMO = "demo", "Demo (offline)"
    GEMINI = "gemini", "Google Gemini"
    OPENAI = "openai", "OpenAI-compatible"


class PersonaQuerySet(models.QuerySet["Persona"]):
    def usable_by(self, user_id: int) -> PersonaQuerySet:
        """Active personas open to everyone (no groups) or to one of the user's groups."""
        return self.filter(is_active=True).filter(usable_expression(user_id))


def usable_expression(user_id: int, persona: str = "pk") -> Q:
    """True where the persona at `persona` (a path from the queried model) has no groups, or
    one the user belongs to: one expression, so a check costs no round trip of its own."""
    through = Persona.groups.through
    limited = Exists(through.objects.filter(persona_id=OuterRef(persona)))
    member = Exists(through.objects.filter(persona_id=OuterRef(persona), group__user__id=user_id))
    return ~Q(limited) | Q(member)


class Persona(models.Model):
    slug = models.SlugField(max_length=50, unique=True)
    name = models.CharField(max_length=80)
    description = models.CharField(max_length=280, blank=True)
    system_prompt = models.TextField()
    avatar = models.CharField(max_length=16, default="🤖", help_text="An emoji is enough.")
    provider = models.CharField(max_length=20, choices=Provider.choices, blank=True, default="")
    model = models.CharField(max_length=100, blank=True, help_text="Empty: the provider's default.")
    temperature = models.FloatField(
        default=0.7, validators=[MinValueValidator(0.0), MaxValueValidator(2.0)]
    )
    accepts_images = models.BooleanField(
        default=True,
        help_text="Whether this persona's model can read images. Off: messages with images "
        "are refused before the turn starts, with a clear reason.",
    )
    is_active = models.BooleanField(default=True)
    is_default = models.BooleanField(default=False)
    groups = models.ManyToManyField(
        "auth.Group",
        blank=True,
        related_name="personas",
        help_text="Only members of these groups may use this persona. None: everyone.",
    )
    order = models.PositiveIntegerField(default=0)
    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)

    objects = PersonaQuerySet.as_manager()

    class Meta:
        ordering = ["order", "name"]
        constraints = [
            models.UniqueConstraint(
                fields=["is_default"],
                condition=Q(is_default=True),
                name="persona_single_default",
                violation_error_message="Only one persona can be the default.",
            ),
            models.CheckConstraint(
                condition=Q(temperature__gte=0.0) & Q(temperature__lte=2.0),
                name="persona_temperature_range",
            ),
        ]
        indexes = [models.Index(fields=["is_active", "order"], name="persona_active_order")]

    def __str__(self) -> str:
        return self.name

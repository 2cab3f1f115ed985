from __future__ import annotations

from django import forms

from accounts.models import Profile
from conversations.text import one_line, visible


class ProfileForm(forms.ModelForm):
    class Meta:
        model = Profile
        fields = ["display_name", "about"]
        labels = {"display_name": "Display name", "about": "About you"}
        help_texts = {
            "display_name": "How the assistant addresses you.",
        }
        widgets = {"about": forms.Textarea(attrs={"rows": 6})}

    def clean_display_name(self) -> str:
        """One line, as every prompt and the page show it: no control characters or
        bidirectional overrides (conversations/text.py), and not only invisible ones."""
        name = one_line(self.cleaned_data["display_name"])
        if name and not visible(name):
            raise forms.ValidationError("The display name must show at least one character.")
        return name

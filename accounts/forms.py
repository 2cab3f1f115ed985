from __future__ import annotations

from django import forms

from accounts.models import Profile


class ProfileForm(forms.ModelForm):
    class Meta:
        model = Profile
        fields = ["display_name", "about"]
        labels = {"display_name": "Display name", "about": "About you"}
        help_texts = {
            "display_name": "How the assistant addresses you.",
        }
        widgets = {"about": forms.Textarea(attrs={"rows": 6})}

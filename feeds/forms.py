from __future__ import annotations

from typing import Any

from django import forms

from feeds.models import AppCredential, Creator


class MemberChoicesForm(forms.Form):
    personalise = forms.BooleanField(
        required=False,
        label="Personalise my feed",
        help_text="Off: you get the community's feed, the same for everyone.",
    )
    train_on_my_data = forms.BooleanField(
        required=False,
        label="Let my activity train the model",
        help_text="Off: your activity is left out when the model learns; you still get a feed.",
    )
    muted_creators = forms.ModelMultipleChoiceField(
        queryset=Creator.objects.none(),
        required=False,
        widget=forms.CheckboxSelectMultiple,
        label="Never show me these creators",
        help_text="Creators of what you engaged with and of what your feed shows you now.",
    )
    muted_tags = forms.CharField(
        required=False,
        max_length=2000,
        label="Never show me items tagged",
        help_text="Comma-separated, e.g. politics, horror.",
    )

    def __init__(self, *args: Any, creators: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.fields["muted_creators"].queryset = creators

    def clean_muted_tags(self) -> list[str]:
        raw: str = self.cleaned_data["muted_tags"]
        tags = [t.strip() for t in raw.split(",") if t.strip()]
        too_long = [t for t in tags if len(t) > 64]
        if too_long:
            raise forms.ValidationError(f"Tags are at most 64 characters: {too_long[0][:20]}…")
        return tags


class DataDeletionForm(forms.Form):
    confirm = forms.BooleanField(
        required=True, label="Yes, delete all my activity in this community"
    )


class AppCredentialForm(forms.Form):
    name = forms.CharField(
        max_length=100, help_text="Which app this is for, e.g. 'mobile app'. Unique while active."
    )
    scopes = forms.MultipleChoiceField(
        choices=AppCredential.Scope.choices,
        widget=forms.CheckboxSelectMultiple,
        help_text="Give an app only what it needs.",
    )

"""The admin's forms: replay (against another model) and edit-and-replay.

The edit form validates the edited body against the operation's schema, as the gateway would,
so a mistake is shown beside the field instead of as a failed replay.
"""

import orjson
from django import forms
from django.utils.translation import gettext_lazy as _

from openai_django.admin import render
from openai_django.models import Artifact


class ReplayForm(forms.Form):
    model = forms.CharField(
        label=_("Run against model"), required=False, max_length=200,
        help_text=_("Leave empty to send the request as it was."),
        widget=forms.TextInput(attrs={"list": "od-known-models", "autocomplete": "off"}),
    )


class ReplayEditForm(forms.Form):
    """The original request, editable, with the original files re-attached unless replaced."""

    model = forms.CharField(label=_("Model"), required=False, max_length=200,
                            widget=forms.TextInput(attrs={"list": "od-known-models",
                                                          "autocomplete": "off"}))
    body = forms.CharField(
        label=_("Request body (JSON)"),
        widget=forms.Textarea(attrs={"rows": 24, "class": "od-json", "spellcheck": "false"}),
    )

    def __init__(self, *args, call, **kwargs):
        super().__init__(*args, **kwargs)
        self.call = call
        self.operation = call.operation_spec
        self.file_fields = list(self.operation.file_fields) if self.operation else []
        for field in self.file_fields:
            self.fields[f"file_{field}"] = forms.FileField(
                label=_("Replace %s") % field, required=False,
                help_text=_("Leave empty to send the original file again."))

    def clean_body(self):
        try:
            body = orjson.loads(self.cleaned_data["body"])
        except orjson.JSONDecodeError as exc:
            raise forms.ValidationError(_("This is not valid JSON: %s") % exc) from None
        if not isinstance(body, dict):
            raise forms.ValidationError(_("The request body must be a JSON object."))
        return body

    def clean(self):
        from openai_django.errors import InvalidRequest
        from openai_django.validation import validate_form, validate_json

        cleaned = super().clean()
        body = cleaned.get("body")
        if body is None:
            return cleaned
        model = (cleaned.get("model") or "").strip()
        if model:
            body["model"] = model
        files = {name: upload for name in self.file_fields
                 if (upload := cleaned.get(f"file_{name}"))}
        cleaned["files"] = files
        op = self.operation
        try:
            if op.is_multipart:
                body = {k: v if isinstance(v, (str, list)) else render.pretty_scalar(v)
                        for k, v in body.items()}
                cleaned["body"] = body
                present = {a.field: a for a in self.call.artifacts.filter(
                    role__in=Artifact.INPUT_ROLES, purged_at__isnull=True).exclude(file="")}
                present.update(files)
                validate_form(op, body, present)
            else:
                validate_json(op, body)
        except InvalidRequest as exc:
            where = f" ({exc.param})" if exc.param else ""
            raise forms.ValidationError(f"{exc.message}{where}") from None
        return cleaned

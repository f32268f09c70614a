"""Client keys in the admin: create (the secret is shown once), name, revoke, last used.

Only a hash of a key is stored, so the secret can be shown exactly once: on the page that
answers the "add" form, which is never cached and never goes through the messages framework
(messages may be stored in a cookie). Everywhere else a key is its prefix and last four
characters. Keys are revoked, not deleted, so the calls made with them keep their attribution.
"""

from types import MappingProxyType

from django import forms
from django.contrib import admin, messages
from django.contrib.admin.utils import unquote
from django.core.exceptions import PermissionDenied
from django.http import Http404, HttpResponseRedirect
from django.template.response import TemplateResponse
from django.urls import path, reverse
from django.utils import timezone
from django.utils.html import format_html
from django.utils.translation import gettext_lazy as _
from django.utils.translation import ngettext

from openai_django.models import APIKey


class StateFilter(admin.SimpleListFilter):
    title = _("state")
    parameter_name = "state"

    def lookups(self, request, model_admin):
        return [("active", _("Active")), ("revoked", _("Revoked")), ("expired", _("Expired"))]

    def queryset(self, request, queryset):
        now = timezone.now()
        if self.value() == "active":
            return queryset.active()
        if self.value() == "revoked":
            return queryset.filter(revoked_at__isnull=False)
        if self.value() == "expired":
            return queryset.filter(revoked_at__isnull=True, expires_at__lte=now)
        return queryset


class APIKeyAddForm(forms.ModelForm):
    class Meta:
        model = APIKey
        fields = ("user", "name", "expires_at", "metadata_only")


class APIKeyAdmin(admin.ModelAdmin):
    list_display = ("masked_display", "name", "user_display", "state_display", "created",
                    "last_used_at", "expires_at", "metadata_only")
    list_display_links = ("masked_display", "name")
    list_select_related = ("user",)
    list_filter = (StateFilter, "metadata_only")
    search_fields = ("name", "prefix")
    search_help_text = _("A key's name or its first characters (sk-od-…).")
    raw_id_fields = ("user",)
    date_hierarchy = "created"
    ordering = ("-created",)
    actions = ("revoke_selected",)
    readonly_fields = ("masked_display", "user", "created", "last_used_at", "revoked_at",
                       "calls_link", "budget_display")
    fieldsets = (
        (None, {"fields": ("masked_display", "name", "user")}),
        (_("Limits"), {"fields": ("expires_at", "metadata_only", "budget_display")}),
        (_("History"), {"fields": ("created", "last_used_at", "revoked_at", "calls_link")}),
    )
    add_fieldsets = (
        (None, {"fields": ("user", "name")}),
        (_("Limits"), {"fields": ("expires_at", "metadata_only")}),
    )
    change_form_template = "openai_django/admin/apikey_change_form.html"

    class Media:
        css = MappingProxyType({"all": ("openai_django/admin.css",)})

    # -- display ---------------------------------------------------------------------------

    @admin.display(description=_("key"))
    def masked_display(self, key):
        return key.masked if key.prefix else "—"

    @admin.display(description=_("user"))
    def user_display(self, key):
        return key.user.get_username() if key.user_id else "—"

    @admin.display(description=_("state"))
    def state_display(self, key):
        if key.revoked_at:
            return format_html('<span class="od-status od-status-failed">{}</span>',
                               _("revoked"))
        if key.expires_at and key.expires_at <= timezone.now():
            return format_html('<span class="od-status od-status-cancelled">{}</span>',
                               _("expired"))
        return format_html('<span class="od-status od-status-ok">{}</span>', _("active"))

    @admin.display(description=_("budget this period"))
    def budget_display(self, key):
        from .allowances import key_budget_display

        return key_budget_display(key)

    def get_inlines(self, request, obj):
        # Budgets and rate limits (allowances.py), once the key exists.
        from .allowances import KeyAllowanceInline

        if obj is None or KeyAllowanceInline.posted_without(request):
            return []
        return [KeyAllowanceInline]

    @admin.display(description=_("calls"))
    def calls_link(self, key):
        if not key.pk:
            return "—"
        site = self.admin_site.name
        url = reverse(f"{site}:openai_django_call_changelist") + f"?key={key.pk}"
        return format_html('<a href="{}">{}</a>', url, _("Calls made with this key"))

    # -- forms -----------------------------------------------------------------------------

    def get_fieldsets(self, request, obj=None):
        return self.add_fieldsets if obj is None else self.fieldsets

    def get_readonly_fields(self, request, obj=None):
        return () if obj is None else self.readonly_fields

    def get_form(self, request, obj=None, change=False, **kwargs):
        if obj is None:
            kwargs["form"] = APIKeyAddForm
        return super().get_form(request, obj, change=change, **kwargs)

    def has_delete_permission(self, request, obj=None):
        # Revoke instead: a deleted key would leave its calls without attribution.
        return False

    def get_actions(self, request):
        actions = super().get_actions(request)
        actions.pop("delete_selected", None)
        return actions

    def save_model(self, request, obj, form, change):
        """A new key is minted by :meth:`APIKey.generate`, the only place a secret is made."""
        if change:
            return super().save_model(request, obj, form, change)
        key, raw = APIKey.generate(obj.user, name=obj.name, expires_at=obj.expires_at,
                                   metadata_only=obj.metadata_only)
        obj.pk = key.pk
        obj.prefix, obj.last4, obj.hashed_key, obj.created = (key.prefix, key.last4,
                                                              key.hashed_key, key.created)
        obj._state.adding = False
        obj._state.db = key._state.db
        obj._raw_secret = raw

    def response_add(self, request, obj, post_url_continue=None):
        raw = getattr(obj, "_raw_secret", None)
        if raw is None:
            return super().response_add(request, obj, post_url_continue)
        request.current_app = self.admin_site.name
        context = {
            **self.admin_site.each_context(request),
            "opts": self.opts, "app_label": self.opts.app_label, "original": obj,
            "title": _("Your new API key"), "key": obj, "secret": raw,
            "change_url": reverse(f"{self.admin_site.name}:openai_django_apikey_change",
                                  args=[obj.pk]),
        }
        response = TemplateResponse(request, "openai_django/admin/key_created.html", context)
        response["Cache-Control"] = "no-store"
        return response

    # -- revoke ----------------------------------------------------------------------------

    def get_urls(self):
        info = f"{self.opts.app_label}_{self.opts.model_name}"
        return [
            path("<path:object_id>/revoke/", self.admin_site.admin_view(self.revoke_view),
                 name=f"{info}_revoke"),
            *super().get_urls(),
        ]

    def revoke_view(self, request, object_id):
        """Confirm, then revoke one key (POST only does it)."""
        key = self.get_object(request, unquote(object_id))
        if key is None:
            raise Http404
        if not self.has_change_permission(request, key):
            raise PermissionDenied
        change_url = reverse(f"{self.admin_site.name}:openai_django_apikey_change",
                             args=[key.pk])
        if request.method == "POST":
            if key.revoked_at is None:
                key.revoke()
                self.log_change(request, key, [{"changed": {"fields": ["revoked_at"]}}])
                self.message_user(request, _("The key %s is revoked: it no longer "
                                             "authenticates.") % key.masked, messages.SUCCESS)
            return HttpResponseRedirect(change_url)
        request.current_app = self.admin_site.name
        return TemplateResponse(request, "openai_django/admin/key_revoke.html", {
            **self.admin_site.each_context(request),
            "opts": self.opts, "app_label": self.opts.app_label, "original": key,
            "title": _("Revoke this key?"), "key": key, "change_url": change_url,
        })

    @admin.action(description=_("Revoke selected keys"), permissions=["change"])
    def revoke_selected(self, request, queryset):
        """Revoke with a confirmation page (the second POST carries ``post=yes``)."""
        from django.contrib.admin import helpers

        active = queryset.filter(revoked_at__isnull=True)
        if request.POST.get("post") == "yes":
            keys = list(active)
            now = timezone.now()
            active.update(revoked_at=now)
            for key in keys:
                self.log_change(request, key, [{"changed": {"fields": ["revoked_at"]}}])
            self.message_user(request, ngettext("%(n)d key revoked.", "%(n)d keys revoked.",
                                                len(keys)) % {"n": len(keys)},
                              messages.SUCCESS)
            return None
        request.current_app = self.admin_site.name
        return TemplateResponse(request, "openai_django/admin/key_revoke.html", {
            **self.admin_site.each_context(request),
            "opts": self.opts, "app_label": self.opts.app_label,
            "title": _("Revoke these keys?"), "keys": list(active.select_related("user")),
            "selected": list(queryset.values_list("pk", flat=True)),
            "action_checkbox_name": helpers.ACTION_CHECKBOX_NAME,
            "select_across": request.POST.get("select_across", "0"),
        })


"""An admin inline listing the calls attached to one of the site's own objects.

Calls made with ``target=obj`` (``openai_django.create(..., target=product)``) point at that
object through a generic relation, so "all AI calls for this product" is one indexed query
(``Call.objects.for_object(product)``) and, in the admin, one inline::

    from openai_django.inlines import CallInline

    @admin.register(Product)
    class ProductAdmin(admin.ModelAdmin):
        inlines = [CallInline]
"""

from django.contrib.contenttypes.admin import GenericTabularInline
from django.utils.translation import gettext_lazy as _

from openai_django.models import Call


class CallInline(GenericTabularInline):
    """Read-only: a log is looked at, never edited; each row links to the call's page."""

    model = Call
    ct_field = "target_type"
    ct_fk_field = "target_id"
    fields = ("created", "operation", "model", "status", "outcome", "attempt_count",
              "total_tokens", "latency_ms")
    readonly_fields = fields
    ordering = ("-created",)
    extra = 0
    max_num = 0
    can_delete = False
    show_change_link = True
    verbose_name = _("AI call")
    verbose_name_plural = _("AI calls")

    def get_queryset(self, request):
        # The bodies can be large and the inline shows none of them.
        return super().get_queryset(request).defer(
            "request_body", "response_body", "response_text", "stream_events", "payload",
            "output_text", "attempts", "response_headers", "request_headers")

    def has_add_permission(self, request, obj=None):
        return False

    def has_change_permission(self, request, obj=None):
        return False

    def has_delete_permission(self, request, obj=None):
        return False

"""The admin of openai-django: the call log (inspect, replay, compare, usage, export) and keys.

The ModelAdmins are registered on Django's default admin site when ``django.contrib.admin``
autodiscovers this module. A site with an ``AdminSite`` of its own mounts them with::

    from openai_django.admin import register
    register(my_site)
"""

from django.contrib import admin

from openai_django.models import Allowance, APIKey, Call

from .allowances import (
    AllowanceAdmin,
    AllowanceInline,
    GroupAllowanceInline,
    UserAllowanceInline,
    extend_user_admins,
)
from .calls import CallAdmin
from .keys import APIKeyAdmin

__all__ = ["APIKeyAdmin", "AllowanceAdmin", "AllowanceInline", "CallAdmin",
           "GroupAllowanceInline", "UserAllowanceInline", "register"]


def register(site=None):
    """Register the call and key admins on ``site`` (default: ``django.contrib.admin.site``);
    models already registered there are left as they are."""
    site = site or admin.site
    for model, model_admin in ((Call, CallAdmin), (APIKey, APIKeyAdmin),
                               (Allowance, AllowanceAdmin)):
        if not site.is_registered(model):
            site.register(model, model_admin)
    extend_user_admins(site)  # budgets and rate limits on the user and group pages
    return site


register(admin.site)

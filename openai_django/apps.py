from django.apps import AppConfig


class OpenAIDjangoConfig(AppConfig):
    name = "openai_django"
    verbose_name = "OpenAI"
    default_auto_field = "django.db.models.BigAutoField"

    def ready(self):
        import sys

        from openai_django import (  # noqa: F401 - registers checks/receivers
            checks,
            controls,
            handlers,
            metrics,
            recovery,
            retention,
        )

        if "openai_django.admin" in sys.modules:
            # The admins were autodiscovered before this app was ready: a user admin
            # registered after ours gets the budget inline now (admin/allowances.py).
            from django.contrib import admin

            from openai_django.admin.allowances import extend_user_admins

            extend_user_admins(admin.site)

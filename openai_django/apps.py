from django.apps import AppConfig


class OpenAIDjangoConfig(AppConfig):
    name = "openai_django"
    verbose_name = "OpenAI"
    default_auto_field = "django.db.models.BigAutoField"

    def ready(self):
        from openai_django import (  # noqa: F401 - registers checks/receivers
            checks,
            controls,
            handlers,
            recovery,
            retention,
        )

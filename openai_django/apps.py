from django.apps import AppConfig


class OpenAIDjangoConfig(AppConfig):
    name = "openai_django"
    verbose_name = "OpenAI"
    default_auto_field = "django.db.models.BigAutoField"

    def ready(self):
        from django.db.models.signals import post_migrate

        from openai_django import (  # noqa: F401 - registers checks/receivers
            access,
            checks,
            handlers,
            metrics,
            policy,
            recovery,
            retention,
            tagging,
        )

        post_migrate.connect(tagging.ensure_sqlite_trigger, sender=self,
                             dispatch_uid="openai_django.tagging.sqlite_trigger")

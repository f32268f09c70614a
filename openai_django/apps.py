from django.apps import AppConfig


class OpenAIDjangoConfig(AppConfig):
    name = "openai_django"
    verbose_name = "OpenAI"
    default_auto_field = "django.db.models.BigAutoField"

    def ready(self):
        import sys

        from django.db.backends.signals import connection_created
        from django.db.models.signals import post_migrate

        from openai_django import (  # noqa: F401 - registers checks/receivers
            access,
            checks,
            controls,
            gcfreeze,
            handlers,
            metrics,
            policy,
            recovery,
            retention,
            sqlite_wal,
            tagging,
            thread_connections,
        )

        connection_created.connect(sqlite_wal.configure,
                                   dispatch_uid="openai_django.sqlite_wal.configure")
        connection_created.connect(thread_connections.remember,
                                   dispatch_uid="openai_django.thread_connections.remember")
        post_migrate.connect(tagging.ensure_sqlite_trigger, sender=self,
                             dispatch_uid="openai_django.tagging.sqlite_trigger")
        if "openai_django.admin" in sys.modules:
            # The admins were autodiscovered before this app was ready: a user admin
            # registered after ours gets the budget inline now (admin/allowances.py).
            from django.contrib import admin

            from openai_django.admin.allowances import extend_user_admins

            extend_user_admins(admin.site)

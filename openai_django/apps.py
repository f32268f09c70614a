from django.apps import AppConfig


class OpenAIDjangoConfig(AppConfig):
    name = "openai_django"
    verbose_name = "OpenAI"
    default_auto_field = "django.db.models.BigAutoField"

    def ready(self):
        from openai_django import checks, handlers  # noqa: F401 - registers checks/receivers
        from openai_django import retention  # noqa: F401 - registers the periodic purge task

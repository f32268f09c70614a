from django.conf import settings

from openai_django.conf import app_settings


def upstream(request):
    """Tell every page of the demo which upstream it talks to (the stand-in or a real API)."""
    return {
        "demo_upstream": app_settings.BASE_URL,
        "demo_standin": bool(settings.OPENAI_DJANGO_STANDIN or not app_settings.API_KEY),
    }

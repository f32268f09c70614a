from django.conf import settings
from django.shortcuts import render
from django.urls import reverse

from openai_django.conf import app_settings


def home(request):
    """The demo's home page: which upstream it uses, how to get a key, where to look."""
    base = request.build_absolute_uri(reverse("openai_django:call-list")).rsplit("/calls", 1)[0]
    return render(request, "home.html", {
        "upstream": app_settings.BASE_URL,
        "standin": settings.OPENAI_DJANGO_STANDIN or not app_settings.API_KEY,
        "gateway_base": base,
        "spec_url": reverse("openai_django:spec"),
    })

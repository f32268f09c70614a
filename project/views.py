from django.shortcuts import render
from django.urls import reverse


def home(request):
    """The demo's home page: which upstream it uses, how to get a key, where to look."""
    base = request.build_absolute_uri(reverse("openai_django:call-list")).rsplit("/calls", 1)[0]
    return render(request, "home.html", {
        "gateway_base": base,
        "spec_url": reverse("openai_django:spec"),
    })

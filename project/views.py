from django.contrib.auth.decorators import login_required
from django.shortcuts import render
from django.urls import reverse
from django.views.decorators.csrf import ensure_csrf_cookie
from rest_framework.authentication import SessionAuthentication

from openai_django import access


def home(request):
    """The demo's home page: which upstream it uses, how to get a key, where to look."""
    base = request.build_absolute_uri(reverse("openai_django:call-list")).rsplit("/calls", 1)[0]
    return render(request, "home.html", {
        "gateway_base": base,
        "spec_url": reverse("openai_django:spec"),
    })


@login_required(login_url="login")
@ensure_csrf_cookie
def playground(request):
    """A page of the site itself calling the gateway from its JavaScript with the visitor's
    login (no key): the session cookie and the CSRF token, as any page of a site would."""
    classes = access.authentication_classes() or ()
    return render(request, "playground.html", {
        "chat_url": reverse("openai_django:createChatCompletion"),
        "sessions_accepted": any(issubclass(cls, SessionAuthentication) for cls in classes),
    })

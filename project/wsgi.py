"""The demo site under WSGI: ``granian --interface wsgi project.wsgi:application`` (or
gunicorn). The gateway's /v1/ operations are served by its lean entry (openai_django/wsgi.py:
the same views, without the site's cookie-session middleware); everything else by Django.
``OPENAI_DJANGO["WSGI_LEAN"] = False`` sends everything to Django."""

import os

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "project.settings")

from openai_django.wsgi import get_wsgi_application

application = get_wsgi_application()

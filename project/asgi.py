"""The demo site under ASGI: ``uvicorn project.asgi:application`` (or ``granian --interface
asgi project.asgi:application``, or daphne).

Served this way, the gateway's operations are async views (openai_django.urls decides when its
URLconf is loaded on the event loop; ``OPENAI_DJANGO["TRANSPORT"]`` forces a side): the upstream
is asked with the async client, streams are relayed event by event as they arrive, and the
record is written in a bounded pool of database threads, so one process holds thousands of
open streams.

``openai_django.asgi.get_asgi_application()`` is Django's ASGI application behind the
gateway's lean entry: the /v1/ operations are served on the event loop without Django's
per-request thread and the thread hops of the site's sync middleware (see that module and the
README's "Deployment"); the admin, the site's pages and the REST log go to Django unchanged.
``OPENAI_DJANGO["ASGI_LEAN"] = False`` sends everything to Django.
"""

import os

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "project.settings")

from openai_django.asgi import get_asgi_application

application = get_asgi_application()

"""The demo site under ASGI: ``uvicorn project.asgi:application`` (or ``granian --interface
asgi project.asgi:application``, or daphne).

Served this way, the gateway's operations are async views (openai_django.urls decides when its
URLconf is loaded on the event loop; ``OPENAI_DJANGO["TRANSPORT"]`` forces a side): the upstream
is asked with the async client, streams are relayed event by event as they arrive, and the
record is written in a bounded pool of database threads, so one process holds thousands of
open streams. The admin and the REST log are ordinary sync views, which Django runs in threads.
"""

import os

from django.core.asgi import get_asgi_application

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "project.settings")
application = get_asgi_application()

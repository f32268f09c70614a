"""``python -m openai_django.testing`` is the same as
``python -m openai_django.testing.upstream``."""

import sys

from .upstream import main

sys.exit(main())

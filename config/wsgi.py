import os

from django.conf import settings
from django.core.wsgi import get_wsgi_application

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "config.settings")
application = get_wsgi_application()

if settings.COMMONFEED_WSGI_FASTPATH:
    from feeds.fastpath import WSGIFastPath

    # Feed GET cache hits are answered before Django's handler (see feeds/fastpath.py).
    application = WSGIFastPath(application)

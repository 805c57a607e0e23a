from django.contrib import admin
from django.urls import include, path

urlpatterns = [
    # The app API first: Django tries patterns in order, and the feed GET is the hottest path
    # (every pattern tried before it costs each request a regex match). No pattern here
    # overlaps another, so the order changes nothing else.
    path("api/v1/", include("feeds.api_urls")),
    path("api/v1/", include("governance.api_urls")),
    path("admin/", admin.site.urls),
    path("accounts/", include("django.contrib.auth.urls")),
    path("", include("governance.urls")),
    path("", include("feeds.urls")),
]

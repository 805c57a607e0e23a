from django.contrib import admin
from django.urls import include, path

urlpatterns = [
    path("admin/", admin.site.urls),
    path("accounts/", include("django.contrib.auth.urls")),
    path("", include("governance.urls")),
    path("api/v1/", include("governance.api_urls")),
    path("api/v1/", include("feeds.api_urls")),
    path("", include("feeds.urls")),
]

from django.contrib import admin
from django.urls import include, path

from feeds.serving.api import MemberFeedApi
from governance.accounts import ThrottledAdminAuthenticationForm, ThrottledLoginView

# The admin's sign-in is throttled as the site's is.
admin.site.login_form = ThrottledAdminAuthenticationForm

urlpatterns = [
    # The feed GET first and at the top level: it is the hottest path, Django tries patterns
    # in order, and every include() it goes through costs each request another resolver.
    # No pattern here overlaps another, so the order changes nothing else.
    path(
        "api/v1/communities/<slug:slug>/feeds/<str:member_external_id>/",
        MemberFeedApi.as_view(),
        name="api-member-feed",
    ),
    path("api/v1/", include("feeds.api_urls")),
    path("api/v1/", include("governance.api_urls")),
    path("admin/", admin.site.urls),
    path("accounts/login/", ThrottledLoginView.as_view(), name="login"),
    path("accounts/", include("django.contrib.auth.urls")),
    path("", include("governance.urls")),
    path("", include("feeds.urls")),
]

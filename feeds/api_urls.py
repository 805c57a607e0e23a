from django.urls import path
from drf_spectacular.views import SpectacularAPIView, SpectacularSwaggerView

from feeds import apis

urlpatterns = [
    path("schema/", SpectacularAPIView.as_view(), name="api-schema"),
    path("docs/", SpectacularSwaggerView.as_view(url_name="api-schema"), name="api-docs"),
    # The member feed GET is declared in config/urls.py, at the top level (the hot path).
    path("communities/<slug:slug>/members/", apis.MembersApi.as_view(), name="api-members"),
    path("communities/<slug:slug>/creators/", apis.CreatorsApi.as_view(), name="api-creators"),
    path("communities/<slug:slug>/items/", apis.ItemsApi.as_view(), name="api-items"),
    path("communities/<slug:slug>/events/", apis.EventsApi.as_view(), name="api-events"),
    path(
        "communities/<slug:slug>/members/<str:member_external_id>/choices/",
        apis.MemberChoicesApi.as_view(),
        name="api-member-choices",
    ),
    path(
        "communities/<slug:slug>/members/<str:member_external_id>/data-deletion/",
        apis.MemberDataDeletionApi.as_view(),
        name="api-member-data-deletion",
    ),
    path(
        "communities/<slug:slug>/creators/<str:creator_external_id>/choices/",
        apis.CreatorChoicesApi.as_view(),
        name="api-creator-choices",
    ),
    path(
        "communities/<slug:slug>/feed-runs/",
        apis.FeedRunsApi.as_view(),
        name="api-feed-runs",
    ),
    path(
        "communities/<slug:slug>/apps/",
        apis.AppCredentialsApi.as_view(),
        name="api-app-credentials",
    ),
    path(
        "communities/<slug:slug>/apps/<str:prefix>/revoke/",
        apis.AppCredentialRevokeApi.as_view(),
        name="api-app-credential-revoke",
    ),
]

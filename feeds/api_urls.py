from django.urls import path
from drf_spectacular.views import SpectacularAPIView, SpectacularSwaggerView

from feeds.choices import api as choices_api
from feeds.credentials import api as credentials_api
from feeds.ingest import api as ingest_api
from feeds.runs import api as runs_api

urlpatterns = [
    path("schema/", SpectacularAPIView.as_view(), name="api-schema"),
    path("docs/", SpectacularSwaggerView.as_view(url_name="api-schema"), name="api-docs"),
    # The member feed GET is declared in config/urls.py, at the top level (the hot path).
    path("communities/<slug:slug>/members/", ingest_api.MembersApi.as_view(), name="api-members"),
    path(
        "communities/<slug:slug>/creators/", ingest_api.CreatorsApi.as_view(), name="api-creators"
    ),
    path("communities/<slug:slug>/items/", ingest_api.ItemsApi.as_view(), name="api-items"),
    path("communities/<slug:slug>/events/", ingest_api.EventsApi.as_view(), name="api-events"),
    path(
        "communities/<slug:slug>/members/<str:member_external_id>/choices/",
        choices_api.MemberChoicesApi.as_view(),
        name="api-member-choices",
    ),
    path(
        "communities/<slug:slug>/members/<str:member_external_id>/data-deletion/",
        choices_api.MemberDataDeletionApi.as_view(),
        name="api-member-data-deletion",
    ),
    path(
        "communities/<slug:slug>/creators/<str:creator_external_id>/choices/",
        choices_api.CreatorChoicesApi.as_view(),
        name="api-creator-choices",
    ),
    path(
        "communities/<slug:slug>/feed-runs/",
        runs_api.FeedRunsApi.as_view(),
        name="api-feed-runs",
    ),
    path(
        "communities/<slug:slug>/apps/",
        credentials_api.AppCredentialsApi.as_view(),
        name="api-app-credentials",
    ),
    path(
        "communities/<slug:slug>/apps/<str:prefix>/revoke/",
        credentials_api.AppCredentialRevokeApi.as_view(),
        name="api-app-credential-revoke",
    ),
]

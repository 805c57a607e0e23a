from django.urls import path

from feeds import apis

urlpatterns = [
    path(
        "communities/<slug:slug>/feeds/<str:member_external_id>/",
        apis.MemberFeedApi.as_view(),
        name="api-member-feed",
    ),
]

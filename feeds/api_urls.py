from django.urls import path

from feeds import apis

urlpatterns = [
    path(
        "communities/<slug:slug>/feeds/<str:member_external_id>/",
        apis.MemberFeedApi.as_view(),
        name="api-member-feed",
    ),
    path("communities/<slug:slug>/members/", apis.MembersApi.as_view(), name="api-members"),
    path("communities/<slug:slug>/creators/", apis.CreatorsApi.as_view(), name="api-creators"),
    path("communities/<slug:slug>/items/", apis.ItemsApi.as_view(), name="api-items"),
    path("communities/<slug:slug>/events/", apis.EventsApi.as_view(), name="api-events"),
]

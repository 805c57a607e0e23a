from django.urls import path

from feeds import views

urlpatterns = [
    path("", views.home, name="home"),
    path(
        "c/<slug:slug>/members/<str:member_external_id>/feed/",
        views.member_feed,
        name="member-feed",
    ),
]

from django.urls import path

from governance import apis

urlpatterns = [
    path("communities/<slug:slug>/audit/", apis.AuditLogApi.as_view(), name="api-audit"),
    path(
        "communities/<slug:slug>/proposals/",
        apis.ProposalsApi.as_view(),
        name="api-proposals",
    ),
    path(
        "communities/<slug:slug>/proposals/<str:pk>/",
        apis.ProposalApi.as_view(),
        name="api-proposal",
    ),
    path(
        "communities/<slug:slug>/proposals/<str:pk>/open/",
        apis.ProposalOpenApi.as_view(),
        name="api-proposal-open",
    ),
    path(
        "communities/<slug:slug>/proposals/<str:pk>/withdraw/",
        apis.ProposalWithdrawApi.as_view(),
        name="api-proposal-withdraw",
    ),
    path(
        "communities/<slug:slug>/proposals/<str:pk>/ballot/",
        apis.BallotApi.as_view(),
        name="api-ballot",
    ),
]

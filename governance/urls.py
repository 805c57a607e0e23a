from django.urls import path

from governance import views

app_name = "governance"

urlpatterns = [
    path("c/<slug:slug>/", views.community_root, name="community"),
    path("c/<slug:slug>/governance/", views.governance_home, name="home"),
    path("c/<slug:slug>/governance/history/", views.policy_history, name="history"),
    path("c/<slug:slug>/audit/", views.audit_log, name="audit"),
    path("c/<slug:slug>/proposals/new/", views.proposal_new, name="proposal-new"),
    path("c/<slug:slug>/proposals/check/", views.proposal_check, name="proposal-check"),
    path("c/<slug:slug>/proposals/<int:pk>/edit/", views.proposal_edit, name="proposal-edit"),
    path("c/<slug:slug>/proposals/<int:pk>/", views.proposal_detail, name="proposal"),
    path("c/<slug:slug>/proposals/<int:pk>/vote/", views.proposal_vote, name="vote"),
    path("c/<slug:slug>/proposals/<int:pk>/tally/", views.proposal_tally_fragment, name="tally"),
    path("c/<slug:slug>/members/", views.members, name="members"),
    path("c/<slug:slug>/members/<int:pk>/role/", views.member_role, name="member-role"),
    path("c/<slug:slug>/members/<int:pk>/remove/", views.member_remove, name="member-remove"),
    path(
        "c/<slug:slug>/proposals/<int:pk>/open/",
        views.proposal_transition,
        {"action": "open"},
        name="open",
    ),
    path(
        "c/<slug:slug>/proposals/<int:pk>/withdraw/",
        views.proposal_transition,
        {"action": "withdraw"},
        name="withdraw",
    ),
]

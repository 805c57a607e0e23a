"""The product's URLs plus the ballot benchmark's ceiling: a bare view behind the same auth.

``PUT /bench/ballot-bare/<slug>/<pk>/`` goes through the same middleware as the ballot API
(session lookup, user lookup, CSRF check of the cookie against ``X-CSRFToken``) and answers 200
with a small JSON body, writing nothing.
"""

from django.http import HttpRequest, HttpResponse, JsonResponse
from django.urls import path
from django.views.decorators.http import require_http_methods

from config import urls as config_urls


@require_http_methods(["GET", "PUT"])
def ballot_bare(request: HttpRequest, slug: str, pk: int) -> HttpResponse:
    if request.method == "GET":
        return JsonResponse({"ready": True})  # the benchmark's readiness probe
    if not request.user.is_authenticated:
        return JsonResponse({"error": "not_authenticated"}, status=403)
    return JsonResponse({"proposal": pk, "user": request.user.pk})


# The product's patterns as in production (not one include() deeper), after the bare view.
urlpatterns = [
    path("bench/ballot-bare/<slug:slug>/<int:pk>/", ballot_bare),
    *config_urls.urlpatterns,
]

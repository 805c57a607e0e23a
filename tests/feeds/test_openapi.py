from __future__ import annotations

import re

import pytest
from django.test import Client

pytestmark = pytest.mark.django_db


def test_the_openapi_schema_describes_every_endpoint_with_bearer_auth(client: Client) -> None:
    response = client.get("/api/v1/schema/", HTTP_ACCEPT="application/json")
    assert response.status_code == 200
    schema = response.json()
    assert schema["openapi"].startswith("3.")
    paths = set(schema["paths"])
    for what in ("feeds/{member_external_id}", "members", "creators", "items", "events"):
        assert f"/api/v1/communities/{{slug}}/{what}/" in paths
    assert schema["components"]["securitySchemes"]["appCredential"]["scheme"] == "bearer"
    events = schema["paths"]["/api/v1/communities/{slug}/events/"]["post"]
    assert {"200", "400", "413"} <= set(events["responses"])


def test_the_interactive_docs_load_their_assets_from_this_server(client: Client) -> None:
    page = client.get("/api/v1/docs/")
    assert page.status_code == 200
    html = page.content.decode()
    assets = re.findall(r'(?:src|href)="([^"]+)"', html)
    assert assets
    assert not [a for a in assets if a.startswith(("http://", "https://", "//"))]
    assert any("swagger-ui" in a for a in assets)
    for asset in assets:
        if asset.startswith("/static/"):
            assert client.get(asset).status_code == 200, asset

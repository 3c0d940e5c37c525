"""The whole flow through Traefik: forwardAuth to the gateway, then the data service."""

import uuid

import pytest

from conftest import eventually, login

pytestmark = pytest.mark.integration


def test_login_upload_query_delete(http):
    tokens = login(http, "admin", "admin-test-password")
    auth = {"Authorization": f"Bearer {tokens['access_token']}"}
    csv = b"region,product,units,price\nnorth,a,3,2.5\nsouth,a,1,2.5\nnorth,b,5,1.0\nsouth,b,2,1.0\nnorth,a,4,2.5\n"
    created = http.post("/api/v1/data/datasets", headers=auth, files={"file": ("units.csv", csv, "text/csv")})
    assert created.status_code == 201, created.text
    ds = created.json()
    assert ds["rows"] == 5

    result = http.post(
        f"/api/v1/data/datasets/{ds['id']}/query",
        headers=auth,
        json={
            "filter": [{"column": "price", "op": "gt", "value": 0}],
            "group_by": ["region"],
            "aggregate": [{"column": "units", "func": "sum", "alias": "units"},
                          {"column": "price", "func": "mean", "alias": "avg_price"}],
            "sort": [{"column": "units", "descending": True}],
        },
    )
    assert result.status_code == 200, result.text
    assert result.json()["rows"] == [
        {"region": "north", "units": 12, "avg_price": pytest.approx(2.0)},
        {"region": "south", "units": 3, "avg_price": pytest.approx(1.75)},
    ]
    assert http.delete(f"/api/v1/data/datasets/{ds['id']}", headers=auth).status_code == 204
    assert http.get(f"/api/v1/data/datasets/{ds['id']}", headers=auth).status_code == 404


@pytest.mark.parametrize("headers", [{}, {"Authorization": "Bearer forged.token.value"}])
def test_unauthenticated_requests_never_reach_the_data_service(http, platform, headers):
    marker = f"probe-{uuid.uuid4().hex}"
    data_log = platform.logs / "data.log"
    gateway_log = platform.logs / "gateway.log"
    resp = http.get("/api/v1/data/datasets", headers={**headers, "X-Request-ID": marker})
    assert resp.status_code == 401
    # The gateway saw it (forwardAuth) and answered; the data service never did.
    assert eventually(lambda: marker in gateway_log.read_text())
    # Control: an authenticated request with a marker does show up in the data log.
    token = login(http, "admin", "admin-test-password")["access_token"]
    ok_marker = f"ok-{uuid.uuid4().hex}"
    ok = http.get("/api/v1/data/datasets", headers={"Authorization": f"Bearer {token}", "X-Request-ID": ok_marker})
    assert ok.status_code == 200
    assert eventually(lambda: ok_marker in data_log.read_text())
    # Both markers' requests are done and logged in order; the refused one never arrived.
    assert marker not in data_log.read_text()



def test_the_shared_platform_flow(platform, base_url):
    """The flow `make e2e` and `scripts/cluster-test` run, here on the embedded platform."""
    from datalab.ops.flow import run_flow

    report = run_flow(base_url, "admin", "admin-test-password")
    assert [name for name, _ in report.steps][-1] == "delete model + dataset"

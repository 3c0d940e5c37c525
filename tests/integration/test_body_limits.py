"""Request-body limits on the real services, through Traefik: a JSON body over the
service's DATALAB_MAX_BODY_BYTES is a 413 problem; a multipart upload to data is governed by
data's own upload limit (DATALAB_MAX_UPLOAD_BYTES), not by the JSON one."""

import json

import pytest

from conftest import MAX_UPLOAD

pytestmark = pytest.mark.integration

PROBLEM = "application/problem+json"
ONE_MIB = 1024 * 1024  # BaseServiceSettings.max_body_bytes


def _assert_413(resp):
    assert resp.status_code == 413, resp.text
    assert resp.headers["content-type"] == PROBLEM and resp.headers["x-request-id"]
    assert resp.json()["status"] == 413


@pytest.mark.parametrize("path", ["/api/v1/viz/charts", "/api/v1/compute/jobs",
                                  "/api/v1/data/datasets/00000000-0000-4000-8000-000000000000/query"])
def test_json_body_over_the_limit_is_413(http, admin_headers, path):
    body = json.dumps({"padding": "x" * (ONE_MIB + 10)})
    headers = {**admin_headers, "Content-Type": "application/json"}
    _assert_413(http.post(path, content=body, headers=headers))  # with a Content-Length

    def chunks():  # and streamed, without one
        for i in range(0, len(body), 65536):
            yield body[i:i + 65536].encode()

    _assert_413(http.post(path, content=chunks(), headers=headers))


def test_ai_takes_larger_bodies_for_predict_batches(http, admin_headers):
    body = {"rows": [{"x": 1.0, "pad": "y" * 100}] * 15_000}  # ~2 MB: over 1 MiB, under ai's 16 MiB
    resp = http.post("/api/v1/ai/models/00000000-0000-4000-8000-000000000000/predict",
                     json=body, headers=admin_headers)
    assert resp.status_code == 422 and "At most" in resp.json()["detail"]  # read, then judged


def test_an_upload_is_bounded_by_the_upload_limit_not_the_json_one(http, admin_headers):
    # Exactly the upload limit (1 MiB in the tests): with the multipart framing the body is
    # over max_body_bytes, yet it is data's upload limit that applies.
    row = "1,2.5,abcdefgh\n"
    head = "a,b,c\n"
    content = head + row * ((MAX_UPLOAD - len(head)) // len(row))
    content += "1,2," + "z" * (MAX_UPLOAD - len(content) - 5) + "\n"
    assert len(content) == MAX_UPLOAD
    resp = http.post("/api/v1/data/datasets", headers=admin_headers,
                     files={"file": ("limit.csv", content, "text/csv")})
    assert resp.status_code == 201, resp.text
    assert http.delete(f"/api/v1/data/datasets/{resp.json()['id']}", headers=admin_headers).status_code == 204
    too_big = http.post("/api/v1/data/datasets", headers=admin_headers,
                        files={"file": ("big.csv", content + "x", "text/csv")})
    assert too_big.status_code == 413

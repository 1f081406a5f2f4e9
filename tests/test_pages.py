"""The pages the service serves for people: /, /docs and the OpenAPI document behind it (over HTTP).

The same pages driven in a real browser: tests/test_browser.py.
"""

from __future__ import annotations

import re

import pytest
import requests

from _service import shared_server
from glasses.config import SERVE_MAX_LATENCY_MS


@pytest.fixture(scope="module")
def server(request, tmp_path_factory):
    return shared_server(request, tmp_path_factory)


@pytest.fixture(scope="module")
def spec(server) -> dict:
    resp = requests.get(f"{server.url}/docs.json", timeout=30)
    assert resp.status_code == 200
    return resp.json()


def test_index_is_the_try_it_page_and_docs_have_no_tracking(server):
    page = requests.get(f"{server.url}/", timeout=10)
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    assert 'type="file"' in page.text and "/static/app.js" in page.text
    docs = requests.get(f"{server.url}/docs", timeout=10)
    assert docs.status_code == 200 and "swagger-ui" in docs.text
    for html in (page.text, docs.text):
        assert "googletagmanager" not in html and "gtm" not in html.lower()
        assert not re.search(r"""(src|href)=["'](https?:)?//""", html), "a resource from another origin"
    for asset in ("/static/app.js", "/static/style.css", "/static/docs.js", "/static_content/swagger-ui-bundle.js"):
        assert requests.get(f"{server.url}{asset}", timeout=10).status_code == 200, asset
    assert requests.get(f"{server.url}/static/nope.js", timeout=10).status_code == 404


def test_openapi_title_and_version_mean_something(spec):
    from importlib import metadata

    info = spec["info"]
    assert info["title"] == "Glasses verdict service"
    assert info["version"] == metadata.version("glasses-verdict")
    assert info["x-served-model"].startswith("glasses_classifier:") and info["x-served-model"] in info["description"]
    assert "BentoML" not in str(info)


def test_openapi_documents_every_route_and_sets_infer_apart(spec):
    paths = spec["paths"]
    assert {"/predict", "/predict_batch", "/explain", "/model", "/infer", "/readyz"} <= set(paths)
    assert list(paths)[0] == "/predict"
    assert paths["/model"]["get"]["responses"]["200"]
    assert paths["/infer"]["post"]["tags"] == ["internal"]
    assert all("internal" not in op.get("tags", []) for path, item in paths.items() if path != "/infer"
               for op in item.values())
    explain = paths["/explain"]["post"]
    assert set(explain["responses"]["200"]["content"]) == {"image/png", "application/json"}
    assert explain["parameters"][0]["name"] == "format"


def test_openapi_error_responses_are_the_real_ones(server, spec):
    paths = spec["paths"]
    expected = {"/predict": {"200", "400", "404", "408", "413", "415", "422", "503"},
                "/predict_batch": {"200", "400", "404", "408", "413", "415", "503"},
                "/explain": {"200", "400", "408", "413", "415", "422", "429", "503"}}
    for path, codes in expected.items():
        responses = paths[path]["post"]["responses"]
        assert set(responses) == codes, path
        for code in codes - {"200", "503"}:  # 503 may also be BentoML's shed body (documented as oneOf)
            schema = responses[code]["content"]["application/json"]["schema"]
            assert schema == {"$ref": "#/components/schemas/Error"}, (path, code)
    error = spec["components"]["schemas"]["Error"]
    assert error["required"] == ["error", "status"]
    assert not {"InvalidArgument", "NotFound", "InternalServerError"} & set(spec["components"]["schemas"])
    assert str(SERVE_MAX_LATENCY_MS) in paths["/predict"]["post"]["responses"]["503"]["description"]
    # what the document says is what the service sends
    for path, files, status in (("/predict", {"image": ("x.txt", b"text")}, 422),
                                ("/predict?model=nope", {"image": ("x.txt", b"text")}, 404),
                                ("/predict_batch", {"photo": ("x.txt", b"text")}, 400),
                                ("/explain", {"image": ("x.txt", b"text")}, 422)):
        body = requests.post(f"{server.url}{path}", files=files, timeout=30).json()
        assert set(body) == set(error["required"]) and body["status"] == status, (path, body)


def test_version_falls_back_to_pyproject_where_the_package_is_not_installed(monkeypatch, tmp_path):
    """The serving container copies the code without installing it: /docs.json must still answer."""
    import tomllib
    from importlib import metadata

    import bentoml

    from glasses import version
    from service.openapi import service_spec

    installed = metadata.version

    def not_installed(name: str) -> str:  # this project only: bentoml reads other packages' versions
        if name == version.PACKAGE:
            raise metadata.PackageNotFoundError(name)
        return installed(name)

    monkeypatch.setattr(version.metadata, "version", not_installed)
    expected = tomllib.loads(version.PYPROJECT.read_text())["project"]["version"]
    assert version.package_version() == expected
    assert version.package_version(tmp_path / "absent.toml") == version.UNKNOWN
    (tmp_path / "broken.toml").write_text("[project\n")
    assert version.package_version(tmp_path / "broken.toml") == version.UNKNOWN

    @bentoml.service(name="tiny")
    class Tiny:
        @bentoml.api
        def echo(self, text: str) -> str:
            return text

    spec = service_spec(Tiny, {"tag": "glasses_classifier:abc", "threshold": 0.5})
    assert spec["info"]["version"] == expected and expected in spec["info"]["description"]

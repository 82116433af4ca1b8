"""Web pages against the real server with no API key set (the default): a page from another site, or one reached
through a rebinding host name, can neither change the model store nor read the API. Checked on the store's files,
not only on the status; and the ordinary clients (no Origin, curl's form content type) still work."""

from __future__ import annotations

import functools
import http.server
import threading
from pathlib import Path
from typing import Any, Iterator

import pytest
import requests

from tests.integration.support import DEFAULT_CONFIG, MODEL, GatewayServer, free_port
from tests.integration.test_dashboard_browser import chromium

pytestmark = pytest.mark.integration

EVIL = "https://evil.example"
STORE_CHANGES = [("POST", "/api/copy", {"source": MODEL, "destination": "victim"}),
                 ("POST", "/api/create", {"model": "victim", "from": MODEL}),
                 ("POST", "/api/pull", {"model": "evil.example/x/victim", "insecure": True}),
                 ("DELETE", "/api/delete", {"model": "victim"})]


def store_files(server: GatewayServer) -> list[str]:
    root = server.work_dir / "ollama-models"
    return sorted(str(p.relative_to(root)) for p in root.rglob("*")) if root.exists() else []


def send(server: GatewayServer, method: str, path: str, body: Any = None, **headers: str) -> requests.Response:
    return requests.request(method, server.url + path, json=body, headers=headers, timeout=60)


@pytest.mark.parametrize(("method", "path", "body"), STORE_CHANGES)
def test_another_sites_store_change_is_refused_and_writes_nothing(server, method, path, body):
    before = store_files(server)
    r = send(server, method, path, body, Origin=EVIL)
    assert r.status_code == 403 and "allowed_origins" in r.json()["error"]
    assert store_files(server) == before


@pytest.mark.parametrize(("path", "shape"), [("/api/tags", "ollama"), ("/v1/models", "openai"),
                                             ("/api/requests", "monitor")])
def test_another_sites_reads_are_refused_in_the_familys_shape(server, path, shape):
    r = send(server, "GET", path, Origin=EVIL)
    assert r.status_code == 403
    error = r.json()["error"]
    assert (error["type"] == "permission_error") if shape == "openai" else isinstance(error, str)


@pytest.mark.parametrize("path", ["/api/tags", "/v1/models", "/api/requests", "/health"])
def test_a_rebinding_host_name_is_refused(server, path):
    r = send(server, "GET", path, Host=f"rebind.evil.example:{server.port}")
    assert r.status_code == 403 and "allowed_hosts" in r.text


def test_the_servers_own_pages_and_local_tools_are_served(server):
    assert send(server, "GET", "/api/tags", Origin=server.url).status_code == 200
    assert send(server, "POST", "/api/show", {"model": MODEL}, Origin="http://localhost:5173").status_code == 200


def test_a_page_must_send_json_as_json_but_curl_may_send_a_form_type(server):
    page = requests.post(server.url + "/api/show", data=f'{{"model": "{MODEL}"}}', timeout=60,
                         headers={"Content-Type": "text/plain;charset=UTF-8", "Origin": server.url})
    assert page.status_code == 403 and "application/json" in page.json()["error"]
    curl = requests.post(server.url + "/api/show", data=f'{{"model": "{MODEL}"}}', timeout=60,
                         headers={"Content-Type": "application/x-www-form-urlencoded"})
    assert curl.status_code == 200


def test_store_changes_can_be_turned_off(tmp_path):
    with GatewayServer(tmp_path, {**DEFAULT_CONFIG, "store_changes": False}) as gw:
        r = send(gw, "POST", "/api/copy", {"source": MODEL, "destination": "copy"})
        assert r.status_code == 403 and "store_changes" in r.json()["error"]
        assert store_files(gw) == []
        assert send(gw, "GET", "/api/tags").status_code == 200


# -- a real browser on a page of another origin ------------------------------------------------------------------

ATTACK_PAGE = """<!doctype html><title>innocent</title><script>
const target = "{target}";
const attempts = [
  ["POST", "/api/copy", {{source: "{model}", destination: "victim"}}],
  ["POST", "/api/create", {{model: "victim", from: "{model}"}}],
  ["DELETE", "/api/delete", {{model: "{model}"}}],
  ["POST", "/api/generate", {{model: "{model}", keep_alive: 0}}],
];
window.results = [];
Promise.all(attempts.map(([method, path, body]) =>
  fetch(target + path, {{method, body: JSON.stringify(body), mode: "no-cors"}})   // text/plain: no preflight
    .then(r => window.results.push(path + " sent"), e => window.results.push(path + " failed"))
)).then(() => {{ document.title = "done"; }});
</script>"""


@pytest.fixture
def attack_site(server: GatewayServer, tmp_path: Path) -> Iterator[str]:
    (tmp_path / "index.html").write_text(ATTACK_PAGE.format(target=server.url, model=MODEL))
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(tmp_path))
    httpd = http.server.ThreadingHTTPServer(("127.0.0.2", free_port()), handler)  # another origin
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.2:{httpd.server_address[1]}/index.html"
    httpd.shutdown()


def test_a_page_from_another_origin_in_chromium_changes_nothing(server, attack_site, tmp_path):
    send(server, "POST", "/api/generate", {"model": MODEL})  # loaded: the unload attempt has something to do
    before = store_files(server)
    with chromium(tmp_path / "profile") as driver:
        driver.get(attack_site)
        for _ in range(200):
            if driver.title == "done":
                break
            threading.Event().wait(0.1)
        assert driver.title == "done", driver.execute_script("return window.results")
    assert store_files(server) == before
    assert requests.get(server.url + "/api/tags", timeout=30).json()["models"]  # the model was not deleted
    running = requests.get(server.url + "/api/ps", timeout=30).json()["models"]
    assert any(m["name"].startswith(MODEL) for m in running)  # nor unloaded


def test_a_pull_from_a_private_address_needs_the_opt_in(server):
    """Server-side request forgery through /api/pull: a name may carry any host; without
    `registry_private_networks` none on loopback, private or link-local addresses is contacted."""
    before = store_files(server)
    r = send(server, "POST", "/api/pull", {"model": "169.254.169.254/latest/meta-data", "insecure": True,
                                          "stream": False})
    assert r.status_code == 403 and "private or local network" in r.json()["error"]
    assert store_files(server) == before

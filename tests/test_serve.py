"""`nmt serve` as users meet it: a real server process on loopback, its JSON API through an HTTP client, and
its page in headless Chromium (Debian's package, driven by Playwright; no browser download)."""

from __future__ import annotations

import os
import random
import shutil
import socket
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import pytest

from conftest import ROOT, WORDS, nmt

MAX_BYTES, MAX_LINES = 4096, 8
SCREENSHOTS = Path(os.environ.get("NMT_TEST_OUTPUT", ROOT / "tests" / "output"))


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def server(trained):
    port = free_port()
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "nmt",
            "serve",
            "-m",
            str(trained["model"]),
            "--port",
            str(port),
            "--threads",
            "1",
            "--max-bytes",
            str(MAX_BYTES),
            "--max-lines",
            str(MAX_LINES),
            "--beam",
            "3",
        ],
        env={**os.environ, "PYTHONPATH": str(ROOT)},
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 120
    while True:
        try:
            if httpx.get(f"{url}/health", timeout=2).status_code == 200:
                break
        except httpx.TransportError:
            pass
        if proc.poll() is not None or time.monotonic() > deadline:
            proc.kill()
            pytest.fail(f"nmt serve did not come up: {proc.communicate()[0][-2000:]}")
        time.sleep(0.2)
    yield url
    proc.terminate()
    proc.wait(timeout=30)


def post(url: str, payload=None, **kwargs) -> httpx.Response:
    return httpx.post(f"{url}/translate", json=payload, timeout=120, **kwargs)


def test_health_and_translation_like_the_command_line(server, trained):
    health = httpx.get(f"{server}/health").json()
    assert health["status"] == "ok" and health["model"] == [str(trained["model"])] and health["beam"] == 3
    lines = ["red dog", "", "big house runs", "cat"]
    answer = post(server, {"text": lines, "beam": 2})
    assert answer.status_code == 200
    cli = nmt(
        "translate",
        "-m",
        str(trained["model"]),
        "--beam",
        "2",
        cwd=trained["work"],
        stdin="\n".join(lines) + "\n",
    )
    assert answer.json() == {"translations": cli.stdout.splitlines()}
    assert answer.json()["translations"][1] == ""


def test_attention_on_request(server):
    answer = post(server, {"text": ["red dog runs", ""], "attention": True}).json()
    first, empty = answer["attention"]
    assert empty is None
    assert len(first["weights"]) == len(first["target"]) + 1  # translation pieces and the EOS
    assert all(len(row) == len(first["source"]) + 1 for row in first["weights"])
    assert all(abs(sum(row) - 1) < 1e-2 for row in first["weights"])
    assert "".join(first["target"]).replace("\u2581", " ").strip() == answer["translations"][0]


@pytest.mark.parametrize(
    "send, status, message",
    [
        (dict(content=b'{"text": ["red dog"'), 422, "body: not valid JSON at character"),
        (dict(json={"text": "red dog"}), 422, "text: Input should be a valid list"),
        (
            dict(json={"text": ["red dog"], "beam": 0}),
            422,
            "beam: Input should be greater than or equal to 1",
        ),
        (dict(json={"text": [3]}), 422, "text.0: Input should be a valid string"),
        (dict(json={"txt": ["red dog"]}), 422, "text: Field required (and 1 more)"),
        (
            dict(json={"text": ["red dog"] * (MAX_LINES + 1)}),
            413,
            f"9 lines: over the server's limit of {MAX_LINES}",
        ),
        (
            dict(json={"text": ["red dog " * 1000]}),
            413,
            f"request body over the server's limit of {MAX_BYTES} bytes",
        ),
        (
            dict(content=iter([b'{"text": ["', b"red " * 2000, b'"]}'])),
            413,
            "request body over the server's limit",
        ),
    ],
    ids=[
        "bad-json",
        "not-a-list",
        "beam-0",
        "not-strings",
        "unknown-key",
        "too-many-lines",
        "too-big",
        "too-big-chunked",
    ],
)
def test_bad_requests_get_a_status_and_a_message(server, send, status, message):
    response = httpx.post(
        f"{server}/translate", headers={"content-type": "application/json"}, timeout=60, **send
    )
    assert response.status_code == status
    assert response.json()["error"].startswith(message)
    assert post(server, {"text": ["red dog"]}).status_code == 200  # and the server goes on


def test_30_concurrent_requests_get_their_own_answers(server):
    rng = random.Random(7)
    words = list(WORDS)
    requests = [
        {
            "text": [" ".join(rng.choices(words, k=rng.randint(1, 6))) for _ in range(rng.randint(1, 3))],
            "beam": rng.randint(1, 4),
            "attention": rng.random() < 0.3,
        }
        for _ in range(30)
    ]
    alone = [post(server, r).json() for r in requests]
    start = threading.Barrier(len(requests))

    def send(request):
        start.wait()  # all 30 at once
        return post(server, request)

    with ThreadPoolExecutor(len(requests)) as pool:
        together = list(pool.map(send, requests))
    assert [r.status_code for r in together] == [200] * len(requests)
    for request, single, response in zip(requests, alone, together):
        assert response.json() == single, request


CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")


@pytest.mark.skipif(
    CHROMIUM is None and not os.environ.get("NMT_REQUIRE_BROWSER"),
    reason="Debian's chromium is not installed (.ci/run installs it and sets NMT_REQUIRE_BROWSER=1)",
)
def test_page_in_headless_chromium(server):
    from playwright.sync_api import sync_playwright

    expected = post(server, {"text": ["big red dog"], "attention": True}).json()
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    shot = SCREENSHOTS / "serve-page.png"
    with sync_playwright() as p:
        browser = p.chromium.launch(
            executable_path=CHROMIUM,
            args=[
                "--no-sandbox",
                "--disable-gpu",
                "--disable-quic",
                "--no-first-run",
                "--disable-background-networking",
                "--disable-component-update",
                "--disable-sync",
            ],
        )
        try:
            page = browser.new_page(viewport={"width": 1000, "height": 800})
            page.goto(server + "/")
            page.fill("#source", "big red dog")
            page.click("#translate")
            page.wait_for_selector("#output li.translation", timeout=60_000)
            assert page.inner_text("#output li.translation") == expected["translations"][0]
            cells = page.locator("#heatmap tbody tr")
            attention = expected["attention"][0]
            assert cells.count() == len(attention["target"]) + 1
            assert page.locator("#heatmap tbody tr:first-child td").count() == len(attention["source"]) + 1
            assert page.locator("#heatmap thead th").all_inner_texts()[1:] == attention["source"] + ["</s>"]
            assert page.inner_text("#error") == ""
            page.screenshot(path=str(shot), full_page=True)
        finally:
            browser.close()
    assert shot.stat().st_size > 0
    print(f"screenshot: {shot}")


def test_serve_user_errors_are_one_line(trained, tmp_path):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        busy = nmt("serve", "-m", str(trained["model"]), "--port", str(port), cwd=tmp_path)
    assert busy.returncode == 1 and busy.stderr.strip().startswith(
        f"nmt: error: 127.0.0.1:{port}: cannot listen there"
    )
    bad = nmt("serve", "-m", str(trained["model"]), "--port", "70000", cwd=tmp_path)
    assert bad.returncode == 2 and "--port must be a port number, 1 to 65535, got '70000'" in bad.stderr
    missing = nmt("serve", "-m", "missing.safetensors", "--port", str(free_port()), cwd=tmp_path)
    assert missing.returncode == 1 and "missing.safetensors: model file not found" in missing.stderr
    assert "Traceback" not in busy.stderr + bad.stderr + missing.stderr


def test_n_best_on_request(server, trained):
    lines = ["red dog", "", "big house runs"]
    answer = post(server, {"text": lines, "beam": 3, "n_best": 3})
    assert answer.status_code == 200
    body = answer.json()
    from nmt.translate import Translator

    expected = Translator.load(trained["model"], device="cpu").translate(lines, n_best=3, beam=3)
    assert body["translations"] == [hyps[0][0] for hyps in expected]
    assert [[h["text"] for h in hyps] for hyps in body["n_best"]] == [
        [t for t, _ in hyps] for hyps in expected
    ]
    assert post(server, {"text": lines, "beam": 2, "n_best": 3}).status_code == 422  # more than the beam

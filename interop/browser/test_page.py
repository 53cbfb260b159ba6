"""The chat page (/) and the admin page (/admin) in a real browser (headless Chromium, driven
by Playwright) against a real roomcast node started and restarted by this test.

Run through interop/browser/run.sh, which sets:
  ROOMCAST_BIN    the roomcast binary under test
  BROWSER_OUT     folder for screenshots and the node's log (CI artifacts)
  CHROMIUM        the Chromium executable (default: `chromium` on PATH)
  BROWSER_WAIT_MS bound of every wait (default 10000)

The story: alice and bob (two browser contexts, so two sessions) pick their names, see their
rooms with unread badges, open one room, chat, and see each other in the presence list; the
node stops, messages are published while both pages are away (by the same node on another
port, so the pages cannot be back before them), the node starts again on its port with the
same data directory, and both pages show every message exactly once, in offset order; the
admin page lists the nodes, the busiest rooms, the counters and alice's connection, and
disconnects it. A browser that cannot start is a failure, never a skip.
"""

import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import time
import urllib.request
from pathlib import Path

import pytest
from playwright.sync_api import Page, expect, sync_playwright

BIN = os.environ.get("ROOMCAST_BIN", "")
OUT = Path(os.environ.get("BROWSER_OUT", "browser-out"))
WAIT_MS = int(os.environ.get("BROWSER_WAIT_MS", "10000"))
API_KEY = secrets.token_hex(16)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Node:
    """One roomcast process on a loopback port, with a data directory that outlives it."""

    def __init__(self, data: Path, log: Path):
        self.data = data
        self.log = log
        self.proc = None
        self.port = None

    def start(self, port: int) -> None:
        env = {k: v for k, v in os.environ.items() if not k.startswith("ROOMCAST_")}
        env["NO_COLOR"] = "1"
        with open(self.log, "a") as log:
            log.write(f"--- start on port {port}\n")
            self.proc = subprocess.Popen(
                [BIN, "serve", "--insecure", "--listen", f"127.0.0.1:{port}",
                 "--data-dir", str(self.data), "--api-key", API_KEY],
                stdout=log, stderr=subprocess.STDOUT, env=env,
            )
        self.port = port
        deadline = time.monotonic() + WAIT_MS / 1000
        while time.monotonic() < deadline:
            assert self.proc.poll() is None, f"roomcast exited at start; see {self.log}"
            try:
                with urllib.request.urlopen(f"{self.url}/ready", timeout=1) as r:
                    if r.status == 200:
                        return
            except OSError:
                pass
            time.sleep(0.05)
        raise AssertionError(f"roomcast not ready on port {port} within {WAIT_MS} ms")

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.proc = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def api(self, method: str, body: dict) -> dict:
        req = urllib.request.Request(
            f"{self.url}/api/{method}", data=json.dumps(body).encode(),
            headers={"X-API-Key": API_KEY, "Content-Type": "application/json"},
        )
        with urllib.request.urlopen(req, timeout=5) as r:
            answer = json.load(r)
        assert "error" not in answer, f"{method}: {answer}"
        return answer["result"]


@pytest.fixture
def node(tmp_path):
    assert BIN and os.access(BIN, os.X_OK), "ROOMCAST_BIN must name the roomcast binary (run.sh sets it)"
    OUT.mkdir(parents=True, exist_ok=True)
    n = Node(tmp_path / "data", OUT / "roomcast.log")
    n.start(free_port())
    yield n
    n.stop()


@pytest.fixture
def browser():
    exe = os.environ.get("CHROMIUM") or shutil.which("chromium") or shutil.which("chromium-browser")
    assert exe, "no Chromium found (apt-get install chromium, or set CHROMIUM)"
    with sync_playwright() as p:
        # Fails the test (not a skip) when the browser cannot start.
        b = p.chromium.launch(executable_path=exe, args=["--no-sandbox", "--disable-dev-shm-usage"])
        yield b
        b.close()


def shot(page: Page, name: str) -> None:
    page.screenshot(path=str(OUT / f"{name}.png"), full_page=True)


def enter(browser, node: Node, user: str) -> Page:
    page = browser.new_context().new_page()
    page.set_default_timeout(WAIT_MS)
    errors = []
    page.on("pageerror", lambda e: errors.append(str(e)))
    page.errors = errors
    page.goto(node.url + "/")
    page.fill("#name", user)
    page.click("#enter")
    expect(page.locator("body")).to_have_attribute("data-connected", "1")
    return page


def shown(page: Page) -> list:
    """(offset, user, text) of every message the page shows, in screen order."""
    return page.eval_on_selector_all(
        "#messages li.msg",
        "els => els.map(e => [Number(e.dataset.offset), e.querySelector('.who').textContent,"
        " e.querySelector('.text').textContent])",
    )


def wait_shown(page: Page, count: int) -> list:
    page.wait_for_function(
        "n => document.querySelectorAll('#messages li.msg').length >= n", arg=count
    )
    return shown(page)


def test_two_users_chat_survive_a_restart_and_the_admin_page_sees_them(node, browser):
    room = f"lobby-{secrets.token_hex(4)}"
    other = f"news-{secrets.token_hex(4)}"
    for r in (room, other):
        node.api("add_members", {"channel": r, "users": ["alice", "bob"]})
    for i in (1, 2):
        node.api("publish", {"channel": other, "data": {"text": f"news {i}"}})

    alice = enter(browser, node, "alice")
    bob = enter(browser, node, "bob")

    # Rooms with unread badges: two unread in `other`, none in `room`.
    badge = bob.locator(f"#rooms li[data-channel='{other}'] .badge")
    expect(badge).to_have_text("2")
    expect(bob.locator(f"#rooms li[data-channel='{room}']")).to_be_visible()
    expect(bob.locator(f"#rooms li[data-channel='{room}'] .badge")).to_have_count(0)
    shot(bob, "01-bob-rooms-with-badges")

    # Opening `other` shows its history and clears the badge.
    bob.click(f"#rooms li[data-channel='{other}']")
    assert [m[2] for m in wait_shown(bob, 2)] == ["news 1", "news 2"]
    expect(badge).to_have_count(0)

    for page in (alice, bob):
        page.click(f"#rooms li[data-channel='{room}']")
        expect(page.locator("body")).to_have_attribute("data-subscribed", "1")
    expect(bob.locator("#presence li[data-user='alice']")).to_be_visible()
    expect(bob.locator("#presence li[data-user='bob']")).to_be_visible()
    expect(alice.locator("#presence li[data-user='bob']")).to_be_visible()

    alice.fill("#text", "hello bob")
    alice.click("#send")
    assert wait_shown(bob, 1) == [[1, "alice", "hello bob"]]
    bob.fill("#text", "hi alice")
    bob.click("#send")
    assert wait_shown(alice, 2) == [[1, "alice", "hello bob"], [2, "bob", "hi alice"]]
    shot(alice, "02-alice-chat")
    shot(bob, "02-bob-chat")

    # Restart: the node stops; while both pages are away, the same data directory serves
    # on another port (where the pages are not) and takes three messages; then the node
    # starts again on its own port and the pages come back on their own.
    port = node.port
    node.stop()
    for page in (alice, bob):
        expect(page.locator("body")).to_have_attribute("data-connected", "0")
        expect(page.locator("#presence li")).to_have_count(0)
    shot(bob, "03-bob-server-down")
    node.start(free_port())
    for i in (1, 2, 3):
        node.api("publish", {"channel": room, "data": {"text": f"while away {i}"}})
    node.stop()
    node.start(port)
    want = [
        [1, "alice", "hello bob"],
        [2, "bob", "hi alice"],
        [3, "server", "while away 1"],
        [4, "server", "while away 2"],
        [5, "server", "while away 3"],
    ]
    for page in (alice, bob):
        expect(page.locator("body")).to_have_attribute("data-connected", "1")
        expect(page.locator("body")).to_have_attribute("data-subscribed", "1")
        assert wait_shown(page, 5) == want, "a message is missing, repeated or out of order"
        expect(page.locator("body")).to_have_attribute("data-recovered", "1")
    expect(bob.locator("#presence li[data-user='alice']")).to_be_visible()
    # Reading moves the cursors in the store (half a second after the newest message shown):
    # nothing stays unread where bob's page has been.
    deadline = time.monotonic() + WAIT_MS / 1000
    while True:
        unread = node.api("unread", {"user": "bob", "channels": [other, room]})["channels"]
        if [c["unread"] for c in unread] == [0, 0]:
            break
        assert time.monotonic() < deadline, f"cursors did not follow the reading: {unread}"
        time.sleep(0.1)
    expect(bob.locator(f"#rooms li[data-channel='{other}']")).to_be_visible()
    expect(bob.locator(f"#rooms li[data-channel='{other}'] .badge")).to_have_count(0)
    alice.fill("#text", "back again")
    alice.click("#send")
    assert wait_shown(bob, 6)[-1] == [6, "alice", "back again"]
    shot(alice, "04-alice-after-restart")
    shot(bob, "04-bob-after-restart")

    # The admin page: nodes, busiest rooms, counters, alice's connection, disconnect.
    admin = browser.new_context().new_page()
    admin.set_default_timeout(WAIT_MS)
    admin.goto(node.url + "/admin")
    admin.fill("#apikey", API_KEY)
    admin.click("#use-key")
    nodes = admin.locator("#nodes tbody tr")
    expect(nodes).to_have_count(1)
    expect(nodes.locator("td").nth(1)).to_have_text("2")  # connections
    expect(nodes.locator("td").nth(2)).to_have_text("2")  # users
    expect(admin.locator(f"#busiest tr[data-room='{room}'] td").nth(1)).to_have_text("2")
    expect(admin.locator("#counters tr[data-metric='roomcast_connections'] td").nth(1)).to_have_text("2")
    admin.fill("#lookup-user", "alice")
    admin.click("#lookup")
    conn = admin.locator("#connections tbody tr")
    expect(conn).to_have_count(1)
    shot(admin, "05-admin")
    conn.locator("button.disconnect").click()
    expect(alice.locator("body")).to_have_attribute("data-connected", "0")
    expect(alice.locator("#status")).to_contain_text("disconnected")
    expect(conn).to_have_count(0)
    expect(nodes.locator("td").nth(1)).to_have_text("1")

    # Publishing from the admin page reaches bob.
    admin.fill("#pub-channel", room)
    admin.fill("#pub-data", '{"text": "from the admin page"}')
    admin.click("#pub-send")
    expect(admin.locator("#pub-result")).to_contain_text("offset 7")
    assert wait_shown(bob, 7)[-1] == [7, "server", "from the admin page"]
    shot(admin, "06-admin-after-disconnect")
    shot(bob, "06-bob-final")
    shot(alice, "06-alice-disconnected")

    for page in (alice, bob, admin):
        assert not getattr(page, "errors", []), f"script errors: {page.errors}"


def test_page_login_is_refused_outside_insecure_mode_and_pages_can_be_off(tmp_path):
    """Without --insecure, /page/login signs nothing; with web_pages = false, / is 404."""
    assert BIN and os.access(BIN, os.X_OK), "ROOMCAST_BIN must name the roomcast binary"
    port = free_port()
    config = tmp_path / "roomcast.toml"
    config.write_text("web_pages = false\n")
    for extra, want_page in (([], 200), (["--config", str(config)], 404)):
        env = {k: v for k, v in os.environ.items() if not k.startswith("ROOMCAST_")}
        proc = subprocess.Popen(
            [BIN, "serve", "--listen", f"127.0.0.1:{port}", "--data-dir", str(tmp_path / "d"), *extra],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env,
        )
        try:
            deadline = time.monotonic() + WAIT_MS / 1000
            while True:
                try:
                    urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=1)
                    break
                except OSError:
                    assert time.monotonic() < deadline, "roomcast did not start"
                    time.sleep(0.05)

            def status(path, data=None):
                try:
                    with urllib.request.urlopen(
                        urllib.request.Request(f"http://127.0.0.1:{port}{path}", data=data), timeout=5
                    ) as r:
                        return r.status, r.read()
                except urllib.error.HTTPError as e:
                    return e.code, e.read()

            assert status("/")[0] == want_page
            assert status("/admin")[0] == want_page
            code, body = status("/page/login", b'{"user": "mallory"}')
            if want_page == 200:
                assert code == 403 and b"insecure" in body
            else:
                assert code == 404
        finally:
            proc.send_signal(signal.SIGTERM)
            proc.wait(timeout=15)

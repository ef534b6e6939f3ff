"""Screenshots of the real Jaeger UI for docs/tracing.md: a commit of 1,000 ConfigMaps and a heal.

    python hack/jaeger_screenshots.py --ui-assets ~/jaeger-ui/packages/jaeger-ui/build \\
        [--objects 1000] [--out docs/images] [--chromium /usr/bin/chromium]

Everything runs on this machine, on loopback: the real control plane and Jaeger
(``aioreconcile.testing``; Jaeger serves the jaeger-ui build given by ``--ui-assets``), a bare
repository behind ``git daemon``, and ``aioreconcile run`` as a separate process exporting to
Jaeger. The repository's first commit (a Namespace and N ConfigMaps of about 1.5 KiB each) is
applied by the controller's start-up poll; the second changes every ConfigMap and is pushed
through a signed GitHub webhook, which makes the commit trace shown. ``kubectl patch`` then
edits one ConfigMap (field manager ``kubectl-patch``), and the controller heals it: the heal
trace. Headless Chromium is driven over the DevTools protocol (aiohttp's websocket client, no
other dependency) to open the pages, click what must be open and take the PNGs.

The jaeger-ui build is not part of this repository: ``git clone`` jaeger-ui, check out
v1.74.0 (the newest that builds with Node 20), ``npm install`` at its root and ``npm run build``
in ``packages/jaeger-ui``; its ``build/`` directory is what ``--ui-assets`` takes.
"""

import argparse
import base64
import hashlib
import hmac
import json
import os
import secrets
import shutil
import subprocess
import sys
import tempfile
import time
import urllib.parse
import urllib.request
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager, contextmanager
from pathlib import Path
from typing import Any

import aiohttp
import anyio
import yaml

from aioreconcile.testing import Jaeger, start_control_plane, start_jaeger
from aioreconcile.testing.controlplane import free_port

SERVICE = "aioreconcile"
SYNC = "shop"
NAMESPACE = "shop"
EDITED = "settings-0042"
WIDTH, HEIGHT = 1600, 1000


# --- the repository ---------------------------------------------------------------------------


def _git(*args: str, cwd: Path, home: Path) -> str:
    env = {
        "PATH": os.environ["PATH"],
        "HOME": str(home),
        "GIT_CONFIG_NOSYSTEM": "1",
        "GIT_AUTHOR_NAME": "Ada Author",
        "GIT_AUTHOR_EMAIL": "ada@example.com",
        "GIT_COMMITTER_NAME": "Ada Author",
        "GIT_COMMITTER_EMAIL": "ada@example.com",
    }
    return subprocess.run(
        ["git", "-c", "init.defaultBranch=main", *args],
        cwd=cwd,
        env=env,
        check=True,
        capture_output=True,
        text=True,
    ).stdout.strip()


def _config_map(index: int, release: str) -> dict[str, Any]:
    """A ConfigMap of the size real ones have: an application file and a few variables."""
    name = f"settings-{index:04d}"
    properties = "\n".join(
        [
            f"server.port={8000 + index % 100}",
            f"service.name=shop-{index:04d}",
            f"release={release}",
            "db.url=postgres://db.shop.svc:5432/shop",
            "db.pool.max=20",
            "cache.ttl=300s",
            "http.client.timeout=5s",
            "http.client.retries=3",
            *(f"feature.flag-{f}={'on' if (index + f) % 3 else 'off'}" for f in range(24)),
        ]
    )
    return {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": {"name": name, "namespace": NAMESPACE, "labels": {"app": "shop"}},
        "data": {
            "application.properties": properties + "\n",
            "LOG_LEVEL": "info",
            "RELEASE": release,
            "REGION": ("eu-west-1", "us-east-1", "ap-south-1")[index % 3],
        },
    }


def _commit(work: Path, home: Path, *, n: int, release: str, message: str) -> str:
    docs: list[dict[str, Any]] = [
        {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": NAMESPACE}}
    ]
    docs += [_config_map(i, release) for i in range(n)]
    (work / "deploy").mkdir(exist_ok=True)
    (work / "deploy" / "shop.yaml").write_text(yaml.safe_dump_all(docs))
    _git("add", "--all", cwd=work, home=home)
    _git("commit", "--quiet", "-m", message, cwd=work, home=home)
    _git("push", "--quiet", "origin", "HEAD:main", cwd=work, home=home)
    return _git("rev-parse", "HEAD", cwd=work, home=home)


@contextmanager
def _git_daemon(root: Path) -> Iterator[str]:
    port = free_port()
    daemon = subprocess.Popen(
        [
            *("git", "daemon", "--reuseaddr", "--export-all", "--listen=127.0.0.1"),
            *(f"--port={port}", f"--base-path={root}", str(root)),
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        yield f"git://127.0.0.1:{port}/"
    finally:
        daemon.terminate()
        daemon.wait(timeout=10)


# --- the controller ---------------------------------------------------------------------------


def _get_json(url: str) -> Any:
    with urllib.request.urlopen(url, timeout=10) as response:
        return json.loads(response.read())


async def _wait(what: str, check: Any, *, seconds: float = 180) -> Any:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        try:
            found = await anyio.to_thread.run_sync(check)
        except OSError:
            found = None
        if found:
            return found
        await anyio.sleep(0.5)
    raise SystemExit(f"timed out after {seconds:.0f} s waiting for {what}")


def _applied(ops: str, sha: str) -> bool:
    status = _get_json(f"{ops}/status")
    return any(s["name"] == SYNC and s.get("lastAppliedRevision") == sha for s in status["syncs"])


def _push(webhook: str, secret: str, *, url: str, before: str, after: str) -> None:
    body = json.dumps(
        {
            "ref": "refs/heads/main",
            "before": before,
            "after": after,
            "repository": {"clone_url": url, "html_url": url},
            "head_commit": {"id": after, "message": "release 2026.12.1"},
            "commits": [],
        }
    ).encode()
    signature = hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()
    request = urllib.request.Request(
        f"{webhook}/hooks/github",
        data=body,
        headers={
            "X-GitHub-Event": "push",
            "X-GitHub-Delivery": secrets.token_hex(8),
            "X-Hub-Signature-256": f"sha256={signature}",
            "Content-Type": "application/json",
            "User-Agent": "GitHub-Hookshot/screenshots",
        },
    )
    with urllib.request.urlopen(request, timeout=10) as response:
        if response.status != 202:
            raise SystemExit(f"webhook answered {response.status}")


def _traces(jaeger: Jaeger, sha: str) -> list[dict[str, Any]]:
    query = urllib.parse.urlencode(
        {"service": SERVICE, "tags": json.dumps({"vcs.ref.head.revision": sha}), "limit": "20"}
    )
    found: list[dict[str, Any]] = _get_json(f"{jaeger.query_url}/api/traces?{query}")["data"]
    return found or []


def _root_named(trace: dict[str, Any], prefix: str) -> bool:
    return any(
        s["operationName"].startswith(prefix)
        and not any(r["refType"] == "CHILD_OF" for r in s["references"])
        for s in trace["spans"]
    )


def _commit_and_heal(jaeger: Jaeger, sha: str, n: int) -> tuple[str, str] | None:
    """The ids of the complete commit trace of ``sha`` and of its heal, once both are stored."""
    traces = _traces(jaeger, sha)
    commits = [
        t
        for t in traces
        if any(s["operationName"] == f"reconcile {SYNC}" for s in t["spans"])
        and len(t["spans"]) > n
    ]
    heals = [t for t in traces if _root_named(t, "heal ")]
    if commits and heals:
        return commits[0]["traceID"], heals[0]["traceID"]
    return None


# --- the browser ------------------------------------------------------------------------------


class Page:
    """One Chromium tab over the DevTools protocol: navigate, wait, click, screenshot."""

    def __init__(self, socket: aiohttp.ClientWebSocketResponse) -> None:
        self._socket = socket
        self._next = 0

    async def call(self, method: str, **params: Any) -> dict[str, Any]:
        self._next += 1
        await self._socket.send_json({"id": self._next, "method": method, "params": params})
        while True:
            message = json.loads((await self._socket.receive()).data)
            if message.get("id") == self._next:
                if "error" in message:
                    raise RuntimeError(f"{method}: {message['error']}")
                result: dict[str, Any] = message["result"]
                return result

    async def evaluate(self, expression: str) -> Any:
        result = await self.call("Runtime.evaluate", expression=expression, returnByValue=True)
        return result["result"].get("value")

    async def open(self, url: str, *, ready: str, seconds: float = 60) -> None:
        await self.call("Page.navigate", url=url)
        await self.wait_for(ready, seconds=seconds)

    async def wait_for(self, selector: str, *, seconds: float = 60) -> None:
        deadline = time.monotonic() + seconds
        while not await self.evaluate(f"!!document.querySelector({json.dumps(selector)})"):
            if time.monotonic() > deadline:
                raise SystemExit(f"the page never showed {selector}")
            await anyio.sleep(0.25)
        await anyio.sleep(1.0)  # let the layout settle (fonts, the minimap's canvas)

    async def click(self, selector: str, *, text: str = "", inner: str = "") -> None:
        """A real mouse click at the centre of the first element matching ``selector`` that
        contains ``text`` (or of its descendant ``inner``): antd's selects open on mouse events,
        not on ``element.click()``."""
        box = await self.evaluate(
            f"""(() => {{
              const all = [...document.querySelectorAll({json.dumps(selector)})];
              let el = all.find(e => e.textContent.includes({json.dumps(text)}));
              if (el && {json.dumps(inner)}) el = el.querySelector({json.dumps(inner)});
              if (!el) return null;
              el.scrollIntoView({{block: 'nearest'}});
              const r = el.getBoundingClientRect();
              return [r.x + r.width / 2, r.y + r.height / 2];
            }})()"""
        )
        if box is None:
            raise SystemExit(f"nothing to click: {selector} containing {text!r} {inner}")
        x, y = box
        for kind in ("mouseMoved", "mousePressed", "mouseReleased"):
            await self.call(
                "Input.dispatchMouseEvent", type=kind, x=x, y=y, button="left", clickCount=1
            )
        await anyio.sleep(1.0)

    async def screenshot(self, path: Path) -> None:
        shot = await self.call("Page.captureScreenshot", format="png")
        png = base64.b64decode(shot["data"])
        await anyio.Path(path).write_bytes(png)
        print(f"# wrote {path} ({len(png) // 1024} KiB)", file=sys.stderr)


@asynccontextmanager
async def chromium(binary: str) -> AsyncIterator[Page]:
    profile = Path(tempfile.mkdtemp(prefix="aioreconcile-chromium-"))
    process = await anyio.open_process(
        [
            binary,
            *("--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run"),
            *("--disable-background-networking", "--disable-component-update", "--disable-sync"),
            *("--remote-debugging-address=127.0.0.1", "--remote-debugging-port=0"),
            f"--user-data-dir={profile}",
            f"--window-size={WIDTH},{HEIGHT}",
            "about:blank",
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        port_file = profile / "DevToolsActivePort"
        await _wait("Chromium's DevTools port", lambda: port_file.is_file(), seconds=30)
        port = port_file.read_text().split()[0]
        targets = await _wait(
            "a Chromium tab",
            lambda: [
                t for t in _get_json(f"http://127.0.0.1:{port}/json/list") if t["type"] == "page"
            ],
            seconds=30,
        )
        async with (
            aiohttp.ClientSession() as session,
            session.ws_connect(targets[0]["webSocketDebuggerUrl"], max_msg_size=0) as socket,
        ):
            page = Page(socket)
            await page.call(
                "Emulation.setDeviceMetricsOverride",
                width=WIDTH,
                height=HEIGHT,
                deviceScaleFactor=1,
                mobile=False,
            )
            yield page
    finally:
        process.terminate()
        await process.wait()
        shutil.rmtree(profile, ignore_errors=True)


async def _screenshots(
    binary: str, jaeger: Jaeger, *, sha: str, commit: str, heal: str, out: Path
) -> None:
    search = urllib.parse.urlencode(
        {
            "service": SERVICE,
            "tags": json.dumps({"vcs.ref.head.revision": sha}),
            "lookback": "1h",
            "limit": "20",
        }
    )
    async with chromium(binary) as page:
        await page.open(f"{jaeger.query_url}/search?{search}", ready=".ResultItem")
        await page.screenshot(out / "jaeger-search-by-sha.png")
        # The Operation list: a handful of names for a thousand objects.
        await page.click(".ant-select", text="all")
        await page.wait_for(".ant-select-item-option")
        await page.screenshot(out / "jaeger-operations.png")

        await page.open(f"{jaeger.query_url}/trace/{commit}", ready=".span-row")
        await page.screenshot(out / "jaeger-commit-objects.png")
        # Fold the object spans: every stage of the reconcile on one screen.
        await page.click(".span-row", text="apply namespaced", inner=".SpanTreeOffset.is-parent")
        await page.screenshot(out / "jaeger-commit-trace.png")
        # The root's details: the short SHA and trigger first, the link to the webhook request.
        await page.click(".span-name", text=f"reconcile {SYNC}")
        await page.click(".AccordianKeyValues--header", text="Tags")
        await page.click(".AccordianReferences--header", text="References")
        await page.screenshot(out / "jaeger-commit-root.png")

        await page.open(f"{jaeger.query_url}/trace/{heal}", ready=".span-row")
        await page.click(".span-name", text="heal ConfigMap")  # the root's details
        await page.click(".AccordianKeyValues--header", text="Tags")
        await page.click(".AccordianReferences--header", text="References")
        await page.screenshot(out / "jaeger-heal-trace.png")
        # The tags table scrolls (450 px): its end holds the revision and the repository.
        await page.evaluate("document.querySelector('.KeyValueTable').scrollTop = 1e6")
        await anyio.sleep(0.5)
        await page.screenshot(out / "jaeger-heal-revision.png")


# --- all together -----------------------------------------------------------------------------


async def make(args: argparse.Namespace) -> None:
    out: Path = args.out
    with tempfile.TemporaryDirectory(prefix="aioreconcile-screenshots-") as scratch:
        root = Path(scratch)
        served, home = root / "served", root / "home"
        served.mkdir()
        home.mkdir()
        _git("init", "--quiet", "--bare", str(served / "deploy.git"), cwd=root, home=home)
        work = root / "work"
        _git("clone", "--quiet", str(served / "deploy.git"), str(work), cwd=root, home=home)
        first = _commit(work, home, n=args.objects, release="2026.11.30", message="shop: v1")
        async with (
            start_control_plane() as plane,
            start_jaeger(ui_assets=args.ui_assets) as jaeger,
        ):
            with _git_daemon(served) as daemon:
                url = f"{daemon}deploy.git"
                secret = secrets.token_hex(16)
                (root / "config.yaml").write_text(
                    yaml.safe_dump(
                        {
                            "syncs": [
                                {
                                    "name": SYNC,
                                    "source": {"url": url, "ref": "main", "path": "deploy"},
                                }
                            ],
                            "receivers": [
                                {
                                    "name": "github",
                                    "provider": "github",
                                    "secretEnv": "GITHUB_WEBHOOK_SECRET",
                                    "syncs": [SYNC],
                                }
                            ],
                        }
                    )
                )
                listen, ops_port = free_port(), free_port()
                ops = f"http://127.0.0.1:{ops_port}"
                controller = await anyio.open_process(
                    [
                        *(sys.executable, "-m", "aioreconcile.cli", "run"),
                        *("--config", str(root / "config.yaml")),
                        *("--kubeconfig", str(plane.kubeconfig)),
                        *(
                            "--listen",
                            f"127.0.0.1:{listen}",
                            "--ops-listen",
                            f"127.0.0.1:{ops_port}",
                        ),
                        *("--cache-dir", str(root / "cache")),
                        *("--otlp-endpoint", jaeger.otlp_http_endpoint, "--service-name", SERVICE),
                    ],
                    env={**os.environ, "GITHUB_WEBHOOK_SECRET": secret},
                    stdout=(root / "controller.log").open("wb"),
                    stderr=subprocess.STDOUT,
                )
                try:
                    await _wait("the start-up poll's apply", lambda: _applied(ops, first))
                    second = await anyio.to_thread.run_sync(
                        lambda: _commit(
                            work,
                            home,
                            n=args.objects,
                            release="2026.12.01",
                            message="shop: release 2026.12.01",
                        )
                    )
                    await anyio.to_thread.run_sync(
                        lambda: _push(
                            f"http://127.0.0.1:{listen}",
                            secret,
                            url=url,
                            before=first,
                            after=second,
                        )
                    )
                    await _wait("the pushed commit's apply", lambda: _applied(ops, second))
                    await anyio.run_process(
                        [
                            *(args.kubectl, "--kubeconfig", str(plane.kubeconfig)),
                            *("-n", NAMESPACE, "patch", "configmap", EDITED, "--type=merge"),
                            *("-p", '{"data":{"LOG_LEVEL":"debug"}}'),
                        ],
                    )
                    commit, heal = await _wait(
                        "the commit and heal traces in Jaeger",
                        lambda: _commit_and_heal(jaeger, second, args.objects),
                    )
                    operations = await anyio.to_thread.run_sync(
                        _get_json, f"{jaeger.query_url}/api/services/{SERVICE}/operations"
                    )
                    print(
                        f"# commit {second}: trace {commit}, heal {heal}; "
                        f"{len(operations['data'])} operations: {sorted(operations['data'])}; "
                        f"load average {os.getloadavg()}",
                        file=sys.stderr,
                    )
                    await _screenshots(
                        args.chromium, jaeger, sha=second, commit=commit, heal=heal, out=out
                    )
                finally:
                    controller.terminate()
                    await controller.wait()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--ui-assets", type=Path, required=True, help="jaeger-ui build/ directory")
    parser.add_argument("--objects", type=int, default=1000)
    parser.add_argument("--out", type=Path, default=Path("docs/images"))
    parser.add_argument("--chromium", default="/usr/bin/chromium")
    parser.add_argument("--kubectl", default="kubectl")
    args = parser.parse_args()
    args.out = args.out.resolve()
    args.out.mkdir(parents=True, exist_ok=True)
    anyio.run(make, args)


if __name__ == "__main__":
    main()

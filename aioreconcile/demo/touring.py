"""``aioreconcile demo --script``: the guided tour, without a person at the keyboard.

Four steps a newcomer would try by hand, each done the way they would do it (``git commit`` in
the clone, whose hook pushes and signs the webhook; ``kubectl``), each waiting for what the
controller reports in its log and then checking the cluster itself with ``kubectl``:

1. a commit that scales the app, changes its greeting and drops a ConfigMap (created,
   configured, pruned);
2. ``kubectl edit`` of a ConfigMap the sync manages (a foreign write): healed;
3. a commit with broken YAML: ``RenderFailed`` naming the file, nothing pruned;
4. ``git revert`` of the last two commits as a rollback: the original app is back.
"""

import json
import os
import shlex
import subprocess
import sys
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Final

import anyio
from rich.console import Console

from aioreconcile.demo import gitserving, sample, viewing
from aioreconcile.demo.events import CommitApplied, CommitFailed, DriftHealed, Event
from aioreconcile.demo.running import Demo, DemoError

STEP_TIMEOUT_S: Final = 60.0
SCALED_REPLICAS: Final = 3
NEW_GREETING: Final = "Bonjour from Git"
BROKEN_FILE: Final = f"{sample.SYNC_PATH}/settings.yaml"


class StepFailed(DemoError):
    pass


@dataclass(frozen=True)
class StepResult:
    name: str
    what: str
    latency_ms: float | None
    trace_id: str | None


def _run(argv: list[str], *, cwd: Path | None = None, env: dict[str, str] | None = None) -> str:
    result = subprocess.run(
        argv,
        cwd=cwd,
        env={**os.environ, **env} if env else None,
        capture_output=True,
        text=True,
        check=False,
    )
    if result.returncode != 0:
        raise StepFailed(f"{' '.join(argv[:4])}...: {result.stderr.strip()}")
    return result.stdout


class Cluster:
    """The cluster as ``kubectl`` sees it (the tool the reader would use to check)."""

    def __init__(self, kubeconfig: Path) -> None:
        self.kubeconfig = kubeconfig

    async def kubectl(self, *args: str, env: dict[str, str] | None = None) -> str:
        argv = ["kubectl", f"--kubeconfig={self.kubeconfig}", "-n", sample.NAMESPACE, *args]
        return await anyio.to_thread.run_sync(lambda: _run(argv, env=env))

    async def get(self, kind: str, name: str) -> dict[str, object] | None:
        text = await self.kubectl("get", kind, name, "-o", "json", "--ignore-not-found")
        return json.loads(text) if text.strip() else None

    async def greeting(self) -> str | None:
        obj = await self.get("configmap", sample.SETTINGS_CONFIGMAP)
        data = obj.get("data") if obj else None
        return data.get("GREETING") if isinstance(data, dict) else None

    async def replicas(self) -> int | None:
        obj = await self.get("deployment", sample.DEPLOYMENT)
        spec = obj.get("spec") if obj else None
        return spec.get("replicas") if isinstance(spec, dict) else None


def _expect(what: str, actual: object, expected: object) -> None:
    if actual != expected:
        raise StepFailed(f"{what} is {actual!r}, expected {expected!r}")


async def _commit(demo: Demo, argv_list: list[list[str]]) -> str:
    """Run the git commands in the clone (the last one commits; its hook pushes and signs the
    webhook) and return the new HEAD."""

    def work() -> str:
        for argv in argv_list:
            _run(["git", *argv], cwd=demo.clone)
        return gitserving.head(demo.clone)

    return await anyio.to_thread.run_sync(work)


def _edit(clone: Path, name: str, old: str, new: str) -> None:
    path = clone / name
    text = path.read_text()
    if old not in text:
        raise StepFailed(f"{name} does not contain {old!r} (edited by hand meanwhile?)")
    path.write_text(text.replace(old, new, 1))


async def _reconciled(demo: Demo, sha: str, since: int) -> Event:
    return await demo.events.wait_for(
        lambda e: isinstance(e, CommitApplied | CommitFailed) and e.sha == sha,
        since=since,
        timeout_s=STEP_TIMEOUT_S,
        what=f"reconcile of commit {sha[:7]}",
    )


async def scale_and_reconfigure(demo: Demo, cluster: Cluster) -> StepResult:
    clone = demo.clone
    since = demo.events.mark()
    _edit(clone, f"{sample.SYNC_PATH}/kustomization.yaml", f"count: {sample.REPLICAS}", "count: 3")
    _edit(clone, f"{sample.SYNC_PATH}/settings.yaml", sample.GREETING, NEW_GREETING)
    _edit(clone, "base/kustomization.yaml", "  - flags.yaml\n", "")
    sha = await _commit(
        demo, [["commit", "--quiet", "-am", "Scale to 3, greet in French, drop the flags"]]
    )
    event = await _reconciled(demo, sha, since)
    if not isinstance(event, CommitApplied):
        raise StepFailed(f"commit {sha[:7]} was not applied: {event}")
    _expect("ConfigMap app-settings GREETING", await cluster.greeting(), NEW_GREETING)
    _expect("Deployment hello replicas", await cluster.replicas(), SCALED_REPLICAS)
    _expect("ConfigMap app-flags", await cluster.get("configmap", sample.FLAGS_CONFIGMAP), None)
    return StepResult(
        "commit: scale + reconfigure",
        f"{sha[:7]}: {event.configured} configured, {event.pruned} pruned; "
        f"GREETING={NEW_GREETING!r}, replicas {SCALED_REPLICAS}",
        event.latency_ms,
        event.trace_id,
    )


_EDITOR: Final = """\
import sys
from pathlib import Path

path, old, new = Path(sys.argv[3]), sys.argv[1], sys.argv[2]
text = path.read_text()
if old not in text:
    sys.exit(f"{old!r} is not in the object kubectl edit shows")
path.write_text(text.replace(old, new, 1))
"""


async def foreign_edit(demo: Demo, cluster: Cluster) -> StepResult:
    """``kubectl edit`` as a person would, with a scripted editor in place of their hands."""
    since = demo.events.mark()
    editor = gitserving.state_dir(demo.clone) / "kubectl-editor.py"
    editor.write_text(_EDITOR)
    command = " ".join(
        shlex.quote(part)
        for part in (sys.executable, str(editor), f"GREETING: {NEW_GREETING}", "GREETING: edited")
    )
    await cluster.kubectl(
        "edit", "configmap", sample.SETTINGS_CONFIGMAP, env={"KUBE_EDITOR": command}
    )
    target = f"ConfigMap/{sample.NAMESPACE}/{sample.SETTINGS_CONFIGMAP}"
    event = await demo.events.wait_for(
        lambda e: isinstance(e, DriftHealed) and e.object == target,
        since=since,
        timeout_s=STEP_TIMEOUT_S,
        what=f"heal of {target}",
    )
    assert isinstance(event, DriftHealed)
    _expect(
        "ConfigMap app-settings GREETING after the heal", await cluster.greeting(), NEW_GREETING
    )
    writers = ", ".join(event.writers) or "?"
    return StepResult(
        "kubectl edit: drift healed",
        f"{target} ({', '.join(event.fields)}) by {writers}: back to {NEW_GREETING!r}",
        event.latency_ms,
        event.trace_id,
    )


async def broken_commit(demo: Demo, cluster: Cluster) -> StepResult:
    since = demo.events.mark()
    path = demo.clone / BROKEN_FILE
    path.write_text(path.read_text() + '  LOG_LEVEL: "debug\n')  # an unterminated string
    sha = await _commit(demo, [["commit", "--quiet", "-am", "Turn on debug logs (broken YAML)"]])
    event = await _reconciled(demo, sha, since)
    if not isinstance(event, CommitFailed):
        raise StepFailed(f"the broken commit {sha[:7]} was applied")
    _expect("reason", event.reason, "RenderFailed")
    if "settings.yaml" not in event.error:
        raise StepFailed(f"the error does not name settings.yaml: {event.error}")
    _expect("objects pruned", event.pruned, 0)
    _expect("ConfigMap app-settings GREETING", await cluster.greeting(), NEW_GREETING)
    _expect("Deployment hello replicas", await cluster.replicas(), SCALED_REPLICAS)
    if await cluster.get("service", sample.DEPLOYMENT) is None:
        raise StepFailed("Service hello is gone after a failed render")
    return StepResult(
        "broken commit: RenderFailed",
        f"{sha[:7]}: {event.reason} naming settings.yaml; nothing pruned, app unchanged",
        event.latency_ms,
        event.trace_id,
    )


async def rollback(demo: Demo, cluster: Cluster) -> StepResult:
    since = demo.events.mark()
    sha = await _commit(
        demo,
        [
            ["revert", "--no-commit", "HEAD~2..HEAD"],
            ["commit", "--quiet", "-m", "Roll back: revert the broken commit and the scale-up"],
        ],
    )
    event = await _reconciled(demo, sha, since)
    if not isinstance(event, CommitApplied):
        raise StepFailed(f"the rollback {sha[:7]} was not applied: {event}")
    _expect("ConfigMap app-settings GREETING", await cluster.greeting(), sample.GREETING)
    _expect("Deployment hello replicas", await cluster.replicas(), sample.REPLICAS)
    if await cluster.get("configmap", sample.FLAGS_CONFIGMAP) is None:
        raise StepFailed("ConfigMap app-flags was not recreated by the rollback")
    return StepResult(
        "git revert: rollback",
        f"{sha[:7]}: {event.created} created, {event.configured} configured; "
        f"GREETING={sample.GREETING!r}, replicas {sample.REPLICAS}",
        event.latency_ms,
        event.trace_id,
    )


STEPS: Final[tuple[Callable[[Demo, Cluster], Awaitable[StepResult]], ...]] = (
    scale_and_reconfigure,
    foreign_edit,
    broken_commit,
    rollback,
)


async def tour(demo: Demo, console: Console) -> int:
    """Run every step; print the summary. 0 when all passed, else 1 naming the failed step."""
    cluster = Cluster(demo.plane.kubeconfig)
    rows: list[tuple[str, str, str, str, str]] = []
    code = 0
    for number, step in enumerate(STEPS, start=1):
        label = step.__name__.replace("_", " ")
        console.print(f"[bold]step {number}: {label}[/]")
        try:
            result = await step(demo, cluster)
        except DemoError as e:
            rows.append((f"{number}. {label}", str(e), "-", "-", "FAILED"))
            console.print(f"[bold red]step {number} ({label}) failed:[/] {e}", highlight=False)
            code = 1
            break
        latency = "-" if result.latency_ms is None else f"{result.latency_ms:.0f} ms"
        rows.append(
            (f"{number}. {result.name}", result.what, latency, result.trace_id or "-", "ok")
        )
    viewing.summary(console, rows)
    return code

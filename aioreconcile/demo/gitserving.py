"""The demo's Git side: a ``git daemon`` on loopback serving one bare repository, the user's
clone of it, and the post-commit hook that pushes each commit and signs a webhook for it.

The hook is a small stdlib-only Python script run by the same interpreter as the demo: it
pushes to the local server, then POSTs a ``generic-hmac`` delivery (docs/webhooks.md) signed
with the receiver's secret to the controller's ``/hooks/<receiver>``, exactly what a Git server
does in production. The secret is read from a 0600 file inside the clone's ``.git`` directory,
never passed on a command line; the receiver reads the same file (``secretFile``).
"""

import os
import secrets
import subprocess
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Final

import orjson

from aioreconcile.demo import sample
from aioreconcile.testing.controlplane import free_port
from aioreconcile.testing.processes import ManagedProcess

REPOSITORY: Final = "demo.git"
BRANCH: Final = "main"
STATE_DIR: Final = "aioreconcile-demo"  # inside the clone's .git: never committed
SECRET_FILE: Final = "webhook-secret"
HOOK_CONFIG: Final = "hook.json"
_IDENTITY: Final = {"user.name": "aioreconcile demo", "user.email": "demo@aioreconcile.invalid"}


class GitError(Exception):
    """A git command of the demo failed; the message carries git's own words."""


def git(*args: str, cwd: Path | None = None, env: Mapping[str, str] | None = None) -> str:
    result = subprocess.run(
        ["git", "-c", f"init.defaultBranch={BRANCH}", *args],
        cwd=cwd,
        env={**os.environ, "LC_ALL": "C", **(env or {})},
        capture_output=True,
        text=True,
        check=False,
    )
    if result.returncode != 0:
        raise GitError(f"git {' '.join(args)}: {result.stderr.strip() or result.stdout.strip()}")
    return result.stdout.strip()


def git_daemon(root: Path, *, log_path: Path) -> tuple[ManagedProcess, str]:
    """A ``git daemon`` serving every repository under ``root`` (push enabled), loopback only;
    returns the process (not yet started) and its base URL."""
    port = free_port()
    # git-daemon itself, not ``git daemon``: the wrapper would fork it as a child that the
    # kernel's parent-death signal (ManagedProcess) does not reach if we are killed.
    daemon = Path(git("--exec-path")) / "git-daemon"
    process = ManagedProcess(
        "git-daemon",
        [
            str(daemon),
            "--reuseaddr",
            f"--base-path={root}",
            "--export-all",
            "--enable=receive-pack",
            "--listen=127.0.0.1",
            f"--port={port}",
            str(root),
        ],
        log_path=log_path,
    )
    return process, f"git://127.0.0.1:{port}/"


def state_dir(clone: Path) -> Path:
    return clone / ".git" / STATE_DIR


def is_demo_clone(directory: Path) -> bool:
    return state_dir(directory).is_dir()


def seed_repository(bare: Path, *, work: Path, clone: Path) -> None:
    """Create the served repository: from the user's existing demo clone (their edits carry
    over to the new server), else from the sample app, committed once."""
    git("init", "--quiet", "--bare", str(bare))
    if is_demo_clone(clone):
        git("push", "--quiet", "--force", str(bare), f"HEAD:refs/heads/{BRANCH}", cwd=clone)
        return
    git("init", "--quiet", str(work))
    for name, text in sample.FILES.items():
        path = work / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    identity = [arg for key, value in _IDENTITY.items() for arg in ("-c", f"{key}={value}")]
    git("add", "--all", cwd=work)
    git(
        *identity,
        "commit",
        "--quiet",
        "-m",
        "The sample app: namespace demo, web + config",
        cwd=work,
    )
    git("push", "--quiet", str(bare), f"HEAD:refs/heads/{BRANCH}", cwd=work)


def prepare_clone(clone: Path, *, url: str) -> None:
    """Clone the served repository into ``clone``, or point an existing demo clone at it."""
    if is_demo_clone(clone):
        git("remote", "set-url", "origin", url, cwd=clone)
        git("fetch", "--quiet", "origin", cwd=clone)
        git("branch", "--quiet", f"--set-upstream-to=origin/{BRANCH}", cwd=clone)
    else:
        if clone.exists() and any(clone.iterdir()):
            raise GitError(
                f"{clone} exists and is not an aioreconcile demo clone; "
                "choose another --dir or remove it"
            )
        git("clone", "--quiet", url, str(clone))
        state_dir(clone).mkdir()
    for key, value in _IDENTITY.items():
        if subprocess.run(
            ["git", "config", key], cwd=clone, capture_output=True, check=False
        ).returncode:
            git("config", key, value, cwd=clone)


def write_secret(clone: Path) -> Path:
    """The receiver's secret in a 0600 file in the clone's ``.git`` (kept across runs)."""
    path = state_dir(clone) / SECRET_FILE
    if not path.exists():
        descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(descriptor, "w") as file:
            file.write(secrets.token_hex(32))
    path.chmod(0o600)
    return path


def install_hook(clone: Path, *, webhook_url: str, repository_url: str, secret_file: Path) -> Path:
    """Write the hook's settings (no secret in them) and the post-commit hook itself."""
    settings = {
        "webhook": webhook_url,
        "repository": repository_url,
        "branch": BRANCH,
        "secretFile": str(secret_file),
    }
    (state_dir(clone) / HOOK_CONFIG).write_bytes(orjson.dumps(settings, option=orjson.OPT_INDENT_2))
    hooks = clone / ".git" / "hooks"
    hook = hooks / "post-commit"
    hooks.mkdir(parents=True, exist_ok=True)
    hook.write_text(f"#!{sys.executable}\n{HOOK_SOURCE}")
    hook.chmod(0o755)
    # A global core.hooksPath (some setups have one) would make git look elsewhere.
    git("config", "core.hooksPath", str(hooks.resolve()), cwd=clone)
    return hook


def head(clone: Path) -> str:
    return git("rev-parse", "HEAD", cwd=clone)


def subject(clone: Path, sha: str) -> str:
    try:
        return git("log", "-1", "--format=%s", sha, cwd=clone)
    except GitError:
        return ""


HOOK_SOURCE: Final = '''\
"""aioreconcile demo: push the commit, then send a signed webhook (generic-hmac) for it."""
import hashlib, hmac, json, subprocess, sys, urllib.error, urllib.request, uuid
from pathlib import Path


def git(*args):
    return subprocess.run(["git", *args], capture_output=True, text=True, check=False)


def main():
    git_dir = Path(git("rev-parse", "--git-dir").stdout.strip())
    settings = json.loads((git_dir / "aioreconcile-demo" / "hook.json").read_text())
    branch = git("rev-parse", "--abbrev-ref", "HEAD").stdout.strip()
    if branch != settings["branch"]:
        print(f"aioreconcile demo: on {branch}, not {settings['branch']}: not pushed")
        return 0
    before = git("rev-parse", "--verify", "--quiet", f"origin/{branch}").stdout.strip()
    after = git("rev-parse", "HEAD").stdout.strip()
    pushed = git("push", "--quiet", "--force", "origin", f"HEAD:refs/heads/{branch}")
    if pushed.returncode != 0:
        print(f"aioreconcile demo: push failed: {pushed.stderr.strip()}")
        return 0
    payload = {"repository": settings["repository"], "ref": f"refs/heads/{branch}", "after": after}
    if len(before) == 40:
        payload["before"] = before
    body = json.dumps(payload).encode()
    secret = Path(settings["secretFile"]).read_bytes().strip()
    signature = hmac.new(secret, body, hashlib.sha256).hexdigest()
    request = urllib.request.Request(
        settings["webhook"],
        data=body,
        method="POST",
        headers={
            "Content-Type": "application/json",
            "X-Event": "push",
            "X-Delivery": str(uuid.uuid4()),
            "X-Signature": f"sha256={signature}",
        },
    )
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            answer = json.loads(response.read() or b"{}")
            print(f"aioreconcile demo: pushed {after[:7]}, webhook {response.status} "
                  f"{answer.get('status', '')}")
    except (urllib.error.URLError, OSError, ValueError) as e:
        print(f"aioreconcile demo: pushed {after[:7]}, webhook failed: {e}")
    return 0


sys.exit(main())
'''

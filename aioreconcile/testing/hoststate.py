"""What a node changes on the machine outside its directory, and undoing exactly that.

kubelet, containerd, the CNI plugins and kube-proxy write in fixed places of the host (iptables,
``/var/lib/cni``, ``/var/log/containers``, a bridge, cgroups, mounts). A :class:`HostSnapshot`
taken before the node starts records those places; :func:`restore` removes what appeared since
and puts back what changed (a chain's policy), without touching what was there before. It is
the ``iptables-save`` before/after comparison the node's tests make, turned into the cleanup.
"""

import contextlib
import json
import os
import shlex
import shutil
import signal
import subprocess
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Final

CGROUP_ROOT: Final = Path("/sys/fs/cgroup")
KUBEPODS: Final = "kubepods"  # kubelet's cgroup for every pod (cgroupfs driver, cgroupsPerQOS)


@dataclass(frozen=True)
class Table:
    """One iptables table: chain -> policy ("-" for user chains), and its rules in order."""

    chains: dict[str, str]
    rules: list[str]


def parse_iptables_save(text: str) -> dict[str, Table]:
    """Parse ``iptables-save`` output (counters and comments dropped)."""
    tables: dict[str, Table] = {}
    current: Table | None = None
    for line in text.splitlines():
        if line.startswith("*"):
            current = Table(chains={}, rules=[])
            tables[line[1:].strip()] = current
        elif current is None or line.startswith("#") or line == "COMMIT":
            continue
        elif line.startswith(":"):
            name, policy, *_ = line[1:].split()
            current.chains[name] = policy
        elif line.startswith("-A "):
            current.rules.append(line)
    return tables


def iptables_save(family: str = "iptables") -> str:
    """The current rules of ``family`` (``iptables`` or ``ip6tables``), or "" without the tool."""
    tool = shutil.which(f"{family}-save")
    if tool is None:
        return ""
    return subprocess.run([tool], capture_output=True, text=True, check=True).stdout


def iptables_rules(family: str = "iptables") -> dict[str, Table]:
    return parse_iptables_save(iptables_save(family))


def comparable(tables: dict[str, Table]) -> dict[str, tuple[dict[str, str], list[str]]]:
    """A form to compare snapshots with ``==``.

    A table that holds nothing (no rule, no user chain, every policy ACCEPT) is left out: with
    iptables-nft an emptied table still shows in ``iptables-save`` once something created it.
    """
    return {
        name: (table.chains, table.rules)
        for name, table in tables.items()
        if table.rules or any(policy != "ACCEPT" for policy in table.chains.values())
    }


def mount_points() -> list[str]:
    """Every mount point of this mount namespace, in mount order."""
    points = []
    for line in Path("/proc/self/mountinfo").read_text().splitlines():
        point = line.split()[4]
        points.append(point.encode().decode("unicode_escape"))
    return points


def link_names() -> set[str]:
    out = subprocess.run(["ip", "-j", "link", "show"], capture_output=True, text=True, check=True)
    return {link["ifname"] for link in json.loads(out.stdout)}


def tree(path: Path) -> set[str] | None:
    """Every entry under ``path`` at any depth, relative to it (None: ``path`` is no directory).

    At any depth because containerd's shims leave their sockets in ``/run/containerd/s/``.
    """
    if not path.is_dir():
        return None
    return {
        os.path.relpath(os.path.join(directory, name), path)
        for directory, dirs, files in os.walk(path)
        for name in dirs + files
    }


def kubepods_cgroups() -> list[Path]:
    """kubelet's pod cgroups in every v1 hierarchy (and the unified one), where present."""
    return sorted(p for p in CGROUP_ROOT.glob(f"*/{KUBEPODS}") if p.is_dir())


def cgroup_pids(root: Path) -> set[int]:
    """Every pid in ``root``'s cgroup tree. Walked with ``os.walk``, which skips a directory
    that vanishes while it walks (a container's cgroup as the container exits); ``rglob``
    raised FileNotFoundError there."""
    pids: set[int] = set()
    for directory, _, files in os.walk(root):
        if "cgroup.procs" in files:
            with contextlib.suppress(OSError, ValueError):
                text = Path(directory, "cgroup.procs").read_text()
                pids.update(int(line) for line in text.split())
    return pids


def processes_mentioning(needle: str) -> dict[int, str]:
    """Processes whose command line contains ``needle`` (a directory, a socket path)."""
    found: dict[int, str] = {}
    me = os.getpid()
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == me:
            continue
        with contextlib.suppress(OSError):
            argv = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
            if needle in argv:
                found[int(entry.name)] = argv.strip()
    return found


@dataclass
class HostSnapshot:
    """The host state a node may change, as it was before the node started."""

    iptables: dict[str, dict[str, Table]]
    paths: dict[Path, set[str] | None]
    mounts: list[str]
    links: set[str]
    cgroups: list[Path]
    notes: list[str] = field(default_factory=list)

    @classmethod
    def take(cls, paths: tuple[Path, ...]) -> "HostSnapshot":
        return cls(
            iptables={family: iptables_rules(family) for family in ("iptables", "ip6tables")},
            paths={p: tree(p) for p in paths},
            mounts=mount_points(),
            links=link_names(),
            cgroups=kubepods_cgroups(),
        )


def alive(pids: set[int]) -> set[int]:
    return {pid for pid in pids if Path(f"/proc/{pid}").exists()}


def kill_pids(pids: set[int]) -> None:
    for pid in pids:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.kill(pid, signal.SIGKILL)


def kill_pods(snapshot: HostSnapshot) -> None:
    """SIGKILL every process in kubelet's pod cgroups (containers and sandboxes)."""
    for _ in range(50):
        pids = set().union(
            *(cgroup_pids(c) for c in kubepods_cgroups() if c not in snapshot.cgroups)
        )
        if not pids:
            return
        kill_pids(pids)
        time.sleep(0.1)
    snapshot.notes.append(f"processes still in the pod cgroups after SIGKILL: {sorted(pids)}")


def restore(snapshot: HostSnapshot, *, under: Path) -> list[str]:
    """Undo what appeared since ``snapshot``; return what could not be undone (empty = clean).

    ``under``: the node's own directory, whose mounts all go (containerd's rootfs and netns
    mounts, kubelet's volumes) before it is removed.
    """
    problems = list(snapshot.notes)
    problems.extend(unmount_new(snapshot, under))
    _remove_new_cgroups(snapshot, problems)
    for name in sorted(link_names() - snapshot.links):
        if name == "cni0" or name.startswith("veth"):
            result = subprocess.run(["ip", "link", "delete", name], capture_output=True, text=True)
            if result.returncode != 0 and name in link_names():
                problems.append(f"ip link delete {name}: {result.stderr.strip()}")
    problems.extend(remove_new_entries(snapshot))
    for family, tables in snapshot.iptables.items():
        problems.extend(_undo_iptables(family, tables))
    return problems


def unmount_new(snapshot: HostSnapshot, under: Path) -> list[str]:
    """Unmount what was mounted since ``snapshot`` under ``under`` or the snapshot's paths."""
    problems: list[str] = []
    watched = [str(under), *(str(p) for p in snapshot.paths)]
    old = Counter(snapshot.mounts)
    for _ in range(3):
        now = mount_points()
        extra = Counter(now) - old
        targets = [
            point
            for point in reversed(now)
            if extra[point] and any(point == w or point.startswith(w + "/") for w in watched)
        ]
        if not targets:
            return problems
        for point in targets:
            if subprocess.run(["umount", point], capture_output=True).returncode != 0:
                subprocess.run(["umount", "-l", point], capture_output=True)
    left = Counter(mount_points()) - old
    problems.extend(f"still mounted: {point}" for point in left if point.startswith(str(under)))
    return problems


def _remove_new_cgroups(snapshot: HostSnapshot, problems: list[str]) -> None:
    for root in kubepods_cgroups():
        if root in snapshot.cgroups:
            continue
        kill_pids(cgroup_pids(root))
        # Children first: a cgroup directory goes with rmdir once it has no children or tasks.
        walked = (Path(d, name) for d, names, _ in os.walk(root) for name in names)
        for directory in sorted(walked, reverse=True):
            with contextlib.suppress(OSError):
                directory.rmdir()
        for _ in range(20):
            try:
                root.rmdir()
                break
            except OSError:
                time.sleep(0.1)
        else:
            problems.append(f"cgroup {root} could not be removed")


def remove_new_entries(snapshot: HostSnapshot) -> list[str]:
    """Remove what appeared in the snapshot's paths (the whole path if it did not exist)."""
    problems: list[str] = []
    for path, before in snapshot.paths.items():
        _remove_new_entries(path, before, problems)
    return problems


def _remove_new_entries(path: Path, before: set[str] | None, problems: list[str]) -> None:
    if not path.exists():
        return
    if before is None:
        shutil.rmtree(path, ignore_errors=True)
        if path.exists():
            problems.append(f"could not remove {path}")
        return
    removed: list[str] = []
    for name in sorted((tree(path) or set()) - before):
        if any(name.startswith(parent + os.sep) for parent in removed):
            continue  # inside a new directory already gone
        removed.append(name)
        entry = path / name
        if entry.is_dir() and not entry.is_symlink():
            shutil.rmtree(entry, ignore_errors=True)
        else:
            with contextlib.suppress(FileNotFoundError):
                entry.unlink()
        if entry.exists() or entry.is_symlink():
            problems.append(f"could not remove {entry}")


def _undo_iptables(family: str, before: dict[str, Table]) -> list[str]:
    """Delete the rules and chains added since ``before`` and put back changed policies."""
    if not before and shutil.which(family) is None:
        return []
    after = iptables_rules(family)
    problems: list[str] = []

    def run(*argv: str) -> None:
        result = subprocess.run([family, "-w", *argv], capture_output=True, text=True)
        if result.returncode != 0:
            problems.append(f"{family} {shlex.join(argv)}: {result.stderr.strip()}")

    for name, table in after.items():
        old = before.get(name, Table(chains={}, rules=[]))
        new_chains = [c for c in table.chains if c not in old.chains]
        added = Counter(table.rules) - Counter(old.rules)
        for rule in table.rules:
            if added[rule] <= 0:
                continue
            added[rule] -= 1
            chain = rule.split()[1]
            if chain not in new_chains:
                run("-t", name, "-D", *shlex.split(rule)[1:])
        for chain in new_chains:
            run("-t", name, "-F", chain)
        for chain in new_chains:
            run("-t", name, "-X", chain)
        for chain, policy in old.chains.items():
            if policy != "-" and table.chains.get(chain, policy) != policy:
                run("-t", name, "-P", chain, policy)
    return problems

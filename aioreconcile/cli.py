"""The ``aioreconcile`` command: argv -> the function that does the work."""

import argparse
import os
import sys
import urllib.request
from collections.abc import Callable, Sequence
from pathlib import Path

import anyio
import orjson
import yaml

from aioreconcile import __version__, logs, runtime
from aioreconcile.engine import reports
from aioreconcile.engine.changeset import ChangeSetEntry
from aioreconcile.engine.configuration import ConfigError, duration_seconds, parse_config
from aioreconcile.engine.errors import AioreconcileError
from aioreconcile.engine.leadership import LeaseTimings
from aioreconcile.engine.naming import is_valid_label_value
from aioreconcile.engine.redaction import printable, redact_text, redact_url
from aioreconcile.engine.sharding import MAX_SHARDS
from aioreconcile.engine.sources import RenderSpec, RenderType

_OUTPUT_HELP = "output format (default: %(default)s)"


def _seconds_at_least(least: float) -> Callable[[str], float]:
    """An argparse type: a finite number of seconds, at least ``least``."""

    def seconds(text: str) -> float:
        try:
            value = float(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"not a number of seconds: {text!r}") from None
        if not least <= value < float("inf"):
            raise argparse.ArgumentTypeError(f"must be at least {least:g} seconds: {text!r}")
        return value

    return seconds


def _at_least_one(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a whole number: {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1: {text!r}")
    return value


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="aioreconcile",
        description="Event-driven GitOps for Kubernetes.",
    )
    parser.add_argument("--version", action="version", version=f"aioreconcile {__version__}")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    testenv = commands.add_parser(
        "testenv", help="a real local control plane (etcd + kube-apiserver, optional Jaeger)"
    )
    testenv_commands = testenv.add_subparsers(
        dest="testenv_command", required=True, metavar="ACTION"
    )
    up = testenv_commands.add_parser(
        "up", help="build if needed, start, print `export KUBECONFIG=...`, run until Ctrl-C"
    )
    up.add_argument(
        "--jaeger",
        action="store_true",
        help="also start Jaeger (OTLP + query API; its UI with $AIORECONCILE_JAEGER_UI_ASSETS)",
    )
    up.add_argument(
        "--node",
        action="store_true",
        help="also start a real node that runs pods (root; containerd, kubelet, kube-proxy, "
        "kube-scheduler, kube-controller-manager; docs/testenv.md)",
    )
    up.add_argument(
        "--dir",
        type=Path,
        default=None,
        help="keep kubeconfig, logs and data here (default: a temp directory, removed on exit)",
    )
    _add_directory_command(
        commands, "apply", "make the cluster match a directory (staged server-side apply)"
    )
    _add_directory_command(
        commands, "diff", "show what apply would change (server-side dry-run); exit 1 if any"
    )

    run = commands.add_parser(
        "run", help="run the controller: webhooks, pollers, watches, drift healing"
    )
    run.add_argument(
        "--config",
        type=Path,
        default=None,
        help="syncs and receivers (YAML) (default: none: the controller runs in CRD mode, its "
        "syncs are the Sync objects of the cluster)",
    )
    run.add_argument(
        "--watch-namespace",
        default="",
        help="CRD mode: act on the Syncs of this namespace only (default: all namespaces)",
    )
    run.add_argument(
        "--listen",
        default="127.0.0.1:8080",
        help="HOST:PORT of the webhook listener (POST /hooks/<receiver> only); the one to expose "
        "(default: %(default)s)",
    )
    run.add_argument(
        "--ops-listen",
        default="127.0.0.1:8081",
        help="HOST:PORT of /healthz, /readyz, /metrics and /status (default: %(default)s, "
        "loopback only)",
    )
    run.add_argument(
        "--header-timeout",
        type=float,
        default=runtime.ListenerLimits.header_timeout_s,
        metavar="SECONDS",
        help="a request's line and headers must arrive within this, else 408 (default %(default)g)",
    )
    run.add_argument(
        "--body-timeout",
        type=float,
        default=runtime.ListenerLimits.body_timeout_s,
        metavar="SECONDS",
        help="a webhook body must arrive within this, else 408 (default %(default)g)",
    )
    run.add_argument(
        "--max-connections",
        type=int,
        default=runtime.ListenerLimits.max_connections,
        help="per listener; one more is closed as it opens (default %(default)d)",
    )
    run.add_argument(
        "--kubeconfig",
        type=Path,
        default=None,
        help="kubeconfig file (default: $KUBECONFIG, else ~/.kube/config, else in-cluster)",
    )
    run.add_argument(
        "--context",
        default=None,
        help="kubeconfig context (default: its current-context)",
    )
    run.add_argument(
        "--namespace",
        default="default",
        help="file mode: where inventories of the syncs are kept (default: %(default)s); CRD "
        "mode keeps them beside each Sync",
    )
    run.add_argument(
        "--cache-dir",
        type=Path,
        default=None,
        help="git cache (default: $XDG_CACHE_HOME or ~/.cache, then aioreconcile/git)",
    )
    run.add_argument(
        "--concurrency",
        type=_at_least_one,
        default=16,
        help="syncs (and their health checks) worked on at once (default: %(default)s)",
    )
    run.add_argument(
        "--heal-concurrency",
        type=_at_least_one,
        default=runtime.RunSettings.heal_concurrency,
        help="drifted objects healed at once, a limit of their own so that a storm of heals "
        "never holds up a push (default: %(default)s)",
    )
    run.add_argument(
        "--watch-read-timeout",
        type=_seconds_at_least(runtime.MIN_WATCH_READ_TIMEOUT_S),
        default=runtime.RunSettings.watch_read_timeout_s,
        metavar="SECONDS",
        help="a watch silent this long is taken for a dead connection and restarted, and any "
        "other request waiting this long for a byte is retried on a new connection; keep it "
        "below your network's idle timeout; at least 20 (default: %(default)g)",
    )
    run.add_argument(
        "--max-retry-delay",
        type=_seconds_at_least(runtime.MIN_RETRY_DELAY_S),
        default=runtime.RunSettings.max_retry_delay_s,
        metavar="SECONDS",
        help="the longest wait before a failed sync is retried (its backoff doubles from "
        "0.1 s up to this, +-20%% jitter) (default: %(default)g)",
    )
    run.add_argument(
        "--log-level",
        default="info",
        help="JSON logs on stderr from this level: debug, info, warning, error "
        "(default: %(default)s)",
    )
    _add_leader_election_flags(run)
    _add_tracing_flags(run)

    _add_sync_verbs(commands)

    status = commands.add_parser("status", help="print each sync's state from a running controller")
    status.add_argument(
        "--url",
        default="http://127.0.0.1:8081",
        help="the controller's --ops-listen address (default: %(default)s)",
    )
    status.add_argument(
        "-o", "--output", choices=["table", "json"], default="table", help=_OUTPUT_HELP
    )

    check = commands.add_parser(
        "check-config", help="validate a controller configuration file (run --config FILE)"
    )
    check.add_argument("config", type=Path, help="the file `run --config` would read")

    build = testenv_commands.add_parser("build", help="build the test binaries into the cache")
    build.add_argument(
        "components",
        nargs="*",
        choices=[
            *("etcd", "kube-apiserver", "helm", "jaeger"),
            *("pause", "cni-plugins", "kubelet", "kube-controller-manager", "kube-scheduler"),
            *("kube-proxy", "kubectl"),
        ],
        default=[],
        help="what to build (default: all)",
    )
    _add_trace_command(commands)
    _add_demo_command(commands)
    return parser


def _add_demo_command(commands: "argparse._SubParsersAction[argparse.ArgumentParser]") -> None:
    demo = commands.add_parser(
        "demo",
        help="the whole product on a local cluster: commit, see it applied, edit, see it healed",
        description="Start a real local control plane, Jaeger, a Git server with a sample app "
        "and the controller; clone the app into --dir, whose commits are applied at once. "
        "Ctrl-C stops everything (the clone stays).",
    )
    demo.add_argument(
        "--dir",
        type=Path,
        default=Path("aioreconcile-demo"),
        help="where to clone the sample app (kept; reused next time) (default: %(default)s)",
    )
    demo.add_argument(
        "--no-jaeger",
        dest="jaeger",
        action="store_false",
        help="do not start Jaeger; tracing off (default: Jaeger on)",
    )
    demo.add_argument(
        "--script",
        action="store_true",
        help="run the guided tour unattended, print a summary and exit (default: interactive)",
    )


def _add_directory_command(
    commands: "argparse._SubParsersAction[argparse.ArgumentParser]", name: str, help_text: str
) -> None:
    command = commands.add_parser(name, help=help_text, description=help_text)
    command.add_argument(
        "path", type=Path, help="directory: plain YAML/JSON, kustomization or chart"
    )
    command.add_argument(
        "--kubeconfig",
        type=Path,
        default=None,
        help="kubeconfig file (default: $KUBECONFIG, else ~/.kube/config, else in-cluster)",
    )
    command.add_argument(
        "--context",
        default=None,
        help="kubeconfig context (default: its current-context)",
    )
    command.add_argument(
        "-n",
        "--namespace",
        default=None,
        help="namespace for namespaced objects that name none (default: as rendered)",
    )
    command.add_argument(
        "--render",
        choices=[t.value for t in RenderType],
        default=RenderType.AUTO.value,
        help="how to render PATH (default: auto-detect)",
    )
    command.add_argument(
        "--release-name",
        default=None,
        help="helm release name (default: the chart directory's name)",
    )
    command.add_argument(
        "--values",
        action="append",
        default=[],
        metavar="FILE",
        help="helm values file (repeatable; default: the chart's values only)",
    )
    command.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="inline helm value, dotted key (repeatable; default: none)",
    )
    command.add_argument(
        "--sync",
        default=None,
        help="name of this sync, written to the aioreconcile.dev/sync label "
        "(default: the inventory name, else the directory name)",
    )
    command.add_argument(
        "--concurrency",
        type=int,
        default=16,
        help="objects applied at once (default: %(default)s)",
    )
    command.add_argument(
        "--no-force-conflicts",
        dest="force_conflicts",
        action="store_false",
        help="fail on fields owned by another manager instead of taking them over",
    )
    command.add_argument(
        "-o", "--output", choices=["table", "json"], default="table", help=_OUTPUT_HELP
    )
    # diff takes apply's --inventory too: it names the sync, so both compare the same one.
    command.add_argument(
        "--inventory",
        default=None,
        help="ConfigMap that remembers what was applied (required by --prune); it also names "
        "the sync (default: none)",
    )
    command.add_argument(
        "--inventory-namespace",
        default="default",
        help="namespace of the --inventory ConfigMap (default: %(default)s)",
    )
    command.add_argument(
        "--prune",
        action="store_true",
        help="delete what left the source (diff: show those deletions)",
    )
    command.add_argument(
        "--allow-empty",
        action="store_true",
        help="let an empty source prune everything it applied before",
    )
    if name == "apply":
        _add_tracing_flags(command)
        command.add_argument("--wait", action="store_true", help="wait until every object is ready")
        command.add_argument(
            "--timeout",
            type=float,
            default=300.0,
            help="for --wait, seconds (default: %(default)g)",
        )
        command.add_argument("--dry-run", action="store_true", help="server-side dry-run only")


def _add_tracing_flags(command: argparse.ArgumentParser) -> None:
    command.add_argument(
        "--otlp-endpoint",
        default=None,
        help="OTLP/HTTP collector base URL (default: $OTEL_EXPORTER_OTLP_ENDPOINT; none: off)",
    )
    command.add_argument(
        "--service-name", default=None, help="trace service name (default $OTEL_SERVICE_NAME)"
    )
    command.add_argument(
        "--otlp-protocol",
        default=None,
        choices=["http/protobuf", "grpc"],
        help="default $OTEL_EXPORTER_OTLP_PROTOCOL, else http/protobuf",
    )
    command.add_argument(
        "--traces-sampler",
        default=None,
        help="e.g. parentbased_traceidratio (default $OTEL_TRACES_SAMPLER, else always on)",
    )
    command.add_argument(
        "--traces-sampler-arg", default=None, help="e.g. 0.1 (default $OTEL_TRACES_SAMPLER_ARG)"
    )


def _inline_values(assignments: Sequence[str]) -> dict[str, object]:
    values: dict[str, object] = {}
    for assignment in assignments:
        key, sep, raw = assignment.partition("=")
        if not sep or not key:
            raise SystemExit(f"aioreconcile: --set expects KEY=VALUE, got {assignment!r}")
        node = values
        *parents, leaf = key.split(".")
        for part in parents:
            child = node.setdefault(part, {})
            if not isinstance(child, dict):
                raise SystemExit(f"aioreconcile: --set {key}: {part} is already a value")
            node = child
        node[leaf] = yaml.safe_load(raw) if raw else ""
    return values


def _directory_settings(args: argparse.Namespace) -> "runtime.DirectorySettings":
    inventory = getattr(args, "inventory", None)
    if getattr(args, "prune", False) and not inventory:
        raise SystemExit(
            f"aioreconcile {args.command}: --prune needs --inventory NAME (what to compare with)"
        )
    sync = args.sync or runtime.default_sync_name(args.path, inventory)
    if not is_valid_label_value(sync):
        raise SystemExit(f"aioreconcile: --sync {sync!r} is not a valid label value")
    return runtime.DirectorySettings(
        path=args.path,
        sync=sync,
        cluster=runtime.ClusterSettings(kubeconfig=args.kubeconfig, context=args.context),
        render=RenderSpec(
            type=RenderType(args.render),
            release_name=args.release_name,
            namespace=args.namespace,
            values=_inline_values(args.set),
            values_files=tuple(args.values),
        ),
        inventory=inventory,
        inventory_namespace=getattr(args, "inventory_namespace", "default"),
        prune=getattr(args, "prune", False),
        allow_empty=getattr(args, "allow_empty", False),
        wait=getattr(args, "wait", False),
        wait_timeout_s=getattr(args, "timeout", 300.0),
        dry_run=getattr(args, "dry_run", False),
        force_conflicts=args.force_conflicts,
        concurrency=args.concurrency,
        tracing=runtime.tracing_settings(
            endpoint=getattr(args, "otlp_endpoint", None),
            service_name=getattr(args, "service_name", None),
            protocol=getattr(args, "otlp_protocol", None),
            sampler=getattr(args, "traces_sampler", None),
            sampler_arg=getattr(args, "traces_sampler_arg", None),
        ),
    )


def _progress_printer(enabled: bool) -> Callable[[ChangeSetEntry], None] | None:
    if not enabled:
        return None
    done = 0

    def show(entry: ChangeSetEntry) -> None:
        nonlocal done
        done += 1
        if done % 25 == 0:
            print(f"\r  {done} objects applied...", end="", file=sys.stderr, flush=True)

    return show


def _run_apply(args: argparse.Namespace) -> int:
    settings = _directory_settings(args)
    show_progress = args.output == "table" and sys.stderr.isatty()
    outcome = anyio.run(runtime.apply_directory, settings, _progress_printer(show_progress))
    if show_progress:
        print("\r", end="", file=sys.stderr)
    if args.output == "json":
        sys.stdout.write(
            orjson.dumps(reports.as_json(outcome), option=orjson.OPT_INDENT_2).decode()
        )
        sys.stdout.write("\n")
    else:
        print(reports.as_table(outcome, dry_run=settings.dry_run))
    return 0 if outcome.ok else 1


def _run_diff(args: argparse.Namespace) -> int:
    settings = _directory_settings(args)
    diffs = anyio.run(runtime.diff_directory, settings)
    if args.output == "json":
        rows = [
            {
                "kind": d.ref.kind,
                "namespace": d.ref.namespace,
                "name": d.ref.name,
                "changed": bool(d.diff),
                "diff": d.diff,
                "error": d.error,
            }
            for d in diffs
        ]
        sys.stdout.write(orjson.dumps(rows, option=orjson.OPT_INDENT_2).decode() + "\n")
    else:
        for d in diffs:
            if d.error:
                print(f"error {d.ref}: {redact_text(d.error)}", file=sys.stderr)
            elif d.diff:
                sys.stdout.write(d.diff)
    if any(d.error for d in diffs):
        return 2
    return 1 if any(d.diff for d in diffs) else 0


def _run_check_config(path: Path) -> int:
    try:
        config = parse_config(path.read_text(), origin=str(path))
    except OSError as e:
        print(f"aioreconcile check-config: cannot read {path}: {e.strerror}", file=sys.stderr)
        return 2
    except ConfigError as e:
        print(e, file=sys.stderr)
        return 1
    for sync in config.syncs:
        source = sync.source
        print(
            f"sync {sync.name}: {redact_url(source.url)} {printable(source.ref)} {source.path} "
            f"(every {source.interval_s:g} s, prune={sync.prune}, selfHeal={sync.self_heal})"
        )
        if sync.wait:
            print(f"  waits up to {sync.wait_timeout_s:g} s for its objects to be healthy")
        if sync.service_account is not None:
            print(f"  acts as {sync.service_account.user} (impersonated)")
    for receiver in config.receivers:
        scope = [f"syncs {', '.join(receiver.syncs)}"] if receiver.syncs else []
        if receiver.selector:
            labels = ",".join(f"{k}={v}" for k, v in receiver.selector.items())
            scope.append(f"syncs labelled {labels}")
        print(
            f"receiver {receiver.name}: {receiver.provider.value} at POST /hooks/{receiver.name}"
            f", triggers {' and '.join(scope)}"
        )
    return 0


def _host_port(flag: str, value: str) -> tuple[str, int]:
    host, _, port = value.rpartition(":")
    if not host or not port.isdigit() or int(port) > 65535:
        raise SystemExit(f"aioreconcile run: {flag} expects HOST:PORT, got {value!r}")
    return host.removeprefix("[").removesuffix("]"), int(port)


def _add_leader_election_flags(run: argparse.ArgumentParser) -> None:
    """Flux's and controller-runtime's names and client-go's defaults (docs/install.md)."""
    run.add_argument(
        "--leader-elect",
        action="store_true",
        help="run as one of several replicas: only the holder of a Lease writes to the cluster; "
        "the others watch and stand by (default: off, this replica always writes)",
    )
    run.add_argument(
        "--leader-election-id",
        default="aioreconcile",
        metavar="NAME",
        help="the Lease's name (default: %(default)s)",
    )
    run.add_argument(
        "--leader-election-namespace",
        default=None,
        metavar="NAMESPACE",
        help="the Lease's namespace (default: the pod's, else 'default')",
    )
    run.add_argument(
        "--leader-election-identity",
        default="",
        metavar="NAME",
        help="this replica's name in the Lease (default: <hostname>_<random>)",
    )
    run.add_argument(
        "--shards",
        type=int,
        default=0,
        metavar="S",
        help="CRD mode: split the Syncs in S shards, one Lease each (<id>-shard-<k>); the "
        "replicas share them, each writing only for the Syncs of the shards it holds. Implies "
        "--leader-elect and uses its flags (default: off, one Lease for all)",
    )
    for flag, default, text in (
        ("lease-duration", "15s", "a standby takes over a leader silent this long (whole s)"),
        ("renew-deadline", "10s", "a leader that could not renew for this long stops"),
        ("retry-period", "2s", "how often leaders renew and standbys try to acquire"),
    ):
        run.add_argument(
            f"--leader-election-{flag}",
            default=default,
            metavar="DURATION",
            help=f"{text} (default: %(default)s)",
        )


def _leader_election(args: argparse.Namespace) -> runtime.LeaderElectionSettings | None:
    if args.shards:
        if not 1 <= args.shards <= MAX_SHARDS:
            raise SystemExit(f"aioreconcile run: --shards: 1..{MAX_SHARDS}, got {args.shards}")
        if args.config is not None:
            raise SystemExit("aioreconcile run: --shards splits Sync objects: CRD mode only")
    elif args.shards < 0:
        raise SystemExit(f"aioreconcile run: --shards: 1..{MAX_SHARDS}, got {args.shards}")
    if not args.leader_elect and not args.shards:
        return None
    durations: dict[str, float] = {}
    for flag in ("lease-duration", "renew-deadline", "retry-period"):
        text = getattr(args, f"leader_election_{flag.replace('-', '_')}")
        seconds = duration_seconds(text)
        if seconds is None or seconds <= 0:
            raise SystemExit(f"aioreconcile run: --leader-election-{flag}: {text!r} is no duration")
        durations[flag] = seconds
    if not durations["lease-duration"].is_integer():
        raise SystemExit("aioreconcile run: --leader-election-lease-duration: whole seconds only")
    try:
        timings = LeaseTimings(
            lease_duration_s=int(durations["lease-duration"]),
            renew_deadline_s=durations["renew-deadline"],
            retry_period_s=durations["retry-period"],
        )
    except ValueError as e:
        raise SystemExit(f"aioreconcile run: leader election: {e}") from None
    return runtime.LeaderElectionSettings(
        namespace=args.leader_election_namespace,
        name=args.leader_election_id,
        identity=args.leader_election_identity,
        timings=timings,
    )


def _run_controller(args: argparse.Namespace) -> int:
    host, port = _host_port("--listen", args.listen)
    ops_host, ops_port = _host_port("--ops-listen", args.ops_listen)
    if (host, port) == (ops_host, ops_port) and port != 0:
        raise SystemExit("aioreconcile run: --listen and --ops-listen must differ")
    for flag, number in (
        ("--header-timeout", args.header_timeout),
        ("--body-timeout", args.body_timeout),
        ("--max-connections", args.max_connections),
    ):
        if number <= 0:
            raise SystemExit(f"aioreconcile run: {flag} must be positive")
    election = _leader_election(args)
    logs.configure(args.log_level)
    settings = runtime.RunSettings(
        config=args.config,
        cluster=runtime.ClusterSettings(kubeconfig=args.kubeconfig, context=args.context),
        listen_host=host,
        listen_port=port,
        ops_host=ops_host,
        ops_port=ops_port,
        limits=runtime.ListenerLimits(
            header_timeout_s=args.header_timeout,
            body_timeout_s=args.body_timeout,
            max_connections=args.max_connections,
        ),
        namespace=args.namespace,
        watch_namespace=args.watch_namespace,
        cache_dir=args.cache_dir,
        concurrency=args.concurrency,
        heal_concurrency=args.heal_concurrency,
        leader_election=election,
        shards=args.shards,
        watch_read_timeout_s=args.watch_read_timeout,
        max_retry_delay_s=args.max_retry_delay,
        freeze_startup_heap=True,
        tracing=runtime.tracing_settings(
            endpoint=getattr(args, "otlp_endpoint", None),
            service_name=getattr(args, "service_name", None),
            protocol=getattr(args, "otlp_protocol", None),
            sampler=getattr(args, "traces_sampler", None),
            sampler_arg=getattr(args, "traces_sampler_arg", None),
        ),
    )
    try:
        anyio.run(lambda: runtime.run_controller(settings))
    except ConfigError as e:
        print(e, file=sys.stderr)
        return 1
    except AioreconcileError as e:
        print(f"aioreconcile run: {redact_text(str(e))}", file=sys.stderr)
        return 2
    return 0


def _run_status(args: argparse.Namespace) -> int:
    try:
        with urllib.request.urlopen(f"{args.url.rstrip('/')}/status", timeout=10) as response:
            document = orjson.loads(response.read())
    except (OSError, ValueError) as e:
        shown = redact_url(args.url)
        print(
            f"aioreconcile status: cannot read {shown}/status: {redact_text(str(e))}",
            file=sys.stderr,
        )
        return 2
    if args.output == "json":
        sys.stdout.write(orjson.dumps(document, option=orjson.OPT_INDENT_2).decode() + "\n")
        return 0
    header = ("SYNC", "APPLIED", "ATTEMPTED", "RESULT", "OBJECTS", "HEALS", "ERROR")
    rows = [
        (
            s["name"],
            (s.get("lastAppliedRevision") or "-")[:12],
            (s.get("lastAttemptedRevision") or "-")[:12],
            s.get("reason") or "-",
            str(s.get("inventorySize") if s.get("inventorySize") is not None else s["objects"]),
            str(s.get("driftHeals", 0)),
            s.get("lastError") or "",
        )
        for s in document.get("syncs", [])
    ]
    widths = [
        max(len(h), *(len(r[i]) for r in rows)) if rows else len(h) for i, h in enumerate(header)
    ]
    for row in (header, *rows):
        print("  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip())
    return 0


def _add_sync_verbs(commands: "argparse._SubParsersAction[argparse.ArgumentParser]") -> None:
    """``reconcile|suspend|resume sync NAME [-n NS]``: verbs on Sync objects (CRD mode)."""
    helps = {
        "reconcile": "reconcile a Sync now and wait for the result (CRD mode)",
        "suspend": "suspend a Sync: nothing is applied or healed until resumed (CRD mode)",
        "resume": "resume a suspended Sync (CRD mode)",
    }
    for verb, text in helps.items():
        command = commands.add_parser(verb, help=text, description=text)
        command.add_argument("kind", choices=["sync"], help="what to act on")
        command.add_argument("name", help="the Sync's name")
        command.add_argument(
            "-n", "--namespace", default="default", help="its namespace (default: %(default)s)"
        )
        command.add_argument(
            "--kubeconfig",
            type=Path,
            default=None,
            help="kubeconfig file (default: $KUBECONFIG, else ~/.kube/config, else in-cluster)",
        )
        command.add_argument(
            "--context", default=None, help="kubeconfig context (default: its current-context)"
        )
        if verb == "reconcile":
            command.add_argument(
                "--timeout",
                type=float,
                default=300.0,
                metavar="SECONDS",
                help="how long to wait for the controller (default %(default)g)",
            )


def _run_sync_verb(args: argparse.Namespace) -> int:
    cluster = runtime.ClusterSettings(kubeconfig=args.kubeconfig, context=args.context)
    where = f"sync/{args.name} in {args.namespace}"
    try:
        if args.command != "reconcile":
            suspend = args.command == "suspend"
            anyio.run(
                lambda: runtime.suspend_sync(cluster, args.namespace, args.name, suspend=suspend)
            )
            print(f"{where} {'suspended' if suspend else 'resumed'}")
            return 0
        result = anyio.run(
            lambda: runtime.reconcile_sync(
                cluster, args.namespace, args.name, timeout_s=args.timeout
            )
        )
    except TimeoutError:
        print(
            f"aioreconcile reconcile: {where} was not reconciled within {args.timeout:g}s "
            "(is the controller running in CRD mode, and the Sync not suspended?)",
            file=sys.stderr,
        )
        return 3
    except AioreconcileError as e:
        print(f"aioreconcile {args.command}: {redact_text(str(e))}", file=sys.stderr)
        return 2
    print(f"{where}: Ready={result.ready} {result.reason}")
    print(f"revision: {result.revision or '-'}")
    print(redact_text(result.message))
    return 0 if result.ready == "True" else 1


def _add_trace_command(commands: "argparse._SubParsersAction[argparse.ArgumentParser]") -> None:
    trace = commands.add_parser(
        "trace", help="find the trace of a commit in Jaeger and print its span tree"
    )
    trace.add_argument("sha", help="the commit (full SHA, or a prefix of a recent one)")
    trace.add_argument(
        "--jaeger",
        default=None,
        help="Jaeger's UI/query URL (default: $JAEGER_URL, else http://127.0.0.1:16686)",
    )
    trace.add_argument(
        "--service",
        default="aioreconcile",
        help="OTEL_SERVICE_NAME it ran as (default: %(default)s)",
    )
    trace.add_argument(
        "--lookback",
        default="7d",
        help="how far back to search, e.g. 1h, 2d (default: %(default)s)",
    )
    trace.add_argument(
        "-o", "--output", choices=["tree", "json"], default="tree", help=_OUTPUT_HELP
    )


def _run_trace(args: argparse.Namespace) -> int:
    """Exit 0 with the newest trace of the commit, 1 when there is none, 2 when Jaeger fails."""
    from aioreconcile.adapters.telemetry import jaeger_query

    url = args.jaeger or os.environ.get("JAEGER_URL") or jaeger_query.DEFAULT_JAEGER_URL
    try:
        traces = jaeger_query.find_commit_traces(
            url, args.sha, service=args.service, lookback=args.lookback
        )
    except jaeger_query.JaegerUnreachable as e:
        print(f"aioreconcile trace: cannot query Jaeger: {e}", file=sys.stderr)
        return 2
    except ValueError as e:
        print(f"aioreconcile trace: {e}", file=sys.stderr)
        return 2
    if not traces:
        print(
            f"aioreconcile trace: no trace of service {args.service!r} for commit {args.sha} "
            f"in the last {args.lookback} at {url}",
            file=sys.stderr,
        )
        return 1
    # Heals carry the revision they heal back to: they are named, the commit trace is shown
    # (a heal only when no commit trace is left in the lookback).
    commits = [t for t in traces if jaeger_query.is_commit_trace(t)]
    newest, *older = commits or traces
    heals = [t["traceID"] for t in traces if t is not newest and t not in commits]
    others = [t["traceID"] for t in older if t["traceID"] not in heals]
    if args.output == "json":
        document = jaeger_query.as_json(newest, query_url=url)
        document["older_traces"] = others
        document["heal_traces"] = heals
        sys.stdout.write(orjson.dumps(document, option=orjson.OPT_INDENT_2).decode() + "\n")
    else:
        print(jaeger_query.format_tree(newest, query_url=url, others=others, heals=heals))
    return 0


def _run_demo(args: argparse.Namespace) -> int:
    from rich.console import Console

    from aioreconcile.demo import running

    settings = running.DemoSettings(directory=args.dir, jaeger=args.jaeger, script=args.script)
    # Piped (CI, a test), rich would assume 80 columns and fold the summary table.
    wide = None if sys.stdout.isatty() or "COLUMNS" in os.environ else 160
    return anyio.run(running.run, settings, Console(highlight=False, width=wide))


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    if args.command == "run":
        return _run_controller(args)
    if args.command == "status":
        return _run_status(args)
    if args.command == "trace":
        return _run_trace(args)
    if args.command in ("reconcile", "suspend", "resume"):
        return _run_sync_verb(args)
    if args.command == "check-config":
        return _run_check_config(args.config)
    if args.command in ("apply", "diff"):
        try:
            return _run_apply(args) if args.command == "apply" else _run_diff(args)
        except AioreconcileError as e:
            print(f"aioreconcile {args.command}: {redact_text(str(e))}", file=sys.stderr)
            return 2
    if args.command == "demo":
        return _run_demo(args)
    if args.command == "testenv":
        from aioreconcile.testing import session
        from aioreconcile.testing.node import NodeError
        from aioreconcile.testing.processes import StartupError
        from aioreconcile.testing.toolchain import ToolchainError

        try:
            if args.testenv_command == "up":
                anyio.run(
                    lambda: session.up(
                        with_jaeger=args.jaeger, workdir=args.dir, with_node=args.node
                    )
                )
            else:
                anyio.run(session.build, list(args.components))
        except (ToolchainError, StartupError, NodeError) as e:
            print(f"aioreconcile testenv: {e}", file=sys.stderr)
            return 1
        return 0
    raise AssertionError(f"unhandled command {args.command}")


if __name__ == "__main__":
    sys.exit(main())

"""The ``aioreconcile`` command: argv -> the function that does the work."""

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

import anyio

from aioreconcile import __version__


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
    up.add_argument("--jaeger", action="store_true", help="also start Jaeger (OTLP + UI)")
    up.add_argument(
        "--dir",
        type=Path,
        default=None,
        help="keep kubeconfig, logs and data here (default: a temp directory, removed on exit)",
    )
    build = testenv_commands.add_parser("build", help="build the test binaries into the cache")
    build.add_argument(
        "components",
        nargs="*",
        choices=["etcd", "kube-apiserver", "helm", "jaeger"],
        default=[],
        help="default: all",
    )
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    if args.command == "testenv":
        from aioreconcile.testing import session
        from aioreconcile.testing.processes import StartupError
        from aioreconcile.testing.toolchain import ToolchainError

        try:
            if args.testenv_command == "up":
                anyio.run(lambda: session.up(with_jaeger=args.jaeger, workdir=args.dir))
            else:
                anyio.run(session.build, list(args.components))
        except (ToolchainError, StartupError) as e:
            print(f"aioreconcile testenv: {e}", file=sys.stderr)
            return 1
        return 0
    raise AssertionError(f"unhandled command {args.command}")


if __name__ == "__main__":
    sys.exit(main())

"""`datalab` command: run the platform, or one service."""

from __future__ import annotations

import argparse
import importlib
import os
import signal
import sys
from types import ModuleType

from datalab.core.services import SERVICES, app_module


def serve(name: str) -> None:
    """Run one service with uvicorn (graceful: finishes in-flight requests on SIGTERM)."""
    import uvicorn

    module = importlib.import_module(app_module(name))
    app = module.build_app()
    settings = app.state.settings
    uvicorn.run(
        app,
        host=settings.host,
        port=settings.port,
        log_config=None,  # our JSON logging is configured by the app factory
        access_log=False,
        timeout_graceful_shutdown=int(settings.shutdown_grace_seconds),
        proxy_headers=False,
        server_header=False,
    )


def optional_module(name: str) -> ModuleType | None:
    """An operations or dev-harness module (datalab.ops, datalab.devstack); None where it is
    not installed: the service image carries the runtime only (`serve`, `worker`)."""
    try:
        return importlib.import_module(name)
    except ModuleNotFoundError as exc:
        if exc.name is not None and (name == exc.name or name.startswith(exc.name + ".")):
            return None
        raise  # installed, but one of its own imports is missing: that is a real error


def not_installed(command: str, module: str) -> int:
    print(f"datalab {command}: {module} is not installed here (the service image carries `serve` and "
          f"`worker` only); run it from a checkout of the repository (`make install`)", file=sys.stderr)
    return 2


def up() -> int:
    """`make up`: the embedded platform in the foreground until Ctrl-C / SIGTERM."""
    local_stack = optional_module("datalab.devstack.local_stack")
    if local_stack is None:
        return not_installed("up", "datalab.devstack")

    config = local_stack.PlatformConfig.from_env()
    platform = local_stack.Platform(config)
    stopping = False

    # The first Ctrl-C / SIGTERM / SIGHUP stops in order; one during the stop (a double
    # Ctrl-C) never interrupts it (a KeyboardInterrupt there once orphaned every server),
    # it hurries it: what is left is SIGKILLed and the stop goes on reaping.
    def on_signal(signum, _frame):
        nonlocal stopping
        if not stopping:
            stopping = True
            raise KeyboardInterrupt
        # os.write: print() is not reentrant, and the stop prints.
        os.write(sys.stdout.fileno(), f"DataLab: {signal.Signals(signum).name} again: killing what is left\n".encode())
        platform.kill()

    for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, on_signal)
    print(f"DataLab: starting in {config.home} ...", flush=True)
    try:
        platform.start()
        assert platform.redis is not None  # started by platform.start()
        print(
            "\n".join(
                [
                    f"DataLab is up: {platform.base_url}  (Traefik -> {', '.join(config.services)})",
                    f"  postgres  {platform.postgres.version()} on 127.0.0.1:{config.postgres_port}",
                    f"  redis     {platform.redis.version().split(' sha=')[0]} on 127.0.0.1:{config.redis_port}",
                    f"  logs      {platform.logs}/",
                    f"  admin     user {config.admin_user!r}, password "
                    + (
                        f"{platform.admin_password()}  (generated, kept in {config.home / 'admin-password'})"
                        if platform.admin_password_generated
                        else ("from DATALAB_ADMIN_PASSWORD" if config.admin_password
                              else f"in {config.home / 'admin-password'}")
                    ),
                    "Ctrl-C stops everything.",
                ]
            ),
            flush=True,
        )
        return platform.run_forever()
    except KeyboardInterrupt:
        print("\nDataLab: stopping ...", flush=True)
        return 0
    except local_stack.ServerError as exc:
        print(f"DataLab: {exc}", file=sys.stderr, flush=True)
        return 1
    finally:
        stopping = True
        platform.stop()
        print("DataLab: stopped.", flush=True)


# The commands of the operations code (datalab.ops): an operator runs them from a checkout
# or a provisioned server, never from the service image.
OPS_COMMANDS = {
    "deploy": "datalab.ops.deploy",
    "status": "datalab.ops.deploy",
    "vault": "datalab.ops.vault_bootstrap",
    "cluster-test": "datalab.ops.cluster_checks",
}


def add_ops_commands(sub: argparse._SubParsersAction) -> None:
    """deploy, status, vault bootstrap, cluster-test: each parser's `run` is the module's
    entry point, or, where the module is not installed, a message saying so."""
    parsers = {
        "deploy": sub.add_parser("deploy", help="parse, plan, register and follow Nomad jobs"),
        "status": sub.add_parser("status", help="jobs, allocations and Consul health"),
        "vault": sub.add_parser("vault", help="Vault/OpenBao set-up"),
        "cluster-test": sub.add_parser(
            "cluster-test", help="the platform flow and fault checks against a running cluster (what make e2e runs)"),
    }
    for command, module_name in OPS_COMMANDS.items():
        parser = parsers[command]
        module = optional_module(module_name)
        if module is None:
            parser.add_argument("args", nargs=argparse.REMAINDER, help=argparse.SUPPRESS)
            parser.set_defaults(run=lambda _args, c=command, m=module_name: not_installed(c, m))
        elif command == "deploy":
            module.add_deploy_arguments(parser)
            parser.set_defaults(run=module.run_deploy)
        elif command == "status":
            module.add_status_arguments(parser)
            parser.set_defaults(run=module.run_status)
        elif command == "vault":
            vault_sub = parser.add_subparsers(dest="vault_command", required=True)
            module.add_arguments(
                vault_sub.add_parser("bootstrap", help="engines, roles, policies, workload identity (idempotent)"))
            parser.set_defaults(run=module.run)
        else:
            module.add_arguments(parser)
            parser.set_defaults(run=module.run)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="datalab", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("up", help="run the whole platform locally (embedded default)")
    p_serve = sub.add_parser("serve", help="run one service")
    p_serve.add_argument("service", choices=sorted(SERVICES))
    sub.add_parser("worker", help="run an RQ worker for the compute queues")
    add_ops_commands(sub)

    args = parser.parse_args(argv)
    if args.command in OPS_COMMANDS:
        return int(args.run(args))
    if args.command == "worker":
        from datalab.compute.worker import run_worker

        run_worker()
        return 0
    if args.command == "up":
        return up()
    if args.command == "serve":
        serve(args.service)
        return 0
    return 2


if __name__ == "__main__":
    sys.exit(main())

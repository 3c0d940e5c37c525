"""`datalab` command: run the platform, or one service."""

from __future__ import annotations

import argparse
import importlib
import os
import signal
import sys

# name -> module with `build_app(settings=None)` and a `<Name>Settings` class
SERVICES = {
    "gateway": "datalab.gateway.app",
    "data": "datalab.data.app",
    "ai": "datalab.ai.app",
    "compute": "datalab.compute.app",
    "viz": "datalab.viz.app",
}


def serve(name: str) -> None:
    """Run one service with uvicorn (graceful: finishes in-flight requests on SIGTERM)."""
    import uvicorn

    module = importlib.import_module(SERVICES[name])
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


def up() -> int:
    """`make up`: the embedded platform in the foreground until Ctrl-C / SIGTERM."""
    from datalab.devstack.local_stack import Platform, PlatformConfig, ServerError

    config = PlatformConfig.from_env()
    platform = Platform(config)
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
    except ServerError as exc:
        print(f"DataLab: {exc}", file=sys.stderr, flush=True)
        return 1
    finally:
        stopping = True
        platform.stop()
        print("DataLab: stopped.", flush=True)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="datalab", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("up", help="run the whole platform locally (embedded default)")
    p_serve = sub.add_parser("serve", help="run one service")
    p_serve.add_argument("service", choices=sorted(SERVICES))
    sub.add_parser("worker", help="run an RQ worker for the compute queues")

    from datalab.ops import deploy

    deploy.add_deploy_arguments(sub.add_parser("deploy", help="parse, plan, register and follow Nomad jobs"))
    deploy.add_status_arguments(sub.add_parser("status", help="jobs, allocations and Consul health"))
    p_vault = sub.add_parser("vault", help="Vault/OpenBao set-up")
    vault_sub = p_vault.add_subparsers(dest="vault_command", required=True)
    p_boot = vault_sub.add_parser("bootstrap", help="engines, roles, policies, workload identity (idempotent)")
    from datalab.ops import vault_bootstrap as vault_cli

    vault_cli.add_arguments(p_boot)
    from datalab.ops import cluster_checks

    cluster_checks.add_arguments(sub.add_parser(
        "cluster-test", help="the platform flow and fault checks against a running cluster (what make e2e runs)"))
    args = parser.parse_args(argv)
    if args.command == "deploy":
        return deploy.run_deploy(args)
    if args.command == "status":
        return deploy.run_status(args)
    if args.command == "vault":
        return vault_cli.run(args)
    if args.command == "cluster-test":
        return cluster_checks.run(args)
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

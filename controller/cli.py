"""The `wa-controller` command: run the operator, run an instance simulator, print the CRD."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import os
import secrets
import socket
import sys
import time
from pathlib import Path

from pydantic import ValidationError

from controller import crd
from controller.settings import Settings


def _run_flags(parser: argparse.ArgumentParser) -> None:
    """One flag per setting (--probe-interval ...), overriding the WA_* environment."""
    for name, field in Settings.model_fields.items():
        parser.add_argument(
            f"--{name.replace('_', '-')}", dest=name, default=None, metavar="VALUE",
            help=f"{field.description or ''} (env WA_{name.upper()}, default {field.default!r})",
        )
    parser.add_argument("--log-format", choices=["json", "plain"], default="json")
    parser.add_argument("--verbose", action="store_true")


def operator_identity() -> str:
    """This process's peering identity, without the user database.

    kopf's own guess calls `getpass.getuser()`, which raises for a UID that has no
    passwd entry (OpenShift, `runAsUser` in a chart) when USER and LOGNAME are unset.
    """
    pod = os.environ.get("POD_ID")
    if pod:
        return pod
    user = os.environ.get("USER") or os.environ.get("LOGNAME") or f"uid{os.getuid()}"
    started = time.strftime("%Y%m%d%H%M%S", time.gmtime())
    return f"{user}@{socket.gethostname()}/{started}/{secrets.token_hex(2)}"


def _run(args: argparse.Namespace) -> int:
    import kopf

    from controller.handlers import build_registry

    overrides = {n: getattr(args, n) for n in Settings.model_fields if getattr(args, n) is not None}
    try:
        settings = Settings(**overrides)
    except ValidationError as error:
        print(f"wa-controller: bad configuration:\n{error}", file=sys.stderr)
        return 2
    if settings.priority is None:  # one per process: equal priorities freeze every replica
        settings = settings.model_copy(update={"priority": secrets.randbelow(1_000_000) + 1})
    kopf.configure(
        verbose=args.verbose,
        log_format=kopf.LogFormat.JSON if args.log_format == "json" else kopf.LogFormat.PLAIN,
    )
    if not args.verbose:  # one line per account event at 10,000 accounts is noise and CPU
        logging.getLogger("kopf.objects").setLevel(logging.WARNING)
    kopf.run(
        registry=build_registry(settings),
        clusterwide=not settings.namespaces,
        namespaces=settings.namespaces,
        standalone=settings.peering is None,
        peering_name=settings.peering,
        priority=settings.priority,
        identity=operator_identity(),
        liveness_endpoint=(
            f"http://0.0.0.0:{settings.liveness_port}/healthz" if settings.liveness_port else None
        ),
    )
    return 0


def _simulate(args: argparse.Namespace) -> int:
    from controller.simulator import InstanceSimulator, serve

    host, _, port = args.listen.rpartition(":")
    try:
        api_key = Path(args.api_key_file).read_text().strip()
        webhook_secret = Path(args.webhook_secret_file).read_text().strip() \
            if args.webhook_secret_file else None
    except OSError as error:
        print(f"wa-controller: cannot read a secret file: {error}", file=sys.stderr)
        return 2
    if bool(args.webhook_url) != bool(webhook_secret):
        print("wa-controller: --webhook-url and --webhook-secret-file go together",
              file=sys.stderr)
        return 2
    try:
        simulator = InstanceSimulator(
            protocol_name=args.protocol, api_key=api_key, worker_id=args.worker_id or args.listen,
            tier=args.tier, ideal=args.ideal, auto_pair=args.auto_pair,
            create_delay=args.create_delay,
            storage_dir=Path(args.storage_dir) if args.storage_dir else None,
            boot_sessions=[s for s in (args.boot_sessions or "").split(",") if s],
            webhook_url=args.webhook_url, webhook_secret=webhook_secret,
            # Send from the address served, so the receiver sees this pod's IP.
            source_address=host if host not in ("", "0.0.0.0") else None,  # noqa: S104
        )
    except ValueError as error:
        print(f"wa-controller: {error}", file=sys.stderr)
        return 2

    async def simulate() -> None:
        simulator.reboot()  # boot as the service does: re-create what it knows
        await serve(simulator, host or "127.0.0.1", int(port))

    print(f"simulating a {args.protocol} instance on http://{host}:{port}", flush=True)
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(simulate())
    return 0


def _db_upgrade(args: argparse.Namespace) -> int:
    from sqlalchemy.exc import SQLAlchemyError

    from controller.mirror import engine_for, upgrade
    from controller.mirror.rows import explain_failure

    overrides = {"database_url": args.database_url, "mirror_table": args.mirror_table}
    try:
        settings = Settings(**{k: v for k, v in overrides.items() if v is not None})
    except ValidationError as error:
        print(f"wa-controller: bad configuration:\n{error}", file=sys.stderr)
        return 2
    engine = engine_for(settings.database_url.get_secret_value())
    try:
        upgrade(engine, settings.mirror_table)
    except SQLAlchemyError as error:
        failure = explain_failure(error)
        print(f"wa-controller: {failure.message} [{failure.reason}]", file=sys.stderr)
        return 1
    finally:
        engine.dispose()
    print(f"the mirror table {settings.mirror_table!r} is at the latest schema")
    return 0


def main(argv: list[str] | None = None) -> int:
    from controller.simulator import PROTOCOLS as SIMULATED

    parser = argparse.ArgumentParser(prog="wa-controller", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)

    run = commands.add_parser("run", help="run the operator")
    _run_flags(run)

    simulate = commands.add_parser(
        "simulate-instance", help="serve a simulated WhatsApp instance (blazz or waha)"
    )
    simulate.add_argument("--protocol", choices=sorted(SIMULATED), required=True)
    simulate.add_argument("--tier", default="default",
                          help="the protocol's variant: WAHA core (as recorded) or plus")
    simulate.add_argument("--ideal", action="store_true",
                          help="an idealized service instead of the recorded one (tests only)")
    simulate.add_argument("--create-delay", type=float, default=1.0, metavar="SECONDS",
                          help="how long a create takes to answer (the browser launch)")
    simulate.add_argument("--storage-dir", default=None, metavar="DIR",
                          help="stored logins, shared by the pods of one storage group")
    simulate.add_argument("--boot-sessions", default=None, metavar="S1,S2",
                          help="sessions the service re-creates at boot (the seed's "
                               "active accounts)")
    simulate.add_argument("--listen", required=True, metavar="HOST:PORT")
    simulate.add_argument("--api-key-file", required=True, metavar="FILE")
    simulate.add_argument("--auto-pair", type=float, default=None, metavar="SECONDS",
                          help="sessions waiting for a QR scan pair by themselves after this")
    simulate.add_argument("--worker-id", default=None, help="WAHA worker id (default: --listen)")
    simulate.add_argument("--webhook-url", default=None, metavar="URL",
                          help="send signed webhooks here on every session change")
    simulate.add_argument("--webhook-secret-file", default=None, metavar="FILE",
                          help="the HMAC secret the webhooks are signed with")

    commands.add_parser("crd", help="print the WAAccount CustomResourceDefinition (YAML)")

    database = commands.add_parser("db", help="the SQL mirror's schema")
    database.add_argument("action", choices=["upgrade"], help="apply the migrations")
    database.add_argument("--database-url", default=None, metavar="URL",
                          help="SQLAlchemy URL (env WA_DATABASE_URL)")
    database.add_argument("--mirror-table", default=None, metavar="NAME",
                          help="table name (env WA_MIRROR_TABLE)")

    args = parser.parse_args(argv)
    if args.command == "run":
        return _run(args)
    if args.command == "simulate-instance":
        return _simulate(args)
    if args.command == "db":
        return _db_upgrade(args)
    sys.stdout.write(crd.render())
    return 0

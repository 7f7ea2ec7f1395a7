"""The `wa-controller` command: run the operator, run an instance simulator, print the CRD,
import the application's accounts, show the fleet."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import secrets
import socket
import sys
import time
from pathlib import Path

from pydantic import SecretStr, ValidationError
from sqlalchemy.engine import make_url

from controller import crd
from controller.settings import Settings

# Settings whose values are never echoed in an error.
SECRET_SETTINGS = frozenset(name for name, field in Settings.model_fields.items()
                            if field.annotation is SecretStr)


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


def _settings(args: argparse.Namespace, names: list[str] | None = None) -> Settings | None:
    """The settings from flags over the environment, or None after saying, one line per
    problem, which setting is wrong and why (never echoing a secret)."""
    names = names or list(Settings.model_fields)
    overrides = {n: getattr(args, n) for n in names if getattr(args, n, None) is not None}
    try:
        return Settings(**overrides)
    except ValidationError as error:
        for problem in error.errors():
            setting = ".".join(str(part) for part in problem["loc"])
            where = f" (--{setting.replace('_', '-')}, WA_{setting.upper()})" if setting else ""
            message = problem["msg"].removeprefix("Value error, ")
            given = problem.get("input")
            shown = "" if setting in SECRET_SETTINGS or not isinstance(given, str | int | float) \
                else f" (given: {str(given)[:80]!r})"
            what = f"bad setting {setting}{where}" if setting else "bad settings"
            print(f"wa-controller: {what}: {message}{shown}", file=sys.stderr)
        return None


def _run(args: argparse.Namespace) -> int:
    import kopf

    from controller import logs
    from controller.handlers import build_registry
    from controller.http_server import ListenerError
    from controller.services import listeners_of

    settings = _settings(args)
    if settings is None:
        return 2
    if settings.priority is None:  # one per process: equal priorities freeze every replica
        settings = settings.model_copy(update={"priority": secrets.randbelow(1_000_000) + 1})
    try:
        listeners = listeners_of(settings)  # before anything acts: a taken port exits here
    except ListenerError as error:
        print(f"wa-controller: bad setting {error}", file=sys.stderr)
        return 2
    logs.configure(verbose=args.verbose, json_format=args.log_format == "json")
    logs.keep_out(settings.database_url.get_secret_value())
    password = make_url(settings.database_url.get_secret_value()).password
    if password:
        logs.keep_out(str(password))
    kopf.run(
        registry=build_registry(settings, listeners),
        clusterwide=not settings.namespaces,
        namespaces=settings.namespaces,
        standalone=settings.peering is None,
        peering_name=settings.peering,
        priority=settings.priority,
        identity=operator_identity(),
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

    settings = _settings(args, ["database_url", "mirror_table"])
    if settings is None:
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


def _country_code(value: str) -> str:
    from controller.importer import country_code

    try:
        return country_code(value)
    except ValueError as error:
        raise argparse.ArgumentTypeError(str(error)) from None


def _import(args: argparse.Namespace) -> int:
    from controller import importer
    from controller.kubeconfig import (
        API_UNREACHABLE,
        NoClusterError,
        default_namespace,
        unreachable,
    )

    url = args.database_url or os.environ.get("WA_DATABASE_URL")
    if not url:
        print("wa-controller: --database-url (or WA_DATABASE_URL) is required", file=sys.stderr)
        return 2
    try:
        rows = importer.read_rows(url, args.table, args.where)
    except importer.SourceError as error:
        print(f"wa-controller: cannot read the table {args.table!r}: {error}", file=sys.stderr)
        return 2
    namespace = args.namespace or (default_namespace() if args.apply else None)
    result = importer.plan(rows, namespace=namespace,
                           default_country_code=args.default_country_code)
    refused = list(result.refused)
    if args.apply:
        try:
            done, refused_by_api = asyncio.run(importer.create_accounts(result.imported,
                                                                        namespace))
        except (NoClusterError, importer.ApplyError) as error:
            print(f"wa-controller: {error}", file=sys.stderr)
            return 2
        except API_UNREACHABLE as error:
            print(f"wa-controller: {unreachable(error)}", file=sys.stderr)
            return 2
        for line in done:
            print(line)
        refused += refused_by_api
    else:
        sys.stdout.write(importer.render(result.imported, source=args.table))
    for refusal in refused:
        print(f"wa-controller: skipped {refusal}", file=sys.stderr)
    print(f"wa-controller: {len(rows) - len(refused)} of {len(rows)} rows imported, "
          f"{len(refused)} skipped", file=sys.stderr)
    return 1 if refused else 0


def _status(args: argparse.Namespace) -> int:
    from datetime import UTC, datetime

    from controller import status_view
    from controller.kubeconfig import (
        API_UNREACHABLE,
        NoClusterError,
        connect,
        default_namespace,
        unreachable,
    )

    async def look() -> status_view.FleetStatus:
        async with await connect() as api_client:
            return await status_view.gather(
                api_client, namespace=args.namespace, instance_selector=args.instance_selector,
                operator_namespace=args.operator_namespace or args.namespace
                or default_namespace(),
                operator_selector=args.operator_selector, metrics_url=args.metrics_url)

    try:
        status = asyncio.run(look())
    except (NoClusterError, status_view.StatusError) as error:
        print(f"wa-controller: {error}", file=sys.stderr)
        return 2
    except API_UNREACHABLE as error:
        print(f"wa-controller: {unreachable(error)}", file=sys.stderr)
        return 2
    if args.output == "json":
        print(status.model_dump_json(by_alias=True, indent=2))
    else:
        sys.stdout.write(status_view.render(status, wide=args.output == "wide",
                                            now=datetime.now(UTC)))
    return status_view.exit_code(status)


def _rebalance(args: argparse.Namespace) -> int:
    from kubernetes_asyncio.client.exceptions import ApiException

    from controller import rebalance
    from controller.kubeconfig import (
        API_UNREACHABLE,
        NoClusterError,
        api_message,
        connect,
        default_namespace,
        unreachable,
    )

    namespace = args.namespace or default_namespace()

    async def work() -> str:
        async with await connect() as api_client:
            if args.command == "drain":
                return await rebalance.drain(api_client, namespace, args.pod, undo=args.undo)
            accounts, pods = await rebalance.gather(api_client, namespace,
                                                    args.instance_selector)
            loads, moves = rebalance.plan(accounts, pods, threshold=args.threshold,
                                          default_capacity=args.default_capacity,
                                          default_group=args.default_storage_group)
            said = rebalance.render_plan(loads, moves, args.threshold)
            if args.apply and moves:
                said += "\n".join(await rebalance.apply(api_client, namespace, accounts,
                                                         moves)) + "\n"
            elif moves:
                said += "(nothing changed: add --apply to have the operator move them)\n"
            return said

    try:
        sys.stdout.write(asyncio.run(work()).rstrip("\n") + "\n")
    except NoClusterError as error:
        print(f"wa-controller: {error}", file=sys.stderr)
        return 2
    except ApiException as error:
        print(f"wa-controller: the API server refused: {api_message(error)}", file=sys.stderr)
        return 2
    except API_UNREACHABLE as error:
        print(f"wa-controller: {unreachable(error)}", file=sys.stderr)
        return 2
    return 0


def main(argv: list[str] | None = None) -> int:
    from controller.simulator import PROTOCOLS as SIMULATED
    from controller.status_view import OPERATOR_SELECTOR

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

    importing = commands.add_parser(
        "import", help="turn the application's accounts table into WAAccounts",
        description="Read the application's accounts (the seed's whatsapp_accounts: "
        "session_id, phone_number, workspace_id, uuid or id) and print WAAccount manifests "
        "for Git, or create them with --apply. Rows the WAAccount schema would refuse are "
        "named on stderr and skipped (exit 1); nothing is changed to fit.")
    importing.add_argument("--database-url", default=None, metavar="URL",
                           help="SQLAlchemy URL, e.g. mysql+pymysql://user:pw@host/db (env "
                                "WA_DATABASE_URL: better, a command line shows in `ps`)")
    importing.add_argument("--table", default="whatsapp_accounts", metavar="NAME",
                           help="the application's table ([schema.]name)")
    importing.add_argument("--namespace", default=None, metavar="NS",
                           help="the instance pods' namespace (with --apply, default: the "
                                "kubeconfig context's)")
    importing.add_argument("--where", default=None, metavar="SQL",
                           help="your own filter, sent as written in WHERE (...) of a "
                                "read-only SELECT, e.g. \"status <> 'deleted'\"")
    importing.add_argument("--default-country-code", type=_country_code, default=None,
                           metavar="CC", help="convert local numbers (0816...) to E.164 "
                                              "with this calling code, e.g. 62")
    importing.add_argument("--apply", action="store_true",
                           help="create the accounts through the API server (existing ones "
                                "are left as they are) instead of printing them")

    status = commands.add_parser(
        "status", help="the fleet at a glance: pods, accounts, who needs a person",
        description="Per instance pod its protocol, health, sessions/capacity and last probe "
        "(the operator's view, from its /metrics); accounts per phase; the accounts that need "
        "a person (Pairing, Lost, Pending, Failed, not Mirrored) and why. Exit 1 when an "
        "account needs a person, 3 when the operator cannot be reached, 2 when the API "
        "server cannot be asked, else 0.")
    status.add_argument("--namespace", default=None, metavar="NS",
                        help="one namespace (default: all)")
    status.add_argument("-o", "--output", choices=["wide", "json"], default=None)
    status.add_argument("--instance-selector", metavar="K=V[,K=V]",
                        default=Settings.model_fields["instance_selector"].default,
                        help="labels that find instance pods (as the operator's setting)")
    status.add_argument("--metrics-url", default=None, metavar="URL",
                        help="read the operator's /metrics here instead of through the API "
                             "server's proxy to its pods")
    status.add_argument("--operator-namespace", default=None, metavar="NS",
                        help="where the operator runs (default: --namespace, else the "
                             "kubeconfig context's)")
    status.add_argument("--operator-selector", default=OPERATOR_SELECTOR, metavar="K=V",
                        help="labels of the operator's pods (the chart's)")

    rebalancing = commands.add_parser(
        "rebalance", help="even out the sessions over the instance pods",
        description="Plan the fewest moves (most to least loaded pod, within storage groups, "
        "never a session that is not Connected) that bring the spread of load/capacity "
        "within --threshold, and print them; with --apply, mark the accounts for the "
        "operator, which moves them stop-then-start, in waves.")
    rebalancing.add_argument("--namespace", default=None, metavar="NS",
                             help="default: the kubeconfig context's")
    rebalancing.add_argument("--threshold", type=float, default=0.1, metavar="SPREAD",
                             help="largest spread of load/capacity left (default 0.1)")
    rebalancing.add_argument("--apply", action="store_true",
                             help="have the operator make the moves")
    rebalancing.add_argument("--instance-selector", metavar="K=V[,K=V]",
                             default=Settings.model_fields["instance_selector"].default)
    rebalancing.add_argument("--default-capacity", type=int, metavar="N",
                             default=Settings.model_fields["default_capacity"].default,
                             help="capacity of pods without the capacity annotation")
    rebalancing.add_argument("--default-storage-group", metavar="NAME",
                             default=Settings.model_fields["default_storage_group"].default,
                             help="storage group of pods without the annotation")
    draining = commands.add_parser(
        "drain", help="move every session off an instance pod",
        description="Annotate the pod with wa-controller.io/drain=true: the operator places "
                    "nothing there and moves its sessions away, in waves, within its storage "
                    "group. --undo takes the annotation off (moves in flight finish).")
    draining.add_argument("pod", metavar="POD")
    draining.add_argument("--namespace", default=None, metavar="NS")
    draining.add_argument("--undo", action="store_true")

    args = parser.parse_args(argv)
    if args.command == "run":
        return _run(args)
    if args.command == "simulate-instance":
        return _simulate(args)
    if args.command == "db":
        return _db_upgrade(args)
    if args.command in ("rebalance", "drain"):
        return _rebalance(args)
    if args.command == "import":
        return _import(args)
    if args.command == "status":
        return _status(args)
    sys.stdout.write(crd.render())
    return 0

"""The `classwire` command: serve, database migrations, and tenant bootstrapping."""

from __future__ import annotations

import argparse
import asyncio
import json
import sys

from .config import Config, ConfigError, load_config
from .logs import configure_logging
from .plugins.types import ConfigError as PluginConfigError

EXIT_CONFIG = 2


def _load(args) -> Config:
    return load_config(config_file=args.config)


def _print_bootstrap(config: Config, port: int, tenant_id: str, secret: str) -> None:
    host = config.listen.rpartition(":")[0]
    address = f"{host}:{port}"
    sys.stdout.write(
        f"""
classwire is serving on {address} (data in {config.data_dir.resolve()}).
A first tenant was created: {tenant_id}
Its admin API key is shown only now:

    export CLASSWIRE_API_KEY={secret}

Call it with buf curl (reflection is on):

    npx buf curl --protocol grpc --http2-prior-knowledge \\
      -H "authorization: Bearer $CLASSWIRE_API_KEY" \\
      http://{address}/classwire.api.platform.v1.PlatformService/GetTenant

or from Python:

    from classwire.client import connect_sync
    from classwire.api.platform.v1 import service_pb2, service_pb2_grpc
    channel = connect_sync("{address}", api_key="$CLASSWIRE_API_KEY")
    print(service_pb2_grpc.PlatformServiceStub(channel).GetTenant(service_pb2.GetTenantRequest()))

"""
    )
    sys.stdout.flush()


async def _serve(config: Config) -> None:
    from .app import Server

    server = Server(config)
    await server.start()
    if config.bootstrap:
        created = await server.platform.bootstrap()
        if created:
            _print_bootstrap(config, server.port, *created)
    await server.run_until_signalled()


async def _upgrade(config: Config) -> None:
    from .store.engine import Database

    config.data_dir.mkdir(parents=True, exist_ok=True)
    db = Database(config.effective_database_url)
    try:
        await db.migrate()
    finally:
        await db.dispose()


async def _create_tenant(config: Config, name: str, operator: bool) -> dict:
    from .app import Platform
    from .convert.platform import api_key_to_proto  # noqa: F401  (keeps the proto import warm)
    from .domain.platform import TenantSettings

    platform = await Platform.open(config)
    try:
        created = await platform.platform.create_tenant(
            None, name, TenantSettings(), operator=operator
        )
    finally:
        await platform.close()
    return {
        "tenant_id": created.tenant.tenant.id,
        "api_key_id": created.api_key.id,
        "api_key": created.secret,
        "scopes": list(created.api_key.scopes),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="classwire", description=__doc__)
    parser.add_argument("--config", help="a TOML configuration file (also CLASSWIRE_CONFIG)")
    commands = parser.add_subparsers(dest="command", required=True)
    commands.add_parser("serve", help="run the gRPC server")
    db = commands.add_parser("db", help="database maintenance").add_subparsers(
        dest="db", required=True
    )
    db.add_parser("upgrade", help="apply migrations up to the newest")
    admin = commands.add_parser("admin", help="administration").add_subparsers(
        dest="admin", required=True
    )
    create = admin.add_parser("create-tenant", help="create a tenant and its first admin API key")
    create.add_argument("--name", required=True)
    create.add_argument("--json", action="store_true", help="print the result as JSON")
    create.add_argument(
        "--operator", action="store_true", help="also grant the key the operator scope"
    )
    args = parser.parse_args(argv)

    try:
        config = _load(args)
    except ConfigError as exc:
        sys.stderr.write(f"classwire: configuration error: {exc}\n")
        return EXIT_CONFIG
    configure_logging(config.log_format, config.log_level)
    try:
        if args.command == "serve":
            asyncio.run(_serve(config))
        elif args.command == "db":
            asyncio.run(_upgrade(config))
        elif args.command == "admin":
            result = asyncio.run(_create_tenant(config, args.name, args.operator))
            if args.json:
                print(json.dumps(result))
            else:
                print(
                    f"tenant {result['tenant_id']}\nadmin API key (shown once): {result['api_key']}"
                )
    except (ConfigError, PluginConfigError) as exc:
        sys.stderr.write(f"classwire: configuration error: {exc}\n")
        return EXIT_CONFIG
    except KeyboardInterrupt:
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())

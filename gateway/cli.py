"""The ``imap-gateway`` command.

Every sub-command takes ``--config FILE``, before or after the sub-command; without it
the ``IMAP_GATEWAY_CONFIG`` environment variable names the file, and without that
:data:`DEFAULT_CONFIG` is used. Commands meant for scripts take ``--json``; every time in
``--json`` output is an RFC 3339 UTC string (``gateway.cliformat``).
A bad config, policy file or command line names the file and the key, exits non-zero
and changes nothing.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from collections.abc import Mapping
from pathlib import Path

DEFAULT_CONFIG = "/etc/imap-gateway/gateway.toml"
#: Names the config file when no --config is given (the flag wins over it).
CONFIG_ENV = "IMAP_GATEWAY_CONFIG"


def resolve_config(flag: str | None, environ: Mapping[str, str]) -> tuple[str, str]:
    """``(path, source)``: --config, else $IMAP_GATEWAY_CONFIG, else the default.

    ``source`` says where the path came from, for error messages.
    """
    if flag:
        return flag, "--config"
    env = environ.get(CONFIG_ENV, "")
    if env:
        return env, f"${CONFIG_ENV}"
    return DEFAULT_CONFIG, f"the default (no --config, no ${CONFIG_ENV})"


def _policy_factors() -> tuple[str, ...]:
    from gateway.policy.model import FACTORS

    return FACTORS


def _load(args: argparse.Namespace):
    from gateway.config import ConfigError, load_config

    try:
        return load_config(Path(args.config))
    except ConfigError as exc:
        where = "" if args.config_source == "--config" else f" (config file from {args.config_source})"
        print(f"imap-gateway: {exc}{where}", file=sys.stderr)
        raise SystemExit(2) from None


def cmd_serve(args: argparse.Namespace) -> int:
    """One process (``[server] workers = 1``), a supervisor of N workers, or (with
    ``IMAP_GATEWAY_WORKER`` in the environment, set by the supervisor) one of its workers."""
    import tempfile

    import trio

    config = _load(args)
    worker_env = os.environ.pop("IMAP_GATEWAY_WORKER", None)
    metrics_dir = None
    if worker_env is None and config.server.workers > 1:
        # Before prometheus_client is imported: every process of the gateway then writes
        # its metrics there, and the supervisor's scrape adds them up.
        metrics_dir = tempfile.mkdtemp(prefix="imap-gateway-metrics-")
        os.environ["PROMETHEUS_MULTIPROC_DIR"] = metrics_dir

    from gateway.observability.logs import configure_logging
    from gateway.proxy.bind import BindError
    from gateway.proxy.server import serve
    from gateway.proxy.supervisor import supervise
    from gateway.proxy.tls import TLSSetupError
    from gateway.proxy.workerlink import WorkerSpec
    from gateway.startup import StartupError, prepare

    try:
        runtime = prepare(config)
    except StartupError as exc:
        print(f"imap-gateway: {exc}", file=sys.stderr)
        return 2
    if metrics_dir is not None:
        # The supervisor checks everything the workers will load (and creates the store
        # and its key, migrates the schema) once, before any of them starts; it serves no
        # login and no page, so it holds no store connection while it runs.
        runtime.store.close()
    log_file = None
    if config.logging.file:
        log_file = open(config.logging.file, "a", buffering=1, encoding="utf-8")  # noqa: SIM115
    configure_logging(config.logging.format, config.logging.level, log_file)
    try:
        if metrics_dir is not None:
            import structlog

            structlog.contextvars.bind_contextvars(process="supervisor")
            trio.run(supervise, config, metrics_dir)
        elif worker_env is not None:
            import structlog

            spec = WorkerSpec.from_env(worker_env)
            structlog.contextvars.bind_contextvars(worker=spec.index)
            trio.run(serve, config, runtime, spec)
        else:
            trio.run(serve, config, runtime)
    except TLSSetupError as exc:
        print(f"imap-gateway: {config.source_path}: tls: {exc}", file=sys.stderr)
        return 2
    except BindError as exc:
        # Raised before anything is served or logged, with every socket closed again.
        print(f"imap-gateway: {config.source_path}: {exc}", file=sys.stderr)
        return 2
    except OSError as exc:
        print(f"imap-gateway: cannot listen: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        pass
    finally:
        if metrics_dir is not None:
            import shutil

            shutil.rmtree(metrics_dir, ignore_errors=True)
    return 0


def cmd_check_config(args: argparse.Namespace) -> int:
    from gateway.configcheck import check_config

    config = _load(args)
    report = check_config(config, time.time())
    if args.json:
        payload = {"ok": report.ok, "errors": report.errors, "warnings": report.warnings}
        if report.ok:
            payload["config"] = config.summary()
        print(json.dumps(payload, indent=2, default=str),
              file=sys.stdout if report.ok else sys.stderr)
        return 0 if report.ok else 2
    for warning in report.warnings:
        print(f"imap-gateway: {config.source_path}: warning: {warning}", file=sys.stderr)
    for error in report.errors:
        print(f"imap-gateway: {config.source_path}: {error}", file=sys.stderr)
    if not report.ok:
        return 2
    noted = f" ({len(report.warnings)} warning(s) above)" if report.warnings else ""
    print(f"{config.source_path}: OK{noted}")
    return 0


def _emit(result: tuple[int, object], as_json: bool) -> int:
    """Print an admin helper's (exit code, text or dict) result; errors go to stderr."""
    code, payload = result
    if as_json:
        text = json.dumps(payload, indent=2, default=str)
    else:
        text = payload if isinstance(payload, str) else json.dumps(payload, indent=2, default=str)
    print(text, file=sys.stdout if code == 0 else sys.stderr)
    return code


def _open_store(config, *, create_key: bool = False):
    from gateway.store import open_configured_store
    from gateway.store.errors import StoreError

    try:
        return open_configured_store(config.store, create_key=create_key)
    except (StoreError, OSError) as exc:
        print(f"imap-gateway: {config.source_path}: store: {exc}", file=sys.stderr)
        raise SystemExit(1) from None


def cmd_policy(args: argparse.Namespace) -> int:
    from gateway.policy.commands import check_command, explain_command

    config = _load(args)
    if args.policy_command == "check":
        code, text = check_command(config.policy.dir)
        if args.json:
            print(json.dumps({"ok": code == 0, "dir": str(config.policy.dir), "report": text},
                             indent=2))
        else:
            print(text, file=sys.stdout if code == 0 else sys.stderr)
        return code
    code, text = explain_command(config.policy.dir, args.user, args.ip, args.factor, args.json)
    print(text, file=sys.stdout if code in (0,) else sys.stderr)
    return code


def cmd_totp(args: argparse.Namespace) -> int:
    from gateway.auth import admin

    config = _load(args)
    with _open_store(config, create_key=args.totp_command == "enroll") as store:
        if args.totp_command == "enroll":
            return _emit(admin.totp_enroll(store, args.user, as_json=args.json,
                                           issuer=config.store.totp_issuer), args.json)
        if args.totp_command == "verify":
            code = args.code
            if code is None:
                if not sys.stdin.isatty():
                    print("imap-gateway: totp verify: give CODE (no terminal to prompt on)",
                          file=sys.stderr)
                    return 2
                code = input(f"Current code from the authenticator app for {args.user}: ")
            return _emit(admin.totp_verify(store, args.user, code, as_json=args.json), args.json)
        return _emit(admin.totp_disable(store, args.user, as_json=args.json), args.json)


def _check_user(config, user: str, force: bool, as_json: bool) -> int | None:
    """Ask Dovecot whether ``user`` exists (a master login as the user, over IMAP).

    None: go ahead (the user exists, or ``force`` and a warning went to stderr).
    Otherwise the exit code, after the error was printed.
    """
    import trio

    from gateway.proxy.usercheck import UserCheck, UserCheckResult, check_backend_user
    from gateway.startup import StartupError, read_master_password

    try:
        master_password = read_master_password(config)
    except StartupError as exc:
        result = UserCheckResult(UserCheck.NOT_CONFIGURED, str(exc))
    else:
        result = trio.run(check_backend_user, config, master_password, user)
    if result.outcome is UserCheck.EXISTS:
        return None
    if result.outcome is UserCheck.UNKNOWN_USER:
        problem = f"{result.detail}: no app password created (a typo in the user name?)"
    else:
        problem = f"cannot check that {user} exists: {result.detail}"
    if force:
        print(f"imap-gateway: warning: {problem}; creating it anyway (--force)", file=sys.stderr)
        return None
    message = f"{problem}; --force creates it anyway"
    return _emit((1, {"error": message} if as_json else f"imap-gateway: {message}"), as_json)


def cmd_app_password(args: argparse.Namespace) -> int:
    from gateway.auth import admin

    config = _load(args)
    if args.ap_command == "create":
        refused = _check_user(config, args.user, args.force, args.json)
        if refused is not None:
            return refused
    with _open_store(config, create_key=True) as store:
        if args.ap_command == "create":
            return _emit(admin.app_password_create(
                store, args.user, args.label, scopes=args.scope, mailboxes=args.mailboxes,
                expires=args.expires, as_json=args.json), args.json)
        if args.ap_command == "list":
            return _emit(admin.app_password_list(store, args.user, as_json=args.json), args.json)
        return _emit(admin.app_password_revoke(store, args.user, args.label, as_json=args.json),
                     args.json)


def cmd_devices(args: argparse.Namespace) -> int:
    from gateway.auth import admin

    config = _load(args)
    with _open_store(config) as store:
        if args.devices_command == "list":
            return _emit(admin.devices_list(store, args.user, as_json=args.json), args.json)
        if args.devices_command == "pending":
            return _emit(admin.devices_pending(store, args.user, as_json=args.json), args.json)
        if args.devices_command == "approve":
            return _emit(admin.devices_approve(store, args.user, args.id, expires=args.expires,
                                               as_json=args.json), args.json)
        return _emit(admin.devices_forget(store, args.user, args.id, all_devices=args.all,
                                          as_json=args.json), args.json)


def cmd_users(args: argparse.Namespace) -> int:
    from gateway.auth import admin

    config = _load(args)
    with _open_store(config) as store:
        return _emit(admin.users_invite(store, args.user, expires=args.expires,
                                        public_url=config.web.public_url,
                                        as_json=args.json), args.json)


def _admin(args: argparse.Namespace, action) -> int:
    """Run ``action(client)`` against the running gateway's admin API and print the result.

    A turned-off API or an unreadable token file is an error like any other: exit 1, and
    with --json a parseable {"error": ...} on stderr.
    """
    from gateway.admin_client import AdminDisabled, client_from_config
    from gateway.web.token import AdminTokenError

    config = _load(args)
    try:
        client = client_from_config(config)
    except (AdminDisabled, AdminTokenError) as exc:
        return _emit((1, {"error": str(exc)} if args.json else f"imap-gateway: {exc}"),
                     args.json)
    return _emit(action(client), args.json)


def cmd_sessions(args: argparse.Namespace) -> int:
    from gateway import admin_client as ac

    if args.sessions_command == "list":
        return _admin(args, lambda c: ac.sessions_list_command(c, args.json))
    return _admin(args, lambda c: ac.sessions_kill_command(c, args.id, args.json))


def cmd_bans(args: argparse.Namespace) -> int:
    from gateway import admin_client as ac

    if args.bans_command == "list":
        return _admin(args, lambda c: ac.bans_list_command(c, args.json))
    if args.bans_command == "add":
        return _admin(args, lambda c: ac.bans_add_command(c, args.network, args.ttl,
                                                           args.reason, args.json))
    return _admin(args, lambda c: ac.bans_remove_command(c, args.network, args.json))


def cmd_events(args: argparse.Namespace) -> int:
    from gateway.feed_client import follow_command

    if not args.follow:
        message = ("events needs --follow: the feed shows what happens from now on (past "
                   "events are in the gateway's log)")
        print(json.dumps({"error": message}) if args.json else f"imap-gateway: {message}",
              file=sys.stderr)
        return 2
    return follow_command(_load(args), as_json=args.json, kinds=args.kind or [],
                          user=args.user, address=args.address)


def _add_global_options(p: argparse.ArgumentParser) -> None:
    # SUPPRESS: the options may stand anywhere: before the command ("--config F policy
    # check"), before or after the action word ("policy --json check", "policy check
    # --json"); a nested parser's default must not overwrite what an outer one parsed.
    p.add_argument("--config", default=argparse.SUPPRESS, metavar="FILE",
                   help=f"gateway config file (default: ${CONFIG_ENV}, else {DEFAULT_CONFIG})")
    p.add_argument("--json", action="store_true", default=argparse.SUPPRESS,
                   help="machine-readable output")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="imap-gateway",
        description="Security-hardening IMAP gateway in front of Dovecot.",
    )
    common = argparse.ArgumentParser(add_help=False)
    _add_global_options(common)
    _add_global_options(parser)
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser("serve", parents=[common], help="run the gateway")
    p.set_defaults(func=cmd_serve)
    p = sub.add_parser("check-config", parents=[common],
                       help="validate the config file, its certificates, policies and "
                            "secret files, and exit")
    p.add_argument("file", nargs="?", metavar="FILE",
                   help="the config file (same as --config FILE)")
    p.set_defaults(func=cmd_check_config)

    p = sub.add_parser("policy", parents=[common], help="check or explain login policies")
    psub = p.add_subparsers(dest="policy_command", required=True, metavar="ACTION")
    psub.add_parser("check", parents=[common], help="validate every file in [policy] dir")
    e = psub.add_parser("explain", parents=[common],
                        help="which rule decides a login, and why earlier rules did not match")
    e.add_argument("--user", required=True)
    e.add_argument("--ip", required=True)
    e.add_argument("--factor", default="none",
                   choices=list(_policy_factors()),
                   help="the factor the login presents (default: none); oauth: an OAuth "
                   "token without MFA in its amr, oauth-mfa: one with it")
    p.set_defaults(func=cmd_policy)

    p = sub.add_parser("totp", parents=[common], help="TOTP enrolment")
    tsub = p.add_subparsers(dest="totp_command", required=True, metavar="ACTION")
    t = tsub.add_parser("enroll", parents=[common],
                        help="new seed: prints the otpauth URI and a QR code")
    t.add_argument("user")
    t = tsub.add_parser("verify", parents=[common],
                        help="activate the pending seed with a current code")
    t.add_argument("user")
    t.add_argument("code", nargs="?", help="prompted for when omitted")
    t = tsub.add_parser("disable", parents=[common], help="remove the user's TOTP seed")
    t.add_argument("user")
    p.set_defaults(func=cmd_totp)

    p = sub.add_parser("app-password", parents=[common], help="per-device app passwords")
    asub = p.add_subparsers(dest="ap_command", required=True, metavar="ACTION")
    a = asub.add_parser("create", parents=[common], help="create one; it is shown only once")
    a.add_argument("user")
    a.add_argument("--label", required=True, help='device name, e.g. "iPhone"')
    a.add_argument("--scope", action="append", choices=["full", "read-only"],
                   help="access level (default: full)")
    a.add_argument("--mailboxes", help="comma list of mailboxes, e.g. INBOX,Archive/*")
    a.add_argument("--expires", help="lifetime, e.g. 90d (default: never)")
    a.add_argument("--force", action="store_true",
                   help="create it even when Dovecot does not confirm the user exists "
                        "(a warning is printed)")
    a = asub.add_parser("list", parents=[common], help="list (never shows the secrets)")
    a.add_argument("user")
    a = asub.add_parser("revoke", parents=[common],
                        help="revoke; live sessions using it end within 2 seconds")
    a.add_argument("user")
    a.add_argument("label")
    p.set_defaults(func=cmd_app_password)

    p = sub.add_parser("devices", parents=[common],
                       help="remembered devices (TOTP skipped) and devices awaiting approval")
    dsub = p.add_subparsers(dest="devices_command", required=True, metavar="ACTION")
    d = dsub.add_parser("list", parents=[common])
    d.add_argument("user")
    d = dsub.add_parser("forget", parents=[common])
    d.add_argument("user")
    d.add_argument("id", nargs="?", help="device id from 'devices list'")
    d.add_argument("--all", action="store_true", help="forget every device of the user")
    d = dsub.add_parser("pending", parents=[common],
                        help="devices that asked for approval (a login with the right "
                        "password, no second factor)")
    d.add_argument("user")
    d = dsub.add_parser("approve", parents=[common],
                        help="let the device's next password login in and remember it")
    d.add_argument("user")
    d.add_argument("id", help="device id from 'devices pending'")
    d.add_argument("--expires", help="how long the approval waits for that login "
                   "(default: 24h)")
    p.set_defaults(func=cmd_devices)

    p = sub.add_parser("users", parents=[common], help="user accounts (self-service portal)")
    usub = p.add_subparsers(dest="users_command", required=True, metavar="ACTION")
    u = usub.add_parser("invite", parents=[common],
                        help="a one-time invitation link to the portal ([web] public_url); "
                             "it is shown only once")
    u.add_argument("user")
    u.add_argument("--expires", help="lifetime, e.g. 72h or 7d (default: 72h)")
    p.set_defaults(func=cmd_users)

    p = sub.add_parser("sessions", parents=[common],
                       help="live client sessions (via the running gateway's admin API)")
    ssub = p.add_subparsers(dest="sessions_command", required=True, metavar="ACTION")
    ssub.add_parser("list", parents=[common], help="every open session, oldest first")
    s = ssub.add_parser("kill", parents=[common],
                        help="end a session; the client gets BYE")
    s.add_argument("id", help="session id from 'sessions list'")
    p.set_defaults(func=cmd_sessions)

    p = sub.add_parser("bans", parents=[common],
                       help="banned addresses and networks (via the admin API)")
    bsub = p.add_subparsers(dest="bans_command", required=True, metavar="ACTION")
    bsub.add_parser("list", parents=[common], help="active bans, soonest expiry first")
    b = bsub.add_parser("add", parents=[common],
                        help="ban an address or CIDR network; it gets BYE at connect")
    b.add_argument("network", help="e.g. 192.0.2.7 or 192.0.2.0/24")
    b.add_argument("--ttl", help="lifetime, e.g. 1h (default and most: [limits] ban_ttl_max)")
    b.add_argument("--reason", help='shown in "bans list" and logs (default: admin)')
    b = bsub.add_parser("remove", parents=[common], help="lift a ban (exactly as listed)")
    b.add_argument("network")
    p.set_defaults(func=cmd_bans)

    p = sub.add_parser("events", parents=[common],
                       help="the live event feed: logins, denials, bans, anomalies, kills "
                            "(via the admin API)")
    p.add_argument("--follow", "-f", action="store_true",
                   help="print events as they happen until Ctrl-C")
    p.add_argument("--kind", action="append", metavar="K",
                   choices=["login", "denied", "plaintext", "ban", "anomaly", "kill"],
                   help="only this kind (repeat for several): login, denied, plaintext, ban, "
                        "anomaly, kill")
    p.add_argument("--user", metavar="U", help="only events of this user")
    p.add_argument("--address", metavar="A",
                   help="only events of this address or network, e.g. 192.0.2.0/24")
    p.set_defaults(func=cmd_events)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    flag = getattr(args, "config", None)
    positional = getattr(args, "file", None)
    if positional is not None:
        if flag is not None and flag != positional:
            parser.error(f"check-config: two config files given ({positional} and --config "
                         f"{flag}); give one")
        flag = positional
    args.config, args.config_source = resolve_config(flag, os.environ)
    args.json = getattr(args, "json", False)
    return int(args.func(args))


if __name__ == "__main__":
    sys.exit(main())

"""imaptest's stress mode directly against Dovecot and through the gateway; fail on errors
that only the gateway run shows.

    .venv/bin/python scripts/imaptest_stress.py [--clients 10] [--secs 60] [--wide] [--keep]

In stress mode imaptest runs N clients that send random IMAP commands (SELECT, FETCH with
every kind of item, STORE, EXPUNGE, APPEND from an mbox, COPY, LOGOUT/LOGIN, pipelining)
while it tracks what the mailbox must look like, and prints an ``Error:`` line for every
reply that contradicts that model: a flag that changed by itself, an EXPUNGE of a sequence
that does not exist, a FETCH that differs from an earlier one, an unexpected BYE, a tagged
reply that never comes. Against Dovecot alone some such lines are normal under concurrency
(imaptest's model is not perfect), so the verdict is a difference: the same run is done
directly against Dovecot's implicit-TLS port and through the gateway's implicit-TLS listener,
and every *kind* of error (client ids, numbers and quoted strings masked) that appears only
through the gateway is a finding. Exit status 1 then, 2 when something could not be set up,
0 otherwise.

Reuses the suite's pieces: the Dovecot rig (tests/support/dovecot.py), the test CA, the
gateway subprocess with the suite's password-only policy and limits
(tests/support/gatewayproc.py), the rig's throw-away ``imaptest`` account, and imaptest built
by scripts/imaptest.sh. The mbox it appends from is generated (unique Message-IDs: with
duplicates imaptest reports "ENVELOPE changed" even against Dovecot). The gateway is started
with PYTHONPATH set to this repo, so it runs this tree's code whatever the venv has installed.
For `make fuzz`, not `make test`: it takes 2 x --secs plus ~10 s.
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import socket
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from tests.support import imaptest  # noqa: E402
from tests.support.certs import make_certs  # noqa: E402
from tests.support.dovecot import DovecotRig, RigError, start_rig  # noqa: E402
from tests.support.gatewayproc import GatewayFactory, GatewayProcess  # noqa: E402
from tests.support.imaptest import ImaptestError, StressResult  # noqa: E402

#: ``--wide``: imaptest's states that its default profile leaves at 0% (AUTHENTICATE PLAIN,
#: UID FETCH, SEARCH, SORT, THREAD, COPY, NOOP, CHECK). IDLE is left out: in this imaptest
#: version the IDLE state panics the tester itself (client-state.c: unreached), and so does
#: ``qresync`` (array.c assertion in mailbox_state_handle_fetch), against Dovecot alone.
WIDE = ("authenticate=30", "uidfetch=30", "search=30", "sort=20", "thread=20", "noop=10",
        "check=10", "copybox=Copy", "copy=33,5")

#: Session ends that a stress run produces by design; any other reason is worth a look.
NORMAL_ENDS = {"logout", "client_closed", "backend_closed"}
_LIST = re.compile(rb'^\* LIST \([^)]*\) (?:"[^"]*"|NIL) ("(?:[^"\\]|\\.)*"|[^ \r\n]+)\r?\n?$')


def say(msg: str) -> None:
    print(f"[imaptest-stress] {msg}", flush=True)


def empty_mailboxes(rig: DovecotRig, user: str, password: str,
                    create: tuple[str, ...] = ()) -> None:
    """Start each run from an empty INBOX and no other mailboxes but ``create`` (empty), so
    the two runs compare."""
    with socket.create_connection((rig.host, rig.imap_port), timeout=30) as s:
        f = s.makefile("rb")
        f.readline()

        def command(tag: str, line: str) -> list[bytes]:
            s.sendall(f"{tag} {line}\r\n".encode())
            out = []
            while True:
                resp = f.readline()
                if not resp:
                    raise RigError(f"Dovecot closed the connection during {line!r}")
                out.append(resp)
                if resp.startswith(f"{tag} ".encode()):
                    return out

        if not command("l", f"LOGIN {user} {password}")[-1].startswith(b"l OK"):
            raise RigError(f"LOGIN {user} failed against Dovecot :{rig.imap_port}")
        names = [m.group(1).decode() for line in command("a", 'LIST "" "*"')[:-1]
                 if (m := _LIST.match(line))]
        for name in sorted(names, reverse=True):  # children before their parents
            if name.strip('"').upper() != "INBOX":
                command("d", f"DELETE {name}")
        for name in create:
            command("c", f'CREATE "{name}"')
        command("s", "SELECT INBOX")
        command("f", "STORE 1:* +FLAGS.SILENT (\\Deleted)")
        command("e", "EXPUNGE")
        command("z", "LOGOUT")


def run(binary: Path, where: str, port: int, mbox: Path, args: argparse.Namespace,
        rig: DovecotRig) -> StressResult:
    user, password = imaptest.USER
    # imaptest creates the COPY target when COPY says TRYCREATE, under the state of the
    # failed COPY (client-state.c): when two of its clients race to CREATE it, the loser's
    # NO [ALREADYEXISTS] is reported as "COPY failed", a race among imaptest's own clients
    # that showed up in one run only. So the target exists before each run.
    copybox = tuple(a.split("=", 1)[1] for a in args.imaptest_arg if a.startswith("copybox="))
    empty_mailboxes(rig, user, password, create=copybox)
    say(f"{where}: imaptest clients={args.clients} secs={args.secs} port={port} ssl=any-cert")
    r = imaptest.run_stress(binary, "127.0.0.1", port, user, password, mbox=mbox, tls=True,
                            clients=args.clients, secs=args.secs, extra=tuple(args.imaptest_arg))
    say(f"{where}: exit {r.returncode}, {len(r.error_lines)} error lines, "
        f"{len(r.error_kinds())} kinds, {r.seconds:.0f}s")
    print(r.totals or r.stdout[-2000:], flush=True)
    return r


def gateway_findings(gw: GatewayProcess) -> dict[str, list[str]]:
    """Gateway log lines a stress run should not produce (unusual session ends, warnings),
    grouped by event and reason; value: the lines of that group."""
    out: dict[str, list[str]] = {}
    for e in gw.events():
        if e.get("event") == "session.end" and e.get("reason") not in NORMAL_ENDS:
            key = f"session.end reason={e.get('reason')}"
        elif e.get("level") in ("warning", "error", "critical"):
            key = f"{e.get('level')}: {e.get('event')} {e.get('reason') or e.get('kind') or ''}"
        else:
            continue
        out.setdefault(key.strip(), []).append(
            " ".join(f"{k}={v}" for k, v in e.items() if k not in ("level", "ts")))
    return out


def print_kinds(title: str, kinds: dict[str, list[str]], limit: int = 3) -> None:
    print(f"\n{title}: {len(kinds)}")
    for kind, lines in sorted(kinds.items(), key=lambda kv: -len(kv[1])):
        print(f"  [{len(lines)}x] {kind}")
        for line in lines[:limit]:
            print(f"        {line[:400]}")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="scripts/imaptest_stress.py",
                                description=__doc__.split("\n")[0])
    p.add_argument("--clients", type=int, default=10)
    p.add_argument("--secs", type=int, default=60, help="per run (two runs)")
    p.add_argument("--mbox-messages", type=int, default=300)
    p.add_argument("--wide", action="store_true",
                   help="also AUTHENTICATE, UID FETCH, SEARCH, SORT, THREAD, COPY, NOOP, CHECK")
    p.add_argument("--imaptest-arg", action="append", default=[], metavar="KEY=VALUE",
                   help="extra imaptest argument for both runs (repeatable)")
    p.add_argument("--keep", action="store_true",
                   help="keep the work dir (rig, gateway log, imaptest output)")
    args = p.parse_args(argv)
    if args.wide:
        args.imaptest_arg[:0] = WIDE

    # The gateway subprocess must import this tree's gateway package.
    os.environ["PYTHONPATH"] = os.pathsep.join(
        [str(REPO), *filter(None, [os.environ.get("PYTHONPATH")])])

    try:
        binary = imaptest.build()
    except ImaptestError as e:
        say(f"cannot build imaptest: {e}")
        return 2
    work = Path(tempfile.mkdtemp(prefix="igw-imaptest-stress."))
    rig: DovecotRig | None = None
    factory: GatewayFactory | None = None
    t0 = time.monotonic()
    try:
        try:
            rig = start_rig()
            factory = GatewayFactory(work, make_certs(work / "certs"),
                                     f"127.0.0.1:{rig.imap_port}")
            gw = factory()
        except Exception as e:  # any setup failure: exit 2 with its text
            say(f"setup failed: {e}")
            return 2
        mbox = imaptest.write_mbox(work / "stress.mbox", args.mbox_messages)
        say(f"work dir {work}; Dovecot :{rig.imap_port}/:{rig.imaps_port}, "
            f"gateway :{gw.implicit_port}; mbox {args.mbox_messages} messages")

        direct = run(binary, "direct (Dovecot imaps)", rig.imaps_port, mbox, args, rig)
        through = run(binary, "through the gateway", gw.implicit_port, mbox, args, rig)
        for name, r in (("direct", direct), ("gateway", through)):
            (work / f"imaptest-{name}.stdout").write_text(r.stdout)
            (work / f"imaptest-{name}.stderr").write_text(r.stderr)

        if direct.crashed:
            say(f"imaptest itself failed against Dovecot alone (exit {direct.returncode}): "
                "no baseline, nothing to compare; its errors:")
            for line in direct.error_lines[:10]:
                print(f"  {line[:400]}")
            return 2
        d_kinds, g_kinds = direct.error_kinds(), through.error_kinds()
        only_gateway = {k: v for k, v in g_kinds.items() if k not in d_kinds}
        print_kinds("error kinds directly against Dovecot", d_kinds)
        print_kinds("error kinds through the gateway", g_kinds)
        print_kinds("error kinds ONLY through the gateway", only_gateway, limit=5)
        print_kinds("unusual gateway log events (informational)", gateway_findings(gw), limit=1)
        exit_differs = through.returncode != 0 and direct.returncode == 0
        if exit_differs or through.crashed:
            print(f"imaptest exited {through.returncode} through the gateway"
                  f"{' (crashed)' if through.crashed else ''}, {direct.returncode} directly")
        failed = bool(only_gateway) or exit_differs or through.crashed
        say(f"{'FAIL' if failed else 'OK'}: {len(only_gateway)} gateway-only error kinds "
            f"({time.monotonic() - t0:.0f}s)")
        if failed:
            say(f"gateway log: {gw.log_path}" if args.keep else
                "rerun with --keep to keep the rig, gateway log and imaptest output")
        return 1 if failed else 0
    except (ImaptestError, RigError) as e:
        say(f"error: {e}")
        return 2
    finally:
        if factory is not None:
            factory.stop_all()
        if rig is not None:
            rig.stop()
            if not args.keep:
                shutil.rmtree(rig.dir, ignore_errors=True)
        if args.keep:
            say(f"kept {work}" + (f" and {rig.dir}" if rig else ""))
        else:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())

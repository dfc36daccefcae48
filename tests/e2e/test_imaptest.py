"""Dovecot's own IMAP tester, imaptest, against the test Dovecot and through the gateway.

imaptest's 71 scripted compliance groups (RFC 3501 plus extensions: CONDSTORE, ESEARCH,
CONTEXT=SEARCH, SORT, THREAD, BINARY, CATENATE, NOTIFY, MOVE, ID, ...) each send commands
and check every untagged and tagged reply. Dovecot 2.3.19 passes all of them directly; a
gateway that relays the session after login must not change that. A group that fails only
through the gateway is a gateway bug: a command it does not know, a line or literal it
refuses, a reply it alters. (Four groups run no commands against this rig, and imaptest
counts them as passed, not skipped: urlauth, urlauth2 and urlauth-binary want URLAUTH,
which Dovecot offers only with imap_urlauth_host set; sort-partial wants CONTEXT=SORT,
which Dovecot 2.3 does not have.)

The direct run proves the rig and the binary; the gateway run goes over the implicit-TLS
listener (imaptest has no STARTTLS) with the suite's password-only policy. Both use the
rig's throw-away ``imaptest`` account: the groups delete and recreate its mailboxes.

imaptest is built on first use by scripts/imaptest.sh into .cache/imaptest (~15 s with the
apt-get of dovecot-dev and the autotools, as root); a failed build fails these tests, it
never skips them. Each run takes 1-3 s.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.support import imaptest
from tests.support.imaptest import ComplianceResult, ImaptestError

pytestmark = pytest.mark.e2e


@pytest.fixture(scope="module")
def imaptest_binary() -> Path:
    try:
        return imaptest.build()
    except ImaptestError as e:
        pytest.fail(str(e), pytrace=False)


def _run(binary: Path, port: int, *, tls: bool) -> ComplianceResult:
    user, password = imaptest.USER
    try:
        return imaptest.run_compliance(binary, "127.0.0.1", port, user, password, tls=tls)
    except ImaptestError as e:
        pytest.fail(str(e), pytrace=False)


def _assert_all_groups_pass(r: ComplianceResult, where: str) -> None:
    print(f"imaptest {where}: {r.summary()}")
    assert r.groups == imaptest.EXPECTED_GROUPS, f"{where}: unexpected group count\n{r.report()}"
    assert r.failed_groups == 0, (
        f"{where}: {r.failed_groups} imaptest group(s) failed: {', '.join(r.failed_names)}\n"
        f"{r.report()}")
    assert r.skipped_groups == 0, f"{where}: groups skipped for missing capabilities\n{r.report()}"
    assert (r.base_failed, r.ext_failed) == (0, 0), r.report()
    assert r.returncode == 0, r.report()


@pytest.fixture(scope="module")
def direct(dovecot, imaptest_binary) -> ComplianceResult:
    """The run against Dovecot's plain port: the baseline the gateway run is compared with."""
    return _run(imaptest_binary, dovecot.imap_port, tls=False)


def test_imaptest_compliance_directly_against_dovecot(direct, dovecot):
    _assert_all_groups_pass(direct, f"directly against Dovecot :{dovecot.imap_port}")


def test_imaptest_compliance_through_the_gateway(gateway, imaptest_binary, direct):
    gw = gateway()
    r = _run(imaptest_binary, gw.implicit_port, tls=True)
    only_here = [g for g in r.failed_names if g not in direct.failed_names]
    if only_here:
        print(f"groups that fail through the gateway but not directly: {', '.join(only_here)}")
    where = f"through the gateway (implicit TLS :{gw.implicit_port})"
    _assert_all_groups_pass(r, where)
    # imaptest's skip counter stays 0 when a group's capability is missing (it says "0
    # skipped" and runs none of its commands), so a capability the gateway hid would pass
    # unnoticed. The number of commands run shows it: it must match the direct run.
    assert (r.base_total, r.ext_total) == (direct.base_total, direct.ext_total), (
        f"{where}: ran {r.base_total} base + {r.ext_total} extension commands, directly "
        f"{direct.base_total} + {direct.ext_total}: groups were skipped (capabilities "
        f"missing?)\n{r.report()}")

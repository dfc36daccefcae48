"""A Dovecot that asks the gateway's auth-policy server, and a POP3 client bound to an address.

The rig (``start_policy_rig``) is the suite's Dovecot plus a POP3 listener on loopback and
the auth policy of ``deploy/dovecot/conf.d/97-imap-gateway-auth-policy.conf`` pointing at
``policy_address``, where the test gateways serve ``[auth_policy]``. The gateway reaches
Dovecot from 127.0.0.1 (its ``gateway_networks``); POP3 clients bind 127.0.5.x, so Dovecot
sees them as other hosts. Plaintext POP3 is allowed on this rig (loopback only), so the
tests need no STLS.
"""

from __future__ import annotations

import poplib
import secrets
import socket
from dataclasses import dataclass
from pathlib import Path

from .dovecot import DovecotRig, start_rig

#: The shipped snippet, used as is but for its placeholders: the tests prove the file.
SNIPPET = (Path(__file__).resolve().parents[2] / "deploy" / "dovecot" / "conf.d"
           / "97-imap-gateway-auth-policy.conf")
SNIPPET_URL = "http://127.0.0.1:9145/"
SNIPPET_TOKEN = "CHANGE-ME-to-the-gateway-auth-policy-token"
SNIPPET_NONCE = "CHANGE-ME-to-a-random-secret"

POP3_CONF = """\
protocols = imap pop3
disable_plaintext_auth = no
service pop3-login {
  inet_listener pop3 {
    address = 127.0.0.1
    port = @POP3_PORT@
  }
  inet_listener pop3s {
    port = 0
  }
}
"""


def policy_conf(policy_address: str, token: str) -> str:
    """The snippet pointed at ``policy_address`` with ``token``, plus a POP3 listener."""
    text = SNIPPET.read_text()
    for placeholder in (SNIPPET_URL, SNIPPET_TOKEN, SNIPPET_NONCE):
        assert text.count(placeholder) == 1, f"{SNIPPET}: {placeholder!r} not found once"
    text = (text.replace(SNIPPET_URL, f"http://{policy_address}/")
            .replace(SNIPPET_TOKEN, token).replace(SNIPPET_NONCE, secrets.token_hex(32)))
    return POP3_CONF + text


@dataclass
class PolicyRig:
    dovecot: DovecotRig
    policy_address: str
    token: str = ""

    @property
    def pop3_port(self) -> int:
        assert self.dovecot.pop3_port is not None
        return self.dovecot.pop3_port


def start_policy_rig(policy_address: str, token: str) -> PolicyRig:
    rig = start_rig(disable_plaintext_auth=False, extra_conf=policy_conf(policy_address, token))
    return PolicyRig(dovecot=rig, policy_address=policy_address, token=token)


class BoundPOP3(poplib.POP3):
    """poplib.POP3 whose socket is bound to ``source`` before it connects."""

    def __init__(self, host: str, port: int, *, source: str, timeout: float = 15.0):
        self._source = source
        super().__init__(host, port, timeout=timeout)

    def _create_socket(self, timeout):
        return socket.create_connection((self.host, self.port), timeout,
                                        source_address=(self._source, 0))


def pop3_login(rig: PolicyRig, user: str, password: str, *, source: str) -> bytes:
    """One USER/PASS from ``source``: Dovecot's answer to PASS (``+OK ...``/``-ERR ...``)."""
    client = BoundPOP3("127.0.0.1", rig.pop3_port, source=source)
    try:
        client.user(user)
        try:
            answer = client.pass_(password)
        except poplib.error_proto as exc:
            return exc.args[0] if exc.args and isinstance(exc.args[0], bytes) else str(exc).encode()
        client.quit()
        return answer
    finally:
        client.close()

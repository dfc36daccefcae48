"""``imap-gateway check-config``: everything ``serve`` would trip over, found before it starts.

``load_config`` already proves the file's keys and that the files it names exist. This
module goes further, without starting anything or creating any file:

- the TLS certificate and key of ``[tls]`` and ``[web]`` load as a server context, and no
  certificate of either chain has expired (an error) or expires within
  :data:`EXPIRY_WARNING` (a warning: renew it);
- the policy directory loads, as ``imap-gateway policy check`` says (an error), and its
  probable mistakes (unused groups or networks) are warnings;
- every secret file that exists is usable: the master password file, the TOTP key file
  and the admin token file (empty or whitespace-only files, wrong sizes and modes open
  to others are errors; a store key or admin token that does not exist yet is fine, the
  gateway creates them at its first start).

Every message names the section or key and the file. ``now`` is passed in (the caller
reads the clock).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

from cryptography import x509

from gateway.config import Config

__all__ = ["EXPIRY_WARNING", "CheckReport", "certificate_problems", "check_config"]

#: A certificate that expires sooner than this is reported (14 days).
EXPIRY_WARNING = 14 * 86400.0


@dataclass
class CheckReport:
    errors: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.errors


def _when(t: float) -> str:
    return datetime.fromtimestamp(int(t), UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def certificate_problems(section: str, path: Path, now: float) -> tuple[list[str], list[str]]:
    """``(errors, warnings)`` about the validity dates of every certificate in ``path``.

    An expired one (or one not valid yet) is an error, one that expires within
    :data:`EXPIRY_WARNING` a warning. A file that does not parse is an error too.
    """
    errors: list[str] = []
    warnings: list[str] = []
    try:
        chain = x509.load_pem_x509_certificates(path.read_bytes())
    except (OSError, ValueError) as exc:
        return [f"{section}: cannot read certificate {path}: {exc}"], []
    for position, cert in enumerate(chain):
        which = "certificate" if position == 0 else f"chain certificate #{position + 1}"
        subject = cert.subject.rfc4514_string() or "(no subject)"
        not_after = cert.not_valid_after_utc.timestamp()
        not_before = cert.not_valid_before_utc.timestamp()
        if not_after <= now:
            errors.append(f"{section}: {which} {path} ({subject}) expired at {_when(not_after)}; "
                          "clients refuse it: install a renewed one")
        elif not_before > now:
            errors.append(f"{section}: {which} {path} ({subject}) is not valid before "
                          f"{_when(not_before)}; check this host's clock or the certificate")
        elif not_after - now < EXPIRY_WARNING:
            days = (not_after - now) / 86400
            warnings.append(f"{section}: {which} {path} ({subject}) expires at {_when(not_after)}"
                            f" (in {days:.1f} days): renew it, then reload the gateway "
                            "(SIGHUP)")
    return errors, warnings


def _tls_checks(config: Config, now: float, report: CheckReport) -> None:
    from gateway.proxy.tls import TLSSetupError, server_context

    pairs = [("[tls] cert", config.tls.cert, config.tls.key)]
    if config.web.cert is not None and config.web.key is not None:
        pairs.append(("[web] cert", config.web.cert, config.web.key))
    for section, cert, key in pairs:
        try:
            server_context(cert, key, config.tls.min_version)
        except TLSSetupError as exc:
            report.errors.append(f"{section.split()[0].strip('[]')}: {exc}")
            continue
        errors, warnings = certificate_problems(section, cert, now)
        report.errors += errors
        report.warnings += warnings


def _policy_checks(config: Config, report: CheckReport) -> None:
    from gateway.policy import PolicyError, load_policy
    from gateway.policy.commands import policy_warnings

    try:
        policy = load_policy(Path(config.policy.dir))
    except PolicyError as exc:
        report.errors.append(f"policy.dir: policy INVALID (nothing loaded): {exc}")
        return
    report.warnings += [f"policy.dir: {w}" for w in policy_warnings(policy)]


def _secret_checks(config: Config, report: CheckReport) -> None:
    from gateway.startup import StartupError, read_master_password
    from gateway.store.errors import StoreKeyError
    from gateway.store.keyfile import load_key
    from gateway.web.token import AdminTokenError, admin_token_path, load_admin_token

    try:
        read_master_password(config)
    except StartupError as exc:
        report.errors.append(str(exc).removeprefix(f"{config.source_path}: "))
    try:
        load_key(config.store.key_file, create=False)  # None when it does not exist yet
    except StoreKeyError as exc:
        report.errors.append(f"store.key_file: {exc}")
    if config.admin.address and (config.admin.token_file is not None
                                 or admin_token_path(config).exists()):
        try:
            load_admin_token(config, create=False)
        except AdminTokenError as exc:
            report.errors.append(f"admin.token_file: {exc}")


def check_config(config: Config, now: float) -> CheckReport:
    """Every check of the module docstring; nothing is created or changed."""
    report = CheckReport()
    _tls_checks(config, now, report)
    _policy_checks(config, report)
    _secret_checks(config, report)
    return report

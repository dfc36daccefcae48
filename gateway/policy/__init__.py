"""Zero-trust login policy: who may log in, from where, with which factor.

Pure decisions (no trio, no clock; the only I/O is reading policy files). The shell
loads a Policy with load_policy(), asks requirement_for() when a login arrives and
decide() once the credentials are verified, and reloads through PolicyReloader.
"""

from .commands import check_command, explain_command
from .engine import Policy
from .errors import PolicyError
from .explain import Explanation, RuleTrace
from .loader import load_policy
from .model import Decision, LoginContext
from .watch import FileStamp, PolicyReloader, snapshot

__all__ = [
    "Decision",
    "Explanation",
    "FileStamp",
    "LoginContext",
    "Policy",
    "PolicyError",
    "PolicyReloader",
    "RuleTrace",
    "check_command",
    "explain_command",
    "load_policy",
    "snapshot",
]

"""The one error type the policy engine raises to its callers.

Rules of this module: a policy error must let an operator fix the file without
reading our code, so it always says *where* (file, rule, key) and *what to do*.
It never carries secrets: policy files hold user names and networks, not credentials.
"""

from __future__ import annotations


class PolicyError(Exception):
    """A policy directory could not be loaded; nothing from it was applied.

    ``str(err)`` reads like ``policies/10-office.toml: rule "office staff":
    networks: unknown network name 'ofice'``. The parts are also attributes so
    the shell can log them as fields:

    - ``file``: the file path as given (``None`` for directory-level problems
      such as "no *.toml files"),
    - ``rule``: ``'"office staff"'`` for a named rule, ``'#2'`` for the second
      ``[[rule]]`` of its file when it has no name, else ``None``,
    - ``key``: the offending key (``networks``, ``groups.staff``...) or ``None``,
    - ``message``: what is wrong and, where we can tell, how to fix it.
    """

    def __init__(
        self,
        message: str,
        *,
        file: str | None = None,
        rule: str | None = None,
        key: str | None = None,
    ) -> None:
        self.file = file
        self.rule = rule
        self.key = key
        self.message = message
        super().__init__(self._render())

    def _render(self) -> str:
        parts = []
        if self.file is not None:
            parts.append(self.file)
        if self.rule is not None:
            parts.append(f"rule {self.rule}")
        if self.key is not None:
            parts.append(self.key)
        parts.append(self.message)
        return ": ".join(parts)

"""What lacme-accountd agrees to sign: its own policy, and the scope of each connection.

Runs in lacme-accountd.  The key holder's ``Policy`` (command line or
lacme-accountd.conf: ``operations``, ``names``, ``require-scope``) limits
every connection, whatever the peer says; a master's scope (the first line
of a connection, ``lacme.protocol.scope``) narrows it further for one run,
and can never widen it, since a request must pass both.  ``Guard`` is one
connection's state: its scope, the origin it signs for, how many
signatures are left and which order each CSR finalized.  An allowed
keyChange must name accountd's new key, an allowed newAccount carry no
binding or accountd's own (lacme.protocol.scope).  Each refusal raises ``wire.Refused``; the server logs
it and closes the connection.
"""

from __future__ import annotations

from lacme.core.origin import origin_of
from lacme.core.record import Record
from lacme.protocol import scope as sc
from lacme.protocol import wire


class Policy(Record):
    """The signer's own limits.  ``operations`` None: any (as Debian's 0.8.2);
    ``names`` empty: any; otherwise exact names, or suffixes written ".example.org"."""

    operations: frozenset[str] | None = None
    names: tuple[str, ...] = ()
    require_scope: bool = False

    @property
    def restricts(self) -> bool:
        return self.operations is not None or bool(self.names)

    def refusal(self, op: sc.Operation) -> str | None:
        """Why this policy forbids ``op``, or None."""
        if self.operations is not None:
            allowed = sc.Scope(operations=self.operations).covers()
            if op.kind not in allowed:
                return f"{op.describe()} is not allowed by this accountd's operations"
        if self.names and op.kind == sc.NEW_ORDER:
            for _kind, value in sorted(op.identifiers):
                if not self.allows_name(value):
                    return f"newOrder for {sc.show_names([value])} is not allowed by this accountd's names"
        return None

    def allows_name(self, value: str) -> bool:
        value = value.lower()
        return any(value.endswith(n) if n.startswith(".") else value == n for n in self.names)


class Guard:
    """One connection: its scope (the first line, or none), origin and budget."""

    def __init__(self, policy: Policy, origin: str | None, fallback_origin: str | None) -> None:
        """``origin``: the pin of accountd's own settings, which wins; ``fallback_origin``:
        the one a spawning master put in the environment (a scope's replaces it)."""
        self.policy = policy
        self.pinned = origin
        self.origin = origin or fallback_origin
        self.scope: sc.Scope | None = None
        self.remaining = -1  # signatures left under a scope (-1: unbounded)
        self.lines = 0
        self.refused_scope = ""  # why the first line's scope was refused
        self.finalized: dict[str, str] = {}  # CSR digest -> the finalize URL it was signed for

    def take(self, line: bytes, *, alg: str, jwk: dict, kid: str | None,
             binding: tuple[str, str] | None = None,
             new_key: tuple[str, dict] | None = None) -> wire.SignRequest | None:
        """The request to sign in ``line``, None for the scope line, or Refused."""
        self.lines += 1
        if sc.is_scope_line(line):
            if self.lines > 1:
                raise wire.Refused("a scope that is not the first line (a second scope?)")
            try:
                self._set_scope(sc.parse_scope(line))
            except wire.Refused as exc:
                # Refused at the first request, which then reads the end of
                # the connection as any refused request does.
                self.refused_scope = exc.reason
            return None
        if self.refused_scope:
            raise wire.Refused(self.refused_scope)
        if self.lines == 1 and self.policy.require_scope:
            raise wire.Refused("no scope as first line, and require-scope is set")
        req = wire.parse_sign_request(line, alg=alg, jwk=jwk, kid=kid, origin=self.origin,
                                      binding=binding, new_key=new_key)
        new_jwk = new_key[1] if new_key else None
        limited = self.scope is not None or self.policy.restricts
        if not limited and new_jwk is None and binding is None:
            return req  # as Debian's 0.8.2: any well-formed request for this key
        op = sc.classify(req.header, req.body, new_jwk=new_jwk)
        reason = self.policy.refusal(op)
        if reason is None and self.scope is not None:
            reason = sc.refusal(self.scope, op)
        # A keyChange or newAccount that is allowed: to which key, bound to whom?
        # (Whenever limited, or holding the new key or the MAC key they concern.)
        if reason is None and (limited or new_jwk is not None):
            reason = sc.key_change_refusal(op, new_jwk)
        if reason is None and (limited or binding is not None):
            reason = sc.binding_refusal(op, binding)
        if reason is None and self.scope is not None:
            reason = self._count(op, req.header["url"])
        if reason is not None:
            raise wire.Refused(reason)
        self.remaining -= 1
        return req

    def _count(self, op: sc.Operation, url: str) -> str | None:
        """Under a scope: the signature budget, and one order finalized per CSR
        (its retries sign the same URL again).  Each finalize is a certificate:
        more would spend the CA's limits on duplicate certificates (Let's
        Encrypt: 5 a week for one set of names) and keep renewals out."""
        assert self.scope is not None
        if self.remaining == 0:
            return f"more signatures than the scope allows ({self.scope.signature_budget()})"
        if op.kind == sc.FINALIZE and self.finalized.setdefault(op.digest, url) != url:
            return "finalize of a second order with the same CSR (one certificate per CSR and run)"
        return None

    def _set_scope(self, scope: sc.Scope) -> None:
        if scope.origin is not None:
            try:
                origin = origin_of(scope.origin)
            except ValueError as exc:
                raise wire.Refused(f"scope: origin {scope.origin!r}: {exc}") from None
            if self.pinned is not None and origin != self.pinned:
                raise wire.Refused(f"scope: origin {origin} is not on {self.pinned}, the configured origin")
            self.origin = origin
        self.scope = scope
        self.remaining = scope.signature_budget()

    def describe_scope(self) -> str:
        s = self.scope
        if s is None:
            return f"refused ({self.refused_scope})" if self.refused_scope else "none"
        parts = [",".join(sorted(s.operations)) or "lookup only", f"origin {self.origin or 'any'}"]
        if s.identifiers:
            parts.append("names " + ",".join(sorted(v for _, v in s.identifiers)))
        if s.certificates:
            parts.append(f"{len(s.certificates)} certificate(s)")
        return "; ".join(parts)

"""The options the master appends to ``[accountd] command`` when that command
is ``ssh``.

Read by the master (root) when it spawns accountd (``lacme.master.components``).
OpenSSH reads options anywhere before the remote command, after the
destination too: ``ssh -T signer@host --stdio`` is a usage error, while
``ssh -T signer@host lacme-accountd --stdio`` runs ``lacme-accountd --stdio``
on the host.  So when the command ends at the destination (the form for a
forced command in the signer's ``authorized_keys``, which ignores the remote
words), ``--`` goes before the appended options: ssh stops reading options
there.  When a remote word is given, ssh takes every later word as the
remote command as it is, and nothing is inserted (a ``--`` would reach the
remote ``lacme-accountd``).  The option letters are OpenSSH 9's (ssh(1)).
"""

from __future__ import annotations

import os
from collections.abc import Sequence

#: ssh(1) options that take an argument (joined, ``-p22``, or the next word).
SSH_OPTIONS_WITH_ARGUMENT = frozenset("BbcDEeFIiJLlmOoPpQRSWw")


def _skip_options(words: Sequence[str], i: int) -> int:
    """Index of the first word at or after ``i`` that is not an option or an
    option's argument; a ``--`` is skipped and ends the options."""
    while i < len(words):
        word = words[i]
        if word == "--":
            return i + 1
        if not word.startswith("-") or word == "-":
            return i
        i += 1
        for at, letter in enumerate(word[1:], start=2):
            if letter in SSH_OPTIONS_WITH_ARGUMENT:
                if at == len(word):  # the argument is the next word
                    i += 1
                break
    return i


def ssh_words(command: Sequence[str]) -> Sequence[str]:
    """``command`` from its ssh word on (after a wrapper such as ``sudo -u
    USER``, ``env`` or ``ip netns exec NS``); empty when it runs no ssh."""
    for i, word in enumerate(command):
        if os.path.basename(word) == "ssh":
            return command[i:]
    return ()


def option_separator(command: Sequence[str]) -> tuple[str, ...]:
    """``("--",)`` when ``command`` runs ssh with no remote word, else ``()``."""
    command = ssh_words(command)
    if not command:
        return ()
    destination = _skip_options(command, 1)
    if destination >= len(command):
        return ()  # no destination: ssh says so itself
    after = command[destination + 1:]
    if after and after[0] == "--":
        return ()  # the remote command follows an explicit --
    rest = _skip_options(after, 0)
    return ("--",) if rest >= len(after) else ()

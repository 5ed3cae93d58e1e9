"""A compromised ACME client for the dns-01 tests: asks the master to publish what it must not.

Started by the real master as ``[client] command``; it speaks the control
protocol (``lacme.protocol.control``) over its inherited descriptor: after
hello and the orders it asks for records of a name not being ordered, a
value that is no digest, a name without the ``_acme-challenge`` label,
records that would stay after the run (a dns-persist-01 one, a dns-01 one
asked to be persistent) and (the control) a record the master must accept; it reports every answer in
its ``failed`` message, so that the test reads the master's decisions.
"""

from __future__ import annotations

import json
import socket
import sys

sys.path.insert(0, sys.argv[1])

from lacme.core import descriptors
from lacme.protocol import control

DIGEST = "A" * 42 + "E"

fds = descriptors.inherited_fds()
channel = descriptors.Channel(socket.socket(fileno=fds[0].fd))
channel.recv_line(control.MAX_LINE, want_fd=True)  # hello
line, _ = channel.recv_line(control.MAX_LINE)
orders = json.loads(line)["orders"]
ordered = orders[0]["identifiers"][0]["value"]
requests = {
    "foreign": [{"name": "_acme-challenge.h05.example.test", "value": DIGEST}],
    "value": [{"name": f"_acme-challenge.{ordered}", "value": "not a digest"}],
    "label": [{"name": ordered, "value": DIGEST}],
    # Records that would outlive the run: a dns-persist-01 authorization of
    # any account at any CA, and a challenge record asked to be kept.
    "persist": [{"name": f"_validation-persist.{ordered}",
                 "value": "evil.test; accounturi=https://evil.test/acct/1"}],
    "kept": [{"name": f"_acme-challenge.{ordered}", "value": "B" * 42 + "E"}],
    "allowed": [{"name": f"_acme-challenge.{ordered}", "value": DIGEST}],
}
answers = {}
for key, records in requests.items():
    persistent = {"persistent": True} if key in ("persist", "kept") else {}
    channel.send(control.encode_message("dns_publish", id=key, records=records, **persistent))
    line, _ = channel.recv_line(control.MAX_LINE)
    answers[key] = json.loads(line)
    if key == "allowed":
        channel.send(control.encode_message("dns_unpublish", records=records))
channel.send(control.encode_message("failed", id=orders[0]["id"], message=json.dumps(answers)))
channel.send(control.encode_message("done"))

"""journald MESSAGE_IDs of lacme's events, one per kind.

Stable across versions (``journalctl MESSAGE_ID=...`` finds an event kind
whatever the wording of its message), 128-bit hex in the style of journald's
catalog.  Constants only: the master's no-op path imports this for free.
"""

CERTIFICATE_INSTALLED = "0b1f7e4c9d2a4f60a3c5e8d1b2a7c901"
RENEWAL_SKIPPED = "5c8e2d1a7b3f4e69a0d4c7b2e1f8a302"
ORDER_FAILED = "9e4d3c2b1a0f4e5d8c7b6a5f4e3d2c03"
NOTIFY_FAILED = "d81f3b6a4c2e4b97a05e6c9d1f3a7b52"

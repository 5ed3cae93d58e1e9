"""lacme: a privilege-separated ACME (RFC 8555) client.

Four programs, each its own process and privilege level: the account key
holder (accountd), the root master, the unprivileged ACME client and the
unprivileged http-01 webserver.  Shared, pure modules hold the wire
protocol, JWS, configuration and X.509 logic.
"""

__version__ = "0.1.0"

"""A hostile ACME CA for the tests: correct RFC 8555 by default, misbehaving on command.

``server.HostileCA`` is a real HTTPS server (threads of the test process)
that issues real certificates from its own throwaway CA after validating
http-01 against the real lacme webserver; ``test_hostile.py`` runs the real
``lacme`` master against it, one misbehaviour per test.
"""

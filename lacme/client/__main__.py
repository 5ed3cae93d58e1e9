"""``python -m lacme.client``: the lacme-client program."""

from lacme.client.main import main

main()

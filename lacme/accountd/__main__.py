"""``python -m lacme.accountd``: the lacme-accountd program."""

from lacme.accountd.main import main

main()

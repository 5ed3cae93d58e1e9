"""``python -m lacme.dns``: the lacme-dns program."""

from lacme.dns.main import main

raise SystemExit(main())

"""``python -m lacme.webserver``: the lacme-webserver program."""

import sys

from lacme.webserver.main import main

sys.exit(main())

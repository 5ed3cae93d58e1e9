"""``python -m lacme.master``: the lacme program, with an ordinary exit
(``sys.exit``, so that runpy and coverage see the status)."""

import sys

from lacme.master.main import run_main

sys.exit(run_main())

"""``python -m visprog``: the same as the ``visprog`` command."""

from __future__ import annotations

import sys

from visprog.apps.cli import main

sys.exit(main())

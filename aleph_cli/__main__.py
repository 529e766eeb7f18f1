"""``python -m aleph_cli`` is the ``aleph`` command."""

import sys

from aleph_cli.main import main

sys.exit(main())

"""`python -m appliance` is the `edgebox` command (for venvs without the script)."""

import sys

from appliance.cli import main

sys.exit(main())

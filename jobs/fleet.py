"""`ray job submit` entrypoint for `raysys fleet`.

Train one detector set per asset of a fleet dataset as Ray tasks, log the fleet to MLflow and register it
(`raysys-fleet`). A thin wrapper with exactly the subcommands and flags of `raysys fleet` (see
`python jobs/fleet.py train --help`)::

    ray job submit --address http://127.0.0.1:8265 \\
        --runtime-env jobs/runtime_env.yaml --working-dir . \\
        -- python jobs/fleet.py train --data /mnt/shared/data/fleet --out /mnt/shared/fleets/fleet
"""

from __future__ import annotations

import sys

#: The `raysys` subcommand this script runs.
COMMAND = "fleet"


def main(argv: list[str] | None = None) -> int:
    """Run `raysys fleet` with ``argv`` (default: this process's arguments)."""
    from raysys.cli import main as raysys_main

    return raysys_main([COMMAND, *(sys.argv[1:] if argv is None else argv)])


if __name__ == "__main__":
    sys.exit(main())

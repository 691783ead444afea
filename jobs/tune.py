"""`ray job submit` entrypoint for `raysys tune`.

Run a Ray Tune sweep; each trial is a Ray Train run. A thin wrapper with exactly the flags
of `raysys tune` (see `python jobs/tune.py --help`)::

    ray job submit --address http://127.0.0.1:8265 \\
        --runtime-env jobs/runtime_env.yaml --working-dir . \\
        -- python jobs/tune.py --data /mnt/shared/data/water_treatment --name sweep-1 \\
           --storage-path /mnt/shared/ray_results --num-samples 8 --workers-per-trial 1
"""

from __future__ import annotations

import sys

#: The `raysys` subcommand this script runs.
COMMAND = "tune"


def main(argv: list[str] | None = None) -> int:
    """Run `raysys tune` with ``argv`` (default: this process's arguments)."""
    from raysys.cli import main as raysys_main

    return raysys_main([COMMAND, *(sys.argv[1:] if argv is None else argv)])


if __name__ == "__main__":
    sys.exit(main())

"""`ray job submit` entrypoint for `raysys generate`.

Make a synthetic industrial sensor data set. A thin wrapper with exactly the flags
of `raysys generate` (see `python jobs/generate.py --help`)::

    ray job submit --address http://127.0.0.1:8265 \\
        --runtime-env jobs/runtime_env.yaml --working-dir . \\
        -- python jobs/generate.py --profile water_treatment --rows 20000 --seed 0 \\
           --out /mnt/shared/data/water_treatment
"""

from __future__ import annotations

import sys

#: The `raysys` subcommand this script runs.
COMMAND = "generate"


def main(argv: list[str] | None = None) -> int:
    """Run `raysys generate` with ``argv`` (default: this process's arguments)."""
    from raysys.cli import main as raysys_main

    return raysys_main([COMMAND, *(sys.argv[1:] if argv is None else argv)])


if __name__ == "__main__":
    sys.exit(main())

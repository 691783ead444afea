"""`ray job submit` entrypoint for `raysys ensemble`.

Build the ONNX ensemble from a sweep and register it in MLflow. A thin wrapper with exactly the flags
of `raysys ensemble` (see `python jobs/ensemble.py --help`)::

    ray job submit --address http://127.0.0.1:8265 \\
        --runtime-env jobs/runtime_env.yaml --working-dir . \\
        -- python jobs/ensemble.py --data /mnt/shared/data/water_treatment \\
           --sweep /mnt/shared/ray_results/sweep-1 --name raysys-detector
"""

from __future__ import annotations

import sys

#: The `raysys` subcommand this script runs.
COMMAND = "ensemble"


def main(argv: list[str] | None = None) -> int:
    """Run `raysys ensemble` with ``argv`` (default: this process's arguments)."""
    from raysys.cli import main as raysys_main

    return raysys_main([COMMAND, *(sys.argv[1:] if argv is None else argv)])


if __name__ == "__main__":
    sys.exit(main())

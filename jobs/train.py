"""`ray job submit` entrypoint for `raysys train`.

Train one detector with Ray Train (TorchTrainer) and log it to MLflow. A thin wrapper with exactly the flags
of `raysys train` (see `python jobs/train.py --help`)::

    ray job submit --address http://127.0.0.1:8265 \\
        --runtime-env jobs/runtime_env.yaml --working-dir . \\
        -- python jobs/train.py --data /mnt/shared/data/water_treatment --model ae \\
           --num-workers 2 --storage-path /mnt/shared/ray_results
"""

from __future__ import annotations

import sys

#: The `raysys` subcommand this script runs.
COMMAND = "train"


def main(argv: list[str] | None = None) -> int:
    """Run `raysys train` with ``argv`` (default: this process's arguments)."""
    from raysys.cli import main as raysys_main

    return raysys_main([COMMAND, *(sys.argv[1:] if argv is None else argv)])


if __name__ == "__main__":
    sys.exit(main())

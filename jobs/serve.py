"""`ray job submit` entrypoint for `raysys serve`.

Deploy the registered detector with Ray Serve. A thin wrapper with exactly the flags
of `raysys serve` (see `python jobs/serve.py --help`)::

    ray job submit --address http://127.0.0.1:8265 \\
        --runtime-env jobs/runtime_env.yaml --working-dir . \\
        -- python jobs/serve.py --model models:/raysys-detector@champion
"""

from __future__ import annotations

import sys

#: The `raysys` subcommand this script runs.
COMMAND = "serve"


def main(argv: list[str] | None = None) -> int:
    """Run `raysys serve` with ``argv`` (default: this process's arguments)."""
    from raysys.cli import main as raysys_main

    return raysys_main([COMMAND, *(sys.argv[1:] if argv is None else argv)])


if __name__ == "__main__":
    sys.exit(main())

"""``raysys --help`` stays light: listing the commands imports no stage, so none of Ray, torch, MLflow,
onnxruntime, matplotlib or pandas; each command's summary in ``raysys.cli.COMMANDS`` is the one its stage
module gives; and a Ray cluster started by ``init_ray`` keeps Ray's own worker logs off the console."""

from __future__ import annotations

import argparse
import importlib
import subprocess
import sys
import textwrap

import pytest

from raysys.cli import COMMANDS

HEAVY = ("ray", "torch", "mlflow", "onnxruntime", "matplotlib", "pandas")


def _run_python(code: str, timeout: float = 120) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", textwrap.dedent(code)], capture_output=True, text=True,
                          timeout=timeout)


@pytest.mark.parametrize("argv", [[], ["--help"], ["--version"]], ids=["build", "help", "version"])
def test_top_level_parser_imports_no_heavy_module(argv):
    proc = _run_python(f"""
        import contextlib, io, sys
        import raysys.cli
        parser = raysys.cli.build_parser()
        with contextlib.redirect_stdout(io.StringIO()) as out:
            try:
                parser.parse_args({argv!r}) if {argv!r} else parser.print_help()
            except SystemExit:
                pass
        assert "COMMAND" in out.getvalue() or "raysys" in out.getvalue(), out.getvalue()
        print(sorted(m for m in {HEAVY!r} if m in sys.modules))
    """)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip().splitlines()[-1] == "[]"


class _Recorder:
    """Stands in for ``add_subparsers()``: records each command's summary."""

    def __init__(self) -> None:
        self.summaries: dict[str, str | None] = {}

    def add_parser(self, name: str, **kwargs) -> argparse.ArgumentParser:
        self.summaries[name] = kwargs.pop("help", None)
        return argparse.ArgumentParser(prog=f"raysys {name}", **kwargs)


@pytest.mark.parametrize("module", sorted({module for module, _ in COMMANDS.values()}))
def test_commands_lists_every_stage_command_with_its_summary(module):
    recorder = _Recorder()
    importlib.import_module(module).add_parsers(recorder)
    assert recorder.summaries == {name: summary for name, (mod, summary) in COMMANDS.items() if mod == module}


def test_command_parser_is_built_when_parsed():
    from raysys.cli import build_parser

    args = build_parser().parse_args(["submit", "--no-wait", "--", "python", "x.py"])
    assert args.command == "submit" and args.no_wait and callable(args.func)


def test_init_ray_keeps_ray_worker_logs_off_the_console(tmp_path):
    """A Ray logger's warning in a worker lands in the session's log files, not on the driver's console;
    what the worker prints, and a Ray logger's error, still reach it."""
    proc = _run_python("""
        import glob, logging, os, time
        import ray
        from raysys.cluster import init_ray

        init_ray(num_cpus=1, verbose=False)

        @ray.remote
        def work():
            logging.getLogger("ray.raysys_test").warning("RAY-WARNING-MARK")
            logging.getLogger("ray.raysys_test").error("RAY-ERROR-MARK")
            print("PRINT-MARK", flush=True)

        ray.get(work.remote())
        time.sleep(3)  # let the log monitor stream the worker's output
        session = ray._private.worker._global_node.get_session_dir_path()
        ray.shutdown()
        files = glob.glob(os.path.join(session, "logs", "raysys", "ray-*.log"))
        print("IN-FILES" if any("RAY-WARNING-MARK" in open(f).read() for f in files) else "NOT-IN-FILES")
    """, timeout=300)
    assert proc.returncode == 0, proc.stderr
    console = proc.stdout + proc.stderr
    assert "PRINT-MARK" in console
    assert "RAY-ERROR-MARK" in console
    assert "RAY-WARNING-MARK" not in console
    assert "IN-FILES" in proc.stdout

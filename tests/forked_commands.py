"""Runs many `python -m experiments.<command> ...` command lines for one test, each forked from one process that
imported the libraries once.

A fresh interpreter spends about 2 s of CPU importing jax, flax, orbax and TFDS before a command can refuse a
mistake; test_cli.py's refusals are ~30 such command lines. Here a server process (this file, run as a script)
imports those libraries, never initialises a JAX backend (forking after that would be unsafe), and forks one child
per command line: the child points its stdout and stderr at files, sets `sys.argv` and runs the command module as
`python -m` does (`runpy.run_module(..., run_name="__main__", alter_sys=True)`); its exit status is the command's.
The command's own modules (`experiments.*`) are imported in the child, so each starts from its own flags.

    results = run_commands({"name": ["-m", "experiments.voc", "--config=..."], ...}, env)
    results["name"].returncode, results["name"].stdout, results["name"].stderr
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TIMEOUT_S = 300  # a command that runs longer is killed and reported as exit -9


def run_commands(commands: dict[str, list[str]], env: dict[str, str]) -> dict[str, subprocess.CompletedProcess]:
    """Each `["-m", "experiments.X", *flags]` run in a forked child (at most one per core at a time)."""
    for name, argv in commands.items():
        if argv[:1] != ["-m"] or len(argv) < 2:
            raise ValueError(f"{name}: only `-m module ...` command lines are forked, not {argv}")
    with tempfile.TemporaryDirectory(prefix="forked_commands_") as folder:
        request = json.dumps({"folder": folder, "commands": commands})
        server = subprocess.run([sys.executable, os.path.abspath(__file__)], input=request, cwd=REPO, env=env,
                                capture_output=True, text=True, timeout=TIMEOUT_S * len(commands))
        if server.returncode != 0:
            raise RuntimeError(f"forked_commands.py failed (exit {server.returncode}):\n{server.stderr[-3000:]}")
        codes = json.loads(server.stdout.strip().splitlines()[-1])

        def read(name, stream):
            with open(os.path.join(folder, f"{name}.{stream}"), errors="replace") as f:
                return f.read()

        return {name: subprocess.CompletedProcess(["python", *argv], codes[name], read(name, "out"), read(name, "err"))
                for name, argv in commands.items()}


def _child(argv: list[str], folder: str, name: str) -> None:
    """In the forked child: the command's output into files, then `python -m` as the interpreter runs it."""
    import runpy  # noqa: PLC0415

    for fd, stream in ((1, "out"), (2, "err")):
        os.dup2(os.open(os.path.join(folder, f"{name}.{stream}"), os.O_WRONLY | os.O_CREAT | os.O_TRUNC), fd)
    sys.argv = [argv[1], *argv[2:]]  # run_module puts the module's file in argv[0], as `python -m` does
    code = 0
    try:
        runpy.run_module(argv[1], run_name="__main__", alter_sys=True)
    except SystemExit as exit_:
        code = exit_.code if isinstance(exit_.code, int) else (0 if exit_.code is None else 1)
        if not isinstance(exit_.code, int) and exit_.code is not None:
            print(exit_.code, file=sys.stderr)
    except BaseException:  # noqa: BLE001  (as the interpreter: the traceback on stderr, exit 1)
        import traceback  # noqa: PLC0415

        traceback.print_exc()
        code = 1
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


def _serve() -> None:
    request = json.loads(sys.stdin.read())
    folder, commands = request["folder"], request["commands"]
    sys.path.insert(0, REPO)
    # What every command imports first and costs most; no backend is initialised (jax.devices() is never called).
    import flax.linen  # noqa: F401, PLC0415
    import jax  # noqa: F401, PLC0415
    import ml_collections  # noqa: F401, PLC0415
    import orbax.checkpoint  # noqa: F401, PLC0415
    import tensorflow_datasets  # noqa: F401, PLC0415

    import difnet_jax.train  # noqa: F401, PLC0415

    pending, running, codes = list(commands.items()), {}, {}
    while pending or running:
        while pending and len(running) < (os.cpu_count() or 2):
            name, argv = pending.pop(0)
            pid = os.fork()
            if pid == 0:
                _child(argv, folder, name)
            running[pid] = (name, time.monotonic())
        pid, status = os.waitpid(-1, os.WNOHANG)
        if pid == 0:
            for child, (_name, started) in running.items():
                if time.monotonic() - started > TIMEOUT_S:
                    os.kill(child, 9)
            time.sleep(0.02)
            continue
        name, _ = running.pop(pid)
        codes[name] = os.waitstatus_to_exitcode(status)
    print(json.dumps(codes))


if __name__ == "__main__":
    _serve()

"""TensorBoard over the runs' event files, without its note that TensorFlow is missing.

  python -m experiments.tensorboard --logdir=runs        # then open http://localhost:6006

The `tensorboard` command with every flag of it, less the line "TensorFlow installation not found -
running with reduced feature set." that it prints at start when TensorFlow is not installed: this
project's event files need no TensorFlow (difnet_jax/run_log.py), and nothing it shows is missing.
"""

from __future__ import annotations

import contextlib
import io
import sys

NOISE = "TensorFlow installation not found"


def run() -> None:
    from tensorboard import main as board
    from tensorboard import main_lib

    init = main_lib.global_init

    def quiet_init():
        with contextlib.redirect_stderr(io.StringIO()) as printed:
            init()
        sys.stderr.write("".join(line for line in printed.getvalue().splitlines(True) if NOISE not in line))

    main_lib.global_init = quiet_init  # board.run_main calls main_lib.global_init(), then serves
    board.run_main()


if __name__ == "__main__":
    run()

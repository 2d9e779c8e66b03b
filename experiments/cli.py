"""What every command line of the project shares: flag parsing, logging set-up, one line per user error.

    def main():  # the flags are parsed, logging is set up
        ...

    if __name__ == "__main__":
        cli.run(main)

`run` rewrites old flat config keys (`config_compat.rewrite_argv`), parses the flags, refuses
positional arguments, logs WARNING and up (INFO for `difnet_jax` and the command's own logger),
calls `main()` and exits with what it returns. A user's mistake is printed as one line,
`error: MESSAGE`, on stderr, and the exit code is 2, without a traceback:
- a flag absl refuses (unknown flag, bad number, missing required flag);
- a `--config.KEY` the config lacks (ml_collections' "Did you mean" hint is kept) or a config
  file that does not exist;
- any `difnet_jax.user_errors.UserError` (a config value, a variant or modifier typo, a workdir
  without checkpoints, a missing step, data that is not prepared, an unwritable workdir);
- absl's `app.UsageError`.
`--verbose` or the environment variable DIFNET_TRACEBACK=1 also prints the traceback. Every
other exception is a program bug and keeps its traceback (exit code 1). `--help` exits 0.
Ctrl-C (KeyboardInterrupt) prints one line, `interrupted (Ctrl-C) ...`, and exits with code 130.
A flag marked with `mark_flags_as_nonempty` and given empty (`--workdir=`) is refused by name.

Nothing left behind: `run(main, outputs=...)` names the folders the command writes; one that does
not exist when `main()` starts is removed again, with what it holds (this command's unfinished
output), when the command fails or is interrupted, and when it is still empty at the end.

A relative config path that is not in the current directory is looked up in the project
(`experiments/configs/voc.py` works from anywhere once the package is installed).
"""

from __future__ import annotations

import glob
import logging
import os
import re
import shutil
import sys
import traceback
from collections.abc import Callable, Sequence

from absl import app, flags
from ml_collections.config_flags.config_flags import ConfigFileFlagParser

from difnet_jax import config_compat
from difnet_jax.user_errors import ArgumentError, ConfigError, MissingPathError, UserError

EXIT_USER_ERROR = 2
EXIT_INTERRUPTED = 130  # 128 + SIGINT, as a shell reports a command stopped by Ctrl-C
TRACEBACK_ENV = "DIFNET_TRACEBACK"
PROJECT_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
_HELP_FLAGS = ("help", "helpshort", "helpfull", "helpxml", "?")
_VERBOSE = flags.DEFINE_bool("verbose", False, f"Print a user error's traceback too (or set {TRACEBACK_ENV}=1).")
FLAGS = flags.FLAGS


def run(main: Callable[[], int | None], *, info_loggers: Sequence[str] | None = None,
        outputs: Sequence[Callable[[], str | None]] = ()) -> None:
    """Runs `main()` as the command line (see the module docstring); never returns.

    `info_loggers`: the loggers shown at INFO, by default `difnet_jax` and the command's module.
    `outputs`: callables giving, once the flags are parsed, the folders the command writes (None: none).
    """
    if info_loggers is None:
        info_loggers = ("difnet_jax", main.__module__)
    # ml_collections reads the --config.KEY overrides from sys.argv itself: rewrite it in place.
    sys.argv[:] = argv = config_compat.rewrite_argv(sys.argv)
    # --help lists the main module's key flags and prints its docstring. Under a console script
    # (pyproject's [project.scripts]) the main module is the generated wrapper: lend it the command's.
    command = sys.modules[main.__module__]
    for flag in [*FLAGS.flags_by_module_dict().get(main.__module__, []), FLAGS["verbose"]]:
        FLAGS.register_key_flag_for_module(sys.argv[0], flag)
    if not getattr(sys.modules["__main__"], "__doc__", None):
        sys.modules["__main__"].__doc__ = command.__doc__

    new_folders: list[str] = []
    removed: list[str] = []  # those of them a failure removed

    def absl_main(_):
        setup_logging(*info_loggers)
        new_folders.extend(path for path in (output() for output in outputs) if path and not os.path.exists(path))
        try:
            try:
                result = main()
            except app.UsageError as error:  # absl would print the whole --help
                raise ArgumentError(str(error)) from error
        except BaseException:
            removed.extend(_remove(new_folders, only_empty=False))
            raise
        _remove(new_folders, only_empty=True)
        return result

    try:
        app.run(absl_main, argv=argv, flags_parser=_parse_flags)
    except UserError as error:
        if _show_traceback(argv):
            traceback.print_exc()
        print(f"error: {error}", file=sys.stderr)
        sys.exit(EXIT_USER_ERROR)
    except KeyboardInterrupt as interrupt:  # the first Ctrl-C, or a training's second signal ("second SIGINT")
        unfinished = f": removed the unfinished {', '.join(removed)}" if removed else ""
        print(f"interrupted ({str(interrupt) or 'Ctrl-C'}){unfinished}", file=sys.stderr)
        sys.stdout.flush()
        sys.stderr.flush()
        # At once, without the interpreter's teardown: an interrupt can abandon an XLA compilation in its thread,
        # and the teardown then crashes (see difnet_jax/preemption.py).
        os._exit(EXIT_INTERRUPTED)


def _remove(folders: Sequence[str], only_empty: bool) -> list[str]:
    """Removes each of `folders` that exists (only if empty, with `only_empty`); returns those removed."""
    removed = []
    for folder in folders:
        if os.path.isdir(folder) and not (only_empty and os.listdir(folder)):
            shutil.rmtree(folder, ignore_errors=True)
            removed.append(folder)
    return removed


def mark_flags_as_nonempty(names: Sequence[str]) -> None:
    """Refuses each flag of `names` given as an empty string (`--workdir=`) at parsing, naming it."""
    for name in names:
        flags.register_validator(name, lambda value: value is None or len(value) > 0,
                                 message="the value is empty: give a path")


def setup_logging(*info_loggers: str) -> None:
    """WARNING and up from every logger, timestamped; INFO too from `info_loggers`; `NOISE` left out."""
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(message)s", datefmt="%H:%M:%S", force=True)
    for handler in logging.getLogger().handlers:
        handler.addFilter(_drop_noise)
    for name in info_loggers:
        logging.getLogger(name).setLevel(logging.INFO)


# Library warnings that tell this project's user nothing: TFDS looking for a dataset that is not
# prepared yet (the project then prepares it or says what to do).
NOISE = (re.compile(r"Variant folder .* has no dataset_info\.json"),)


def _drop_noise(record: logging.LogRecord) -> bool:
    message = record.getMessage()
    return not any(pattern.search(message) for pattern in NOISE)


class _NumberListParser(flags.ListParser):
    """Comma-separated numbers of one type, each > 0 when `positive`."""

    def __init__(self, kind: type, positive: bool):
        super().__init__()
        self.kind, self.positive = kind, positive

    def parse(self, argument):
        items = super().parse(argument)
        expected = f"{'positive ' if self.positive else ''}{'integers' if self.kind is int else 'numbers'}"
        for item in items:
            try:
                value = self.kind(item)
            except (TypeError, ValueError):
                raise ValueError(f"{item!r} is not a number: expected {expected} separated by commas") from None
            if self.positive and not value > 0:
                raise ValueError(f"{item!r}: expected {expected} separated by commas")
        return [self.kind(item) for item in items]

    def flag_type(self) -> str:
        return f"comma-separated list of {self.kind.__name__}"


def define_number_list(name: str, default: str | None, help_text: str, kind: type = float, *,
                       positive: bool = True) -> flags.FlagHolder:
    """An absl flag holding a list of `kind` ("0.5,1.0"), refused at parsing when an item is not one.

    The flag belongs to the calling module, as if defined there (its --help lists it).
    """
    module = sys._getframe(1).f_globals["__name__"]
    return flags.DEFINE(_NumberListParser(kind, positive), name, default, help_text,
                        serializer=flags.CsvListSerializer(","),
                        module_name=sys.argv[0] if module == "__main__" else module)


def _parse_flags(argv: list[str]) -> list[str]:
    sys.argv[:] = argv = _resolve_config_files(argv)
    try:
        remaining = FLAGS(argv)
    except SystemExit as exit_:  # absl's --help and its kin print the help, then exit with code 1
        if exit_.code == 1 and any(_flag_name(a) in _HELP_FLAGS for a in argv[1:]):
            raise SystemExit(0) from None
        raise
    except flags.Error as error:
        cause = _root_cause(error)
        if isinstance(cause, UserError):  # raised by a config file's get_config; config_flags wraps it twice
            raise cause from None
        if "Error whilst parsing config file" in str(error):  # a bug in a config file: its traceback stays
            raise
        message = " ".join(line.strip() for line in str(error).splitlines() if line.strip())
        raise ArgumentError(f"{message} (see --help)") from error
    except (AttributeError, KeyError) as error:
        if not _raised_resolving_override(error):
            raise
        raise ConfigError(_unknown_key_message(error, argv)) from error
    if len(remaining) > 1:
        raise ArgumentError(f"unexpected arguments {remaining[1:]}: every option is a --flag=value (see --help)")
    return remaining


def _flag_name(argument: str) -> str:
    return argument.lstrip("-").partition("=")[0] if argument.startswith("-") else ""


def _config_file_flags() -> list[str]:
    return [name for name in FLAGS if isinstance(FLAGS[name].parser, ConfigFileFlagParser)]


def _resolve_config_files(argv: list[str]) -> list[str]:
    """argv with each --config=PATH[:ARG] checked: a missing file is a MissingPathError naming it."""
    names = _config_file_flags()
    resolved = list(argv)
    for index, argument in enumerate(argv[1:], 1):
        name = _flag_name(argument)
        if name not in names:
            continue
        if "=" in argument:
            prefix, value = argument.split("=", 1)
        elif index + 1 < len(argv):
            prefix, value, index = None, argv[index + 1], index + 1
        else:
            continue
        path, colon, arg = value.partition(":")
        if os.path.isfile(path):
            continue
        in_project = os.path.join(PROJECT_ROOT, path)
        if not os.path.isabs(path) and os.path.isfile(in_project):
            resolved[index] = (f"{prefix}=" if prefix else "") + in_project + colon + arg
            continue
        known = sorted(os.path.relpath(p, PROJECT_ROOT) for p in glob.glob(f"{PROJECT_ROOT}/experiments/configs/*.py")
                       if os.path.basename(p) not in ("common.py", "variants.py"))
        raise MissingPathError(f"--{name}: config file {path!r} does not exist; the dataset configs are "
                               f"{', '.join(known)} (e.g. --{name}=experiments/configs/voc.py:difnet18,synthetic)")
    return resolved


def _root_cause(error: BaseException) -> BaseException:
    while (error.__cause__ or error.__context__) is not None:
        error = error.__cause__ or error.__context__
    return error


def _raised_resolving_override(error: BaseException) -> bool:
    """Whether ml_collections raised `error` looking up the path of a --config.KEY override."""
    frames = traceback.extract_tb(error.__traceback__)
    return any(frame.filename.endswith(os.path.join("config_flags", "config_path.py")) for frame in frames)


def _unknown_key_message(error: BaseException, argv: Sequence[str]) -> str:
    """'--config.model.depthh=18: config.model has no key 'depthh'; did you mean 'depth'?'"""
    text = str(error).replace("\\'", "'").replace("\\n", "\n")
    key = re.search(r"'([^'\s]+)'", text)
    hint = re.search(r'Did you mean "([^"]+)"', text)
    key = key.group(1) if key else "?"
    for argument in argv[1:]:
        name = _flag_name(argument)
        root, _, path = name.partition(".")
        parts = path.split(".")
        if path and root in _config_file_flags() and key in parts:
            parent = ".".join([root, *parts[: parts.index(key)]])
            suggestion = f"; did you mean {hint.group(1)!r}?" if hint else ""
            return f"{argument}: {parent} has no key {key!r}{suggestion}"
    return f"no config key {key!r}" + (f"; did you mean {hint.group(1)!r}?" if hint else "")


def _show_traceback(argv: Sequence[str]) -> bool:
    if os.environ.get(TRACEBACK_ENV, "") not in ("", "0"):
        return True
    if FLAGS.is_parsed():
        return _VERBOSE.value
    return any(a in ("--verbose", "--verbose=true", "--verbose=1") for a in argv)

"""Run configurations as files: ``mmnet bench --config FILE``.

A config file is a mapping from the harness's long option names (``budget-seconds`` or
``budget_seconds``) to values, in YAML (``.yaml``/``.yml``, needs PyYAML: the ``bench``
extra), JSON (``.json``) or TOML (``.toml``; ``tomllib`` on Python 3.11+, else ``tomli``)::

    dataset: omniglot
    settings: [5w1s, 20w1s]          # a list, or the command line's "5w1s,20w1s"
    methods: mmnet,maml,protonet,matchingnet
    budget_seconds: 120
    threads: 1
    no_progress: true                # flags: true or false

The values become command-line tokens placed *before* the ones given, so an option on the
command line overrides the file's. Every value is checked by the option's own parser when
the file is read: an unknown key, or a value of the wrong type, is a one-line error naming
the key and the file. ``FILE`` may also be the name of a config shipped with the package
(:func:`packaged_config_names`: ``omniglot``, ``cpu-leaderboard``, ``glyphs-smoke``).
"""

from __future__ import annotations

import argparse
import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, List, Mapping, Optional, Sequence, Tuple

__all__ = [
    "ConfigError",
    "ConfigFile",
    "PACKAGED_DIR",
    "packaged_config_names",
    "resolve_config_path",
    "read_config",
    "config_tokens",
    "split_config_option",
]

#: the configs shipped inside the package (``mmnet_plugin/bench/configs``)
PACKAGED_DIR = Path(__file__).resolve().parent / "configs"
_SUFFIXES = (".yaml", ".yml", ".json", ".toml")

#: a config file is a few dozen options: larger files, or values that expand (YAML aliases
#: nested in aliases) to more than this many items, are refused before anything else
MAX_CONFIG_BYTES = 1 << 20
MAX_CONFIG_ITEMS = 10_000
#: the options whose value is a comma-separated list (a list in a file is joined with commas)
LIST_OPTIONS = frozenset({"settings", "methods", "recipe"})


def _cut(value: Any, limit: int = 80) -> str:
    """``repr(value)`` cut to ``limit`` characters (bounded however large the value)."""
    import reprlib

    short = reprlib.Repr()
    short.maxstring, short.maxother, short.maxlist, short.maxdict, short.maxlevel = limit, limit, 8, 8, 3
    text = short.repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _too_many_items(value: Any, limit: int) -> bool:
    """Whether ``value`` expands to more than ``limit`` items (shared sub-objects counted at
    every use, as printing or joining them would); stops counting at the limit."""
    count = 0
    stack = [value]
    while stack:
        v = stack.pop()
        count += 1
        if count > limit:
            return True
        if isinstance(v, dict):
            stack.extend(v.keys())
            stack.extend(v.values())
        elif isinstance(v, (list, tuple)):
            stack.extend(v)
    return False


class ConfigError(ValueError):
    """A config file is missing, unreadable, or names an unknown option or a wrong value."""


@dataclass(frozen=True)
class ConfigFile:
    """A config file as read.

    Attributes:
        path: the file's absolute path.
        sha256: SHA-256 of its bytes.
        values: its top-level mapping, keys as in the file.
    """

    path: Path
    sha256: str
    values: Dict[str, Any]

    def record(self) -> Dict[str, str]:
        """``{"path", "sha256"}`` for the run record."""
        return {"path": str(self.path), "sha256": self.sha256}


def packaged_config_names() -> List[str]:
    """Names of the configs shipped with the package (file names without suffix)."""
    if not PACKAGED_DIR.is_dir():
        return []
    return sorted(f.stem for f in PACKAGED_DIR.iterdir() if f.suffix in _SUFFIXES)


def resolve_config_path(spec: str) -> Path:
    """The file a ``--config`` value names: an existing file, else a packaged config's name.

    Args:
        spec: a path, or a packaged config's name (``omniglot``).

    Returns:
        The absolute path.

    Raises:
        ConfigError: neither a file nor a packaged name.
    """
    path = Path(spec).expanduser()
    if path.is_file():
        return path.resolve()
    if path.suffix in ("",) + _SUFFIXES and len(path.parts) == 1:
        for suffix in _SUFFIXES:
            candidate = PACKAGED_DIR / f"{path.stem}{suffix}"
            if candidate.is_file():
                return candidate
    names = ", ".join(packaged_config_names()) or "none"
    raise ConfigError(f"--config {spec}: no such file, nor a packaged config (packaged: {names})")


def _parse_text(path: Path, data: bytes) -> Any:
    suffix = path.suffix.lower()
    if suffix in (".yaml", ".yml"):
        try:
            import yaml
        except ImportError:
            raise ConfigError(
                f'config {path}: reading YAML needs PyYAML: pip install "mmnet-plugin[bench]" '
                "(or pip install pyyaml), or write the config as .json or .toml"
            ) from None
        try:
            return yaml.safe_load(data.decode("utf-8"))
        except (yaml.YAMLError, UnicodeDecodeError) as exc:
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise ConfigError(f"config {path}: not valid YAML ({first})") from None
    if suffix == ".json":
        try:
            return json.loads(data.decode("utf-8"))
        except (ValueError, UnicodeDecodeError) as exc:
            raise ConfigError(f"config {path}: not valid JSON ({exc})") from None
    if suffix == ".toml":
        try:
            import tomllib  # Python >= 3.11
        except ImportError:  # pragma: no cover - Python < 3.11
            try:
                import tomli as tomllib  # type: ignore[no-redef]
            except ImportError:
                raise ConfigError(
                    f"config {path}: reading TOML needs Python 3.11+ or tomli (pip install tomli); "
                    "or write the config as .json"
                ) from None
        try:
            return tomllib.loads(data.decode("utf-8"))
        except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
            raise ConfigError(f"config {path}: not valid TOML ({exc})") from None
    raise ConfigError(f"config {path}: unknown format {path.suffix or '(no suffix)'}; use .yaml, .yml, .json or .toml")


def read_config(spec: str) -> ConfigFile:
    """Read the config file ``spec`` names (see :func:`resolve_config_path`).

    Args:
        spec: the ``--config`` value.

    Returns:
        The file's path, digest and top-level mapping.

    Raises:
        ConfigError: missing, unreadable, not parseable, or not a mapping.
    """
    path = resolve_config_path(spec)
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise ConfigError(f"config {path}: cannot read it ({exc.strerror or type(exc).__name__})") from None
    if len(data) > MAX_CONFIG_BYTES:
        raise ConfigError(f"config {path}: {len(data):,} bytes; a config file is at most {MAX_CONFIG_BYTES:,}")
    values = _parse_text(path, data)
    if _too_many_items(values, MAX_CONFIG_ITEMS):
        raise ConfigError(
            f"config {path}: its values expand to more than {MAX_CONFIG_ITEMS:,} items "
            "(nested YAML aliases?); a config is a flat mapping of options"
        )
    if values is None:
        values = {}
    if not isinstance(values, dict):
        raise ConfigError(
            f"config {path}: expected a mapping of option names to values at the top, got {type(values).__name__}"
        )
    return ConfigFile(path, hashlib.sha256(data).hexdigest(), dict(values))


def _options(parser: argparse.ArgumentParser) -> Dict[str, argparse.Action]:
    """Long option name (without dashes, ``-`` as ``_``) -> its action."""
    out: Dict[str, argparse.Action] = {}
    for action in parser._actions:  # argparse has no public list of its actions
        for opt in action.option_strings:
            if opt.startswith("--"):
                out[opt[2:].replace("-", "_")] = action
    return out


def _text(value: Any, list_ok: bool = True) -> Optional[str]:
    """A scalar or a flat list as the command line would give it; ``None``: not expressible
    (a list, too, unless ``list_ok``)."""
    if isinstance(value, bool) or value is None:
        return None
    if isinstance(value, (int, float, str)):
        return str(value)
    if (
        list_ok
        and isinstance(value, (list, tuple))
        and value
        and all(isinstance(v, (int, float, str)) and not isinstance(v, bool) for v in value)
    ):
        return ",".join(str(v) for v in value)
    return None


def config_tokens(
    config: ConfigFile, parser: argparse.ArgumentParser, refused: Sequence[str] = ("config", "help")
) -> List[str]:
    """The command-line tokens a config file stands for, every value checked first.

    Args:
        config: the file as read.
        parser: the command's parser (its long options are the valid keys).
        refused: keys a file may not set.

    Returns:
        Tokens such as ``["--budget-seconds", "120", "--no-progress"]``.

    Raises:
        ConfigError: one line naming the file and the key: an unknown key, a flag whose value
            is not true/false, a value of the wrong type, or one the option's parser refuses.
    """
    actions = _options(parser)
    tokens: List[str] = []
    where = f"config {config.path}"
    for key, value in config.values.items():
        name = str(key).strip().replace("-", "_")
        action = actions.get(name)
        if action is None or name in refused:
            known = ", ".join(sorted(k for k in actions if k not in refused))
            raise ConfigError(
                f"{where}: unknown key {_cut(key, 60)} (not an option of the harness; keys are the long option "
                f"names: {known})"
            )
        flag = "--" + name.replace("_", "-")
        if action.nargs == 0:  # store_true / store_false
            if not isinstance(value, bool):
                raise ConfigError(f"{where}: key {key!r} is a flag: give true or false, not {_cut(value)}")
            if value != action.default:
                tokens.append(flag)
            continue
        list_ok = name in LIST_OPTIONS
        text = _text(value, list_ok)
        if text is None:
            wanted = "a number, a string or a list of them" if list_ok else "one number or string"
            raise ConfigError(f"{where}: key {key!r}: expected {wanted}, got {type(value).__name__} {_cut(value)}")
        if text.startswith("-") and not _is_number(text):
            raise ConfigError(
                f"{where}: key {key!r}: the value {_cut(text)} looks like an option, not a value; "
                "give options as keys of their own"
            )
        if action.type is not None:
            try:
                converted = action.type(text)
            except (argparse.ArgumentTypeError, ValueError, TypeError) as exc:
                raise ConfigError(f"{where}: key {key!r}: {' '.join(str(exc).split())[:200]}") from None
        else:
            converted = text
        if action.choices is not None and converted not in action.choices:
            raise ConfigError(
                f"{where}: key {key!r}: {_cut(converted)} is not one of {', '.join(map(str, action.choices))}"
            )
        tokens += [flag, text]
    return tokens


def _is_number(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


def split_config_option(argv: Sequence[str]) -> Tuple[Optional[str], List[str]]:
    """``(the --config value or None, argv)``; argv is returned whole (the parser accepts
    ``--config`` too, for ``--help``). The last ``--config`` wins, as argparse would take it.

    Raises:
        ConfigError: ``--config`` without a value.
    """
    spec: Optional[str] = None
    args = list(argv)
    for i, tok in enumerate(args):
        if tok == "--":
            break
        if tok == "--config":
            if i + 1 >= len(args) or args[i + 1].startswith("--"):
                raise ConfigError("--config needs a file (or a packaged config's name)")
            spec = args[i + 1]
        elif tok.startswith("--config="):
            spec = tok.split("=", 1)[1]
    return spec, args


def jsonable_options(args: argparse.Namespace) -> Mapping[str, Any]:
    """The resolved options, as plain JSON values (tuples as lists), for the run record."""

    def plain(v: Any) -> Any:
        if isinstance(v, (list, tuple)):
            return [plain(x) for x in v]
        if isinstance(v, Path):
            return str(v)
        return v

    return {k: plain(v) for k, v in sorted(vars(args).items())}

"""Read-modify-write of the YAML config file, for the admin API (``/api/channels|rules|keys``).

How an admin change reaches the file
  The caller holds ``Gateway.write_lock``, reads the file *now* (so a hand edit made since the
  last reload is kept, not overwritten), and ``upsert``/``remove`` apply the one change. The whole
  resulting document is validated by the loader (``parse_config``, after ``${VAR}`` expansion), so
  a POST gets the same messages as ``check-config`` (``channels[3].endpoint: not a URL``). The text
  is then written atomically by ``ConfigFile.write``: a temp file in the same folder, fsync,
  ``os.replace``, fsync of the folder. If the file changed on disk after it was read, nothing is
  written (``FileChanged``) and the caller redoes the edit on the new content. A symlinked config
  is written through to its target; the file's mode (and, where allowed, owner) is kept.

What is kept
  The file is edited in ruamel.yaml's round-trip mode: comments, key order, quoting, flow/block
  style and indentation of everything the change does not touch stay as they were. Inside the
  changed entry, a field whose value did not change keeps its text — in particular a
  ``${VAR}`` reference is never replaced by the secret it expands to. Secrets shown masked by
  ``GET`` (``api_key``, ``key``, ``headers`` values) that come back masked, or not at all, keep the
  stored value. New strings are written double-quoted, numbers in plain decimal (``0.0000006``),
  lists and maps of scalars in flow style. Values posted by an admin may not contain ``${``: the
  admin API works on expanded values, only the file may refer to the environment.

What is not kept
  - comments on the lines of fields that are removed or whose value changes, and of a deleted
    entry; a comment after the last entry of a list may end up above an appended entry;
  - anchors/aliases inside a changed field; a file holding only comments is written anew;
  - CRLF line ends (written as LF).
  After the edit the new text is read back with the loader's own YAML reader (PyYAML, YAML 1.1)
  and compared with the intended document; if anything but the one change differs, nothing is
  written (``EditError``). Without a config file (the built-in default) the edited text is kept in
  memory only: changes are live until the next restart or reload.
"""

from __future__ import annotations

import functools
import io
import os
import re
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from decimal import Decimal
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

import yaml

from ..errors import ConfigError, SmartProxyError
from . import Config, config_from_text, default_config_text, expand_env, parse_config, read_yaml

if TYPE_CHECKING:
    from ruamel.yaml import YAML
    from ruamel.yaml.representer import RoundTripRepresenter

# ruamel.yaml (~2 MB per process) is imported by the first edit of the file, not with the config:
# a worker that never serves an admin write does not hold it.


class Kind(Protocol):
    """What an edit needs of an entry kind (``config.kinds`` has the channel, rule and key kinds)."""

    name: str

    def find(self, doc: Any, name: str) -> dict[str, Any] | None: ...

    def merge(
        self, old: dict[str, Any] | None, posted: dict[str, Any]
    ) -> tuple[dict[str, Any], frozenset[str]]: ...

    def put(
        self,
        doc: Any,
        name: str,
        merged: dict[str, Any],
        changed: frozenset[str],
        created: bool,
        *,
        node: Callable[[Any], Any],
    ) -> None: ...

    def users(self, config: Config, name: str) -> list[str]: ...

    def drop(self, doc: Any, name: str) -> None: ...


_PLAIN_KEY = re.compile(r"[A-Za-z_][A-Za-z0-9_.-]*\Z")
_STR_TAG = "tag:yaml.org,2002:str"


class EditError(SmartProxyError):
    """The change cannot be made (not found, in use, unreadable file); ``status`` for HTTP."""

    status = 409
    code = "conflict"


class EntryNotFound(EditError):
    status, code = 404, "not_found"


class EntryInUse(EditError):
    """A channel that rules name cannot be deleted."""


class FileInvalid(EditError):
    """The file on disk does not load; an admin change is refused until it is fixed."""

    code = "config_file_invalid"


class FileChanged(EditError):
    """The file changed on disk between read and write."""

    code = "config_file_changed"


class CannotWrite(EditError):
    status, code = 500, "config_file_error"


# ----------------------------------------------------------------------------- the file
class ConfigFile:
    """The config text: the file at ``path``, or (no file) the built-in default kept in memory."""

    def __init__(self, path: str | None) -> None:
        self.path = path
        self._memory: str | None = None

    @property
    def saved(self) -> bool:
        """Do writes reach a file (False: the built-in default, changes live in memory only)."""
        return self.path is not None

    def read(self) -> str:
        if self.path is None:
            return self._memory if self._memory is not None else default_config_text()
        try:
            return Path(self.path).read_text(encoding="utf-8")
        except OSError as exc:
            raise CannotWrite(f"cannot read the config file {self.path}: {_why(exc)}") from exc

    def reset(self) -> None:
        """Back to the built-in default (a reload without a file)."""
        self._memory = None

    def write(self, text: str, *, expected: str) -> None:
        """Replace the file atomically with ``text`` if it still holds ``expected``."""
        if self.path is None:
            self._memory = text
            return
        target = Path(os.path.realpath(self.path))  # write through a symlink, not over it
        try:
            if target.read_text(encoding="utf-8") != expected:
                raise FileChanged(f"the config file {self.path} changed while it was being edited")
            st = target.stat()
            fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
        except OSError as exc:
            raise CannotWrite(f"cannot write the config file {self.path}: {_why(exc)}") from exc
        try:
            with os.fdopen(fd, "w", encoding="utf-8") as f:
                f.write(text)
                f.flush()
                os.fsync(f.fileno())
            os.chmod(tmp, st.st_mode & 0o7777)  # it may hold secrets: keep its permissions
            made = os.stat(tmp)
            if (made.st_uid, made.st_gid) != (st.st_uid, st.st_gid):
                # Only when the owner differs: the shipped systemd unit filters the chown
                # calls out (@privileged), and a gateway writing its own file needs none.
                try:
                    os.chown(tmp, st.st_uid, st.st_gid)
                except OSError:
                    pass  # not ours to give away; the new file stays ours
            os.replace(tmp, target)
        except OSError as exc:
            try:
                os.unlink(tmp)
            except OSError:
                pass
            raise CannotWrite(f"cannot write the config file {self.path}: {_why(exc)}") from exc
        dir_fd = os.open(target.parent, os.O_RDONLY)
        try:
            os.fsync(dir_fd)  # the rename itself must survive a crash
        finally:
            os.close(dir_fd)


def _why(exc: OSError) -> str:
    return str(exc.strerror or exc)


# ----------------------------------------------------------------------------- round-trip YAML
@functools.cache
def _representer() -> type[RoundTripRepresenter]:
    """ruamel's round-trip representer, but floats in plain decimal with a dot: PyYAML (YAML
    1.1) reads ``6e-07`` as a string."""
    from ruamel.yaml.representer import RoundTripRepresenter

    class Representer(RoundTripRepresenter):
        pass

    Representer.add_representer(float, _represent_float)
    return Representer


def _represent_float(rep: RoundTripRepresenter, value: float) -> Any:
    text = format(Decimal(repr(value)), "f")
    if "." not in text:
        text += ".0"
    return rep.represent_scalar("tag:yaml.org,2002:float", text)


def _guess_indent(text: str) -> tuple[int, int, int]:
    """(mapping indent, sequence indent, dash offset) as the file's top-level blocks use them."""
    mapping = offset = sequence = None
    lines = [ln for ln in text.splitlines() if ln.strip() and not ln.lstrip().startswith("#")]
    for line, nxt in zip(lines, lines[1:], strict=False):
        if line[0] in " -" or not line.rstrip().endswith(":"):
            continue
        item = nxt.lstrip(" ")
        indent = len(nxt) - len(item)
        if indent == 0:
            continue
        if item.startswith("- ") and offset is None:  # "  -   name: x": offset 2, content at 6
            offset, sequence = indent, indent + 1 + len(item[1:]) - len(item[1:].lstrip(" "))
        elif not item.startswith("-") and mapping is None:
            mapping = indent
    mapping = mapping or 2
    if offset is None or sequence is None:
        offset, sequence = mapping, mapping + 2
    return mapping, sequence, offset


def _round_trip(text: str) -> YAML:
    from ruamel.yaml import YAML

    y = YAML()  # round-trip mode
    y.Representer = _representer()
    y.preserve_quotes = True
    y.allow_duplicate_keys = True  # PyYAML takes the last one; the read-back check compares
    y.width = 4096  # never fold a long expression or URL
    mapping, sequence, offset = _guess_indent(text)
    y.indent(mapping=mapping, sequence=sequence, offset=offset)
    return y


def _pyyaml_reads_as_str(text: str) -> bool:
    resolver: Any = yaml.resolver.Resolver()  # untyped in types-PyYAML
    return bool(resolver.resolve(yaml.ScalarNode, text, (True, False)) == _STR_TAG)


def key_node(key: Any) -> Any:
    if isinstance(key, str) and not (_PLAIN_KEY.match(key) and _pyyaml_reads_as_str(key)):
        from ruamel.yaml.scalarstring import DoubleQuotedScalarString

        return DoubleQuotedScalarString(key)
    return key


def to_node(value: Any) -> Any:
    """A new value for the round-trip document: strings quoted, scalar collections in flow style."""
    from ruamel.yaml.comments import CommentedMap, CommentedSeq
    from ruamel.yaml.scalarstring import DoubleQuotedScalarString

    if isinstance(value, str):
        return DoubleQuotedScalarString(value)
    if isinstance(value, list):
        seq = CommentedSeq([to_node(v) for v in value])
        if not any(isinstance(v, (list, dict)) for v in value):
            seq.fa.set_flow_style()
        return seq
    if isinstance(value, dict):
        node = CommentedMap((key_node(k), to_node(v)) for k, v in value.items())
        if value and not any(isinstance(v, (list, dict)) for v in value.values()):
            node.fa.set_flow_style()
        return node
    return value


# ----------------------------------------------------------------------------- edits
@dataclass(frozen=True, slots=True)
class Edit:
    """A validated change: the new text, the config it loads as, and the entry before/after."""

    text: str
    config: Config
    old_config: Config
    created: bool
    changed: frozenset[str]  # top-level fields of the entry written anew (or removed)


def current_config(text: str, source: str | None) -> tuple[Any, Config]:
    """The file's document (PyYAML, unexpanded) and its config; ``FileInvalid`` if it won't load."""
    try:
        plain, config = config_from_text(text, source)
        return (plain if plain is not None else {}), config
    except ConfigError as exc:
        raise FileInvalid(
            "the config file does not load as it is (fix it, then POST /api/reload): "
            + "; ".join(exc.problems)
        ) from None


def upsert(text: str, kind: Kind, posted: dict[str, Any], *, source: str | None = None) -> Edit:
    """Add or replace the entry named ``posted["name"]``; ``ConfigError`` lists every problem."""
    name = posted["name"]
    plain, old_config = current_config(text, source)
    old = kind.find(plain, name)
    merged, changed = kind.merge(old, posted)
    kind.put(plain, name, merged, changed, old is None, node=lambda v: v)
    return _finish(
        text,
        plain,
        old_config,
        source,
        old is None,
        changed,
        lambda doc: kind.put(doc, name, merged, changed, old is None, node=to_node),
    )


def remove(text: str, kind: Kind, name: str, *, source: str | None = None) -> Edit:
    """Delete the entry ``name``; a channel that rules name is ``EntryInUse``."""
    plain, old_config = current_config(text, source)
    if kind.find(plain, name) is None:
        raise EntryNotFound(f"no {kind.name} named {name!r}")
    users = kind.users(old_config, name)
    if users:
        raise EntryInUse(
            f"{kind.name} {name!r} is named by rule(s) {', '.join(repr(u) for u in users)}: "
            "delete or change them first"
        )
    kind.drop(plain, name)
    return _finish(
        text, plain, old_config, source, False, frozenset(), lambda doc: kind.drop(doc, name)
    )


def _finish(
    text: str,
    plain: Any,
    old_config: Config,
    source: str | None,
    created: bool,
    changed: frozenset[str],
    edit_rt: Callable[[Any], None],
) -> Edit:
    from ruamel.yaml.comments import CommentedMap
    from ruamel.yaml.error import YAMLError as RuamelError

    config = parse_config(expand_env(plain), source=source)  # ConfigError: refused, nothing written
    y = _round_trip(text)
    try:
        doc = y.load(text)
    except RuamelError as exc:
        raise FileInvalid(f"the config file cannot be edited: {exc}") from None
    if not isinstance(doc, dict):
        doc = CommentedMap()  # empty or comments only
    edit_rt(doc)
    out = io.StringIO()
    y.dump(doc, out)
    new_text = out.getvalue()
    if read_yaml(new_text) != plain:  # the loader must read exactly the intended document
        raise CannotWrite(
            "the change cannot be written so that the file reads back the same; edit the file "
            "by hand and POST /api/reload"
        )
    return Edit(new_text, config, old_config, created, changed)

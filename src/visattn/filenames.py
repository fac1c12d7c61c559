"""Names read from a config or a file (a split, a class, a comparison entry, a file stem) that become
part of a file name: :func:`path_component` lets through only a single path component, so that an
output stays in the folder the user named."""
from __future__ import annotations

__all__ = ["UnsafeNameError", "path_component", "MAX_COMPONENT_LENGTH"]

# file systems allow 255 bytes per component; the name is only part of one (``eval_<split>.json``)
MAX_COMPONENT_LENGTH = 200


class UnsafeNameError(ValueError):
    """A name that would make a file name other than a single path component."""


def path_component(name: object, what: str) -> str:
    """``name`` if it is a non-empty string usable as one path component: no ``/`` or ``\\``, not
    ``.`` or ``..``, no NUL, newline or other control character, at most
    :data:`MAX_COMPONENT_LENGTH` bytes in UTF-8. Else :class:`UnsafeNameError` naming ``what``
    (e.g. ``"data.val_split of run/config.yaml"``) and the name."""
    if not isinstance(name, str) or not name:
        problem = "is empty" if name == "" else f"is a {type(name).__name__}, not a name"
    elif name in (".", ".."):
        problem = "names a directory, not a file"
    elif "/" in name or "\\" in name:
        problem = "holds a path separator"
    elif any(ord(ch) < 32 or ord(ch) == 127 for ch in name):
        problem = "holds a control character"
    elif len(name.encode("utf-8", "surrogatepass")) > MAX_COMPONENT_LENGTH:
        problem = f"is longer than {MAX_COMPONENT_LENGTH} bytes"
    else:
        return name
    shown = repr(name if not isinstance(name, str) or len(name) <= 60 else name[:60] + "...")
    raise UnsafeNameError(f"{what} {shown} {problem}: it must be a single file-name component")

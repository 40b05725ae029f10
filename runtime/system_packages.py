"""Where a model's declared Debian packages keep their files outside /usr and /etc, so the
sandbox can show them read-only (process tier; in an image everything is there already).

Debian puts some package data under /var/lib (texlive's formats and file index in
/var/lib/texmf, which /usr/share/texlive/texmf-dist/ls-R links to; sgml-base's catalog in
/var/lib/sgml-base, which /etc/sgml/catalog links to). A sandbox that shows only /usr and /etc
breaks them although dpkg-query says they are installed.

Computed by the platform on the host, from dpkg's own database (`dpkg -L` of the declared
packages and the installed packages they depend on), before any model code runs, and
recorded with the environment (PublishedTag.sandbox_binds) like the interpreter's prefix.
Only what lies under PACKAGE_ROOTS is kept, one folder below the root at least, never
the platform's own folders (CS_HOME), never a socket, fifo or device: see
docs/trust-boundary.md.
"""

from __future__ import annotations

import re
import shutil
import stat
import subprocess
from collections.abc import Iterable
from pathlib import Path

PACKAGE_ROOTS = (Path("/var/lib"), Path("/opt"))
"""Where a package's data may be shown to the sandbox (besides /usr and /etc, always shown)."""
ALWAYS_SHOWN = (Path("/usr"), Path("/etc"))
MAX_PACKAGES = 2000  # the dependency closure of one model's packages; texlive-full is ~300
_FORMAT = "${Package}\t${db:Status-Status}\t${Essential}\t${Priority}\t${Depends}, ${Pre-Depends}"
_NAME = re.compile(r"[a-z0-9][a-z0-9+.-]+")


def package_binds(names: Iterable[str], platform_paths: Iterable[Path]) -> list[str]:
    """The read-only binds a sandbox needs for these installed Debian packages: their files
    under PACKAGE_ROOTS (and what their links under /usr and /etc point to there), outermost
    folders only, none inside or around `platform_paths`."""
    packages = installed_closure(list(names))
    if not packages:
        return []
    keep: list[Path] = []
    for listed in listed_paths(packages):
        path = shown_path(listed, [Path(p).resolve() for p in platform_paths])
        if path is not None:
            keep.append(path)
    return [str(p) for p in outermost(keep)]


def installed_closure(names: list[str]) -> list[str]:
    """These packages and the installed packages they depend on (Depends, Pre-Depends):
    texlive's data is in tex-common, a dependency of the packages an app names. A dependency
    every Debian system has (Essential, or Priority required or important: dpkg, libc6,
    systemd) is not followed: its data is the system's (/var/lib/dpkg), not the model's."""
    seen: set[str] = set()
    level = [n for n in names if _NAME.fullmatch(n)]
    declared = set(level)
    while level and len(seen) < MAX_PACKAGES:
        fields = _dpkg_query(level, _FORMAT)
        seen.update(level)
        level = []
        for line in fields.splitlines():
            package, status, essential, priority, depends = (line.split("\t") + [""] * 4)[:5]
            system = essential == "yes" or priority in ("required", "important")
            if status != "installed" or (system and package not in declared):
                seen.discard(package)
                continue
            level += [d for d in _dependency_names(depends) if d not in seen]
        level = list(dict.fromkeys(level))
    return sorted(seen)


def _dependency_names(field: str) -> list[str]:
    """Package names of a Depends field ("a (>= 1), b | c, d:any"): every alternative."""
    names = []
    for alternative in re.split(r"[,|]", field):
        word = alternative.strip().split(" ")[0].split(":")[0]
        if _NAME.fullmatch(word):
            names.append(word)
    return names


def _dpkg_query(packages: list[str], showformat: str) -> str:
    dpkg_query = shutil.which("dpkg-query")
    if dpkg_query is None:
        return ""
    done = subprocess.run(
        [dpkg_query, "--show", f"--showformat={showformat}\n", "--", *packages],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    return done.stdout


def listed_paths(packages: list[str]) -> list[Path]:
    """What dpkg says these packages installed (`dpkg -L`), outside /usr and /etc, plus the
    targets of their links under /usr and /etc that point elsewhere (ls-R → /var/lib/texmf)."""
    dpkg = shutil.which("dpkg")
    if dpkg is None:
        return []
    done = subprocess.run(
        [dpkg, "-L", "--", *packages], capture_output=True, text=True, timeout=300, check=False
    )
    found: list[Path] = []
    for line in done.stdout.splitlines():
        if not line.startswith("/"):
            continue  # "package diverts others to: …" and the like
        path = Path(line.strip())
        if not _under(path, ALWAYS_SHOWN):
            found.append(path)
        elif path.is_symlink():
            target = path.resolve()
            if not _under(target, ALWAYS_SHOWN):
                found.append(target)
    return found


def shown_path(path: Path, platform_paths: list[Path]) -> Path | None:
    """`path` as the sandbox may see it (resolved), or None: outside PACKAGE_ROOTS or only a
    root itself (/var/lib would show every service's data), missing, not a folder or regular
    file, or inside or around one of the platform's own folders."""
    real = path.resolve()
    if not any(root in real.parents for root in PACKAGE_ROOTS):
        return None
    try:
        mode = real.stat().st_mode
    except OSError:
        return None
    if not (stat.S_ISDIR(mode) or stat.S_ISREG(mode)):
        return None
    for own in platform_paths:
        if real == own or own in real.parents or real in own.parents:
            return None
    return real


def outermost(paths: list[Path]) -> list[Path]:
    """Each path once, none below another one kept."""
    kept: list[Path] = []
    for path in sorted(set(paths), key=lambda p: len(p.parts)):
        if not any(k in path.parents for k in kept):
            kept.append(path)
    return sorted(kept)


def _under(path: Path, roots: Iterable[Path]) -> bool:
    return any(path == root or root in path.parents for root in roots)

"""Generated text corpora in the published layouts: a 20news-bydate archive and man pages as Debian
installs them."""

from __future__ import annotations

import dataclasses
import gzip
import io
import tarfile
from pathlib import Path

from dlclassics.data import registry

POST = """From: someone@example.org (Some One)
Subject: Re: engines
Organization: Example
Lines: 9

In article <1@example.org> other@example.org writes:
> quoted words from the earlier post
The {word} engine needs more torque and better gears.
Torque and gears make the {word} engine faster.

--
Some One, signature line
"""
GROUPS = ("rec.autos", "sci.space")


def _add(tar: tarfile.TarFile, name: str, data: bytes = b"", **fields) -> None:
    info = tarfile.TarInfo(name)
    info.size = len(data)
    for key, value in fields.items():
        setattr(info, key, value)
    tar.addfile(info, io.BytesIO(data) if data else None)


def news_archive(path: Path, per_group: int = 3, hostile: dict | None = None) -> Path:
    """A 20news-bydate.tar.gz in the published layout: 20news-bydate-{train,test}/<group>/<id>, plus
    one `hostile` member (TarInfo fields) when asked."""
    with tarfile.open(path, "w:gz") as tar:
        for split in ("train", "test"):
            _add(tar, f"20news-bydate-{split}", type=tarfile.DIRTYPE)
            for group in GROUPS:
                _add(tar, f"20news-bydate-{split}/{group}", type=tarfile.DIRTYPE)
                for i in range(per_group):
                    word = group.split(".")[1] + ("\xe9" if i == 0 else "")  # one Latin-1 byte
                    _add(tar, f"20news-bydate-{split}/{group}/{5000 + i}", POST.format(word=word).encode("latin-1"))
        if hostile:
            _add(tar, **hostile)
    return path


def man_page(name: str, section: str, body: str, project: str = "Linux man-pages 6.03") -> bytes:
    return (f'.\\" Copyright comment\n.TH {name} {section} 2023-02-05 "{project}"\n.SH NAME\n{name} \\- {body}\n'
            f".SH DESCRIPTION\n.BR {name} ()\n\\fBopens\\fP a \\fIfile\\fR descriptor\\(emquickly.\n"
            f".PP\n.nf\nint fd = {name}();\n.fi\n").encode()


def man_tree(root: Path) -> Path:
    """man2/ and man3/ as Debian installs them: gzipped roff, symlinked aliases, a `.so` redirect, a
    `.3type` page, and a page of another package that shares the folder."""
    for section, names in (("man2", ("open", "read", "close")), ("man3", ("printf", "malloc"))):
        folder = root / section
        folder.mkdir(parents=True)
        for name in names:
            (folder / f"{name}.{section[-1]}.gz").write_bytes(gzip.compress(man_page(name, section[-1], "system call")))
    (root / "man2" / "creat.2.gz").symlink_to("open.2.gz")
    (root / "man3" / "vprintf.3.gz").write_bytes(gzip.compress(b".so man3/printf.3\n"))
    (root / "man3" / "size_t.3type.gz").write_bytes(gzip.compress(man_page("size_t", "3type", "unsigned type")))
    (root / "man3" / "zlib.3.gz").write_bytes(gzip.compress(man_page("zlib", "3", "compression", "zlib 1.2")))
    return root


def unchecked_news() -> registry.DatasetSpec:
    """20newsgroups with the archive's checksum switched off (a generated archive cannot match it)."""
    spec = registry.dataset("20newsgroups")
    return dataclasses.replace(spec, files=(dataclasses.replace(spec.files[0], sha256=None),))


def write_text_data(root: Path) -> Path:
    """`root/manpages-dev` (40 short pages on three themes besides `man_tree`'s) and
    `root/20newsgroups/20news-bydate.tar.gz` (for `unchecked_news`): enough for a vocabulary and a
    held-out part."""
    man_tree(root / "manpages-dev")
    for index in range(40):
        words = ["file descriptor open read write", "memory allocate free pointer", "signal process handler"][index % 3]
        section = "man2" if index % 2 else "man3"
        page = f'.TH p{index} {section[-1]} 2023 "Linux man-pages 6.03"\n.SH NAME\n{words} {words}\n'
        (root / "manpages-dev" / section / f"p{index}.{section[-1]}").write_text(page)
    (root / "20newsgroups").mkdir()
    news_archive(root / "20newsgroups" / "20news-bydate.tar.gz", per_group=12)
    return root

"""Text corpora on generated files in the official layouts: the 20news-bydate archive (verified, hostile
members refused, fetched from a local mirror), folders of text files, the Linux man pages; and the bag of words."""

from __future__ import annotations

import dataclasses
import hashlib
import tarfile
from pathlib import Path

import numpy as np
import pytest
from text_files import GROUPS, POST, man_tree, news_archive

from dlclassics.cli import main
from dlclassics.data import fetch, registry, text
from dlclassics.data.registry import DamagedFile, UnofficialFile
from dlclassics.errors import RunError, UsageError


@pytest.fixture
def no_system_data(tmp_path, monkeypatch):
    """Nothing is found outside the test's folders (not the machine's /usr/share/man either)."""
    monkeypatch.setattr(registry, "SYSTEM_DIRS", ())
    monkeypatch.setattr(registry, "CACHE_DIR", tmp_path / "cache")
    monkeypatch.delenv("DLCLASSICS_DATA", raising=False)
    spec = registry.dataset("manpages-dev")
    monkeypatch.setitem(registry.DATASETS, "manpages-dev", dataclasses.replace(spec, system_folders=()))


def checked_news_spec(monkeypatch, archive: Path) -> text.NewsgroupsSpec:
    """The 20newsgroups spec with the generated archive's sha256, so verification is really exercised."""
    spec = registry.dataset("20newsgroups")
    entry = dataclasses.replace(spec.files[0], sha256=hashlib.sha256(archive.read_bytes()).hexdigest())
    checked = dataclasses.replace(spec, files=(entry,), mirrors=())
    monkeypatch.setitem(registry.DATASETS, "20newsgroups", checked)
    return checked


# ---------------------------------------------------------------- 20 Newsgroups

def test_archive_gives_published_splits_groups_and_stripped_posts(tmp_path, no_system_data, monkeypatch):
    (tmp_path / "20newsgroups").mkdir()
    checked_news_spec(monkeypatch, news_archive(tmp_path / "20newsgroups" / "20news-bydate.tar.gz"))
    corpus = text.load_corpus("20newsgroups", tmp_path)
    assert len(corpus.documents) == 12 and corpus.classes == GROUPS
    assert (corpus.splits == "train").sum() == 6 and (corpus.splits == "test").sum() == 6
    assert np.bincount(corpus.labels).tolist() == [6, 6]
    post = corpus.documents[0]
    assert "autos\xe9 engine" in post  # decoded as Latin-1, as published
    for gone in ("Subject:", "writes:", "quoted words", "signature line"):
        assert gone not in post
    raw = text.load_corpus("20newsgroups", tmp_path, strip=())
    assert "Subject: Re: engines" in raw.documents[0] and "signature line" in raw.documents[0]


def test_strip_post_parts_one_at_a_time():
    post = POST.format(word="x")
    assert text.strip_post(post, ["headers"]).startswith("In article")
    assert "signature line" not in text.strip_post(post, ["footers"]) and "From:" in text.strip_post(post, ["footers"])
    quotes_gone = text.strip_post(post, ["quotes"])
    assert "quoted words" not in quotes_gone and "In article" not in quotes_gone and "torque" in quotes_gone


@pytest.mark.parametrize("hostile, reason", [
    ({"name": "/etc/evil", "data": b"x"}, "layout"),  # the data filter would strip the slash: refused anyway
    ({"name": "20news-bydate-train/../../evil", "data": b"x"}, "outside"),
    ({"name": "20news-bydate-train/rec.autos/link", "type": tarfile.SYMTYPE, "linkname": "/etc/passwd"}, "link"),
    ({"name": "20news-bydate-train/rec.autos/near", "type": tarfile.SYMTYPE, "linkname": "5000"}, "link"),
    ({"name": "20news-bydate-train/rec.autos/hard", "type": tarfile.LNKTYPE, "linkname": "/etc/passwd"}, "link"),
    ({"name": "20news-bydate-train/rec.autos/dev", "type": tarfile.CHRTYPE}, "special"),
    ({"name": "README", "data": b"x"}, "not in the 20news-bydate layout"),
])
def test_hostile_archive_members_are_refused(tmp_path, hostile, reason):
    archive = news_archive(tmp_path / "20news-bydate.tar.gz", hostile=hostile)
    with pytest.raises(RunError) as caught:
        text.read_news_archive(archive.read_bytes(), str(archive))
    message = str(caught.value).lower()
    assert reason in message and ("refused" in message or "layout" in message) and "\n" not in message
    assert not (tmp_path / "evil").exists() and not Path("/etc/evil").exists()


def test_archive_checksum_damaged_and_unofficial(tmp_path, no_system_data, monkeypatch, capsys):
    folder = tmp_path / "20newsgroups"
    folder.mkdir()
    archive = news_archive(folder / "20news-bydate.tar.gz")
    spec = checked_news_spec(monkeypatch, archive)
    assert main(["data", "status", "20newsgroups", "--data-dir", str(tmp_path)]) == 0
    assert " ok " in capsys.readouterr().out
    news_archive(archive, per_group=2)  # readable, another content
    with pytest.raises(UnofficialFile, match="not the official '20newsgroups' file"):
        registry.read_verified(spec, archive, spec.files[0])
    assert len(registry.read_verified(spec, archive, spec.files[0], unverified=True)) == 8
    archive.write_bytes(archive.read_bytes()[:300])
    with pytest.raises(DamagedFile, match="damaged archive"):
        registry.read_verified(spec, archive, spec.files[0], unverified=True)
    archive.write_bytes(b"not gzip at all")
    assert main(["data", "status", "20newsgroups", "--data-dir", str(tmp_path)]) == 1
    assert "damaged" in capsys.readouterr().out


def test_fetch_20newsgroups_from_a_mirror_verifies_the_archive(tmp_path, no_system_data, monkeypatch):
    mirror = tmp_path / "mirror"
    mirror.mkdir()
    checked_news_spec(monkeypatch, news_archive(mirror / "20news-bydate.tar.gz"))
    monkeypatch.setenv("DLCLASSICS_MIRROR", mirror.as_uri())
    folder = fetch.fetch("20newsgroups")
    assert (folder / "20news-bydate.tar.gz").read_bytes() == (mirror / "20news-bydate.tar.gz").read_bytes()
    assert registry.status("20newsgroups")[1][0].state == "ok"


# ---------------------------------------------------------------- folders of text files

def test_folder_documents_labels_and_replaced_bytes(tmp_path):
    root = tmp_path / "texts"
    (root / "cats" / "deeper").mkdir(parents=True)
    (root / "dogs").mkdir()
    (root / "cats" / "a.txt").write_text("cats purr")
    (root / "cats" / "deeper" / "b.txt").write_text("cats sleep")  # deeper: still labelled by the first level
    (root / "dogs" / "c.txt").write_bytes(b"dogs bark \xff\xfe")  # not UTF-8
    (root / "dogs" / ".hidden").write_text("skipped")
    corpus = text.load_folder(root)
    assert corpus.classes == ("cats", "dogs") and corpus.labels.tolist() == [0, 0, 1]
    assert corpus.replaced == 1 and "\ufffd" in corpus.documents[2] and corpus.documents[0] == "cats purr"
    assert (corpus.splits == "all").all()


def test_flat_folder_is_unlabelled_and_an_empty_one_is_refused(tmp_path):
    (tmp_path / "one.txt").write_text("words")
    corpus = text.load_folder(tmp_path)
    assert corpus.classes == () and corpus.labels.tolist() == [-1]
    (tmp_path / "empty").mkdir()
    with pytest.raises(RunError, match="holds no documents"):
        text.load_folder(tmp_path / "empty")
    with pytest.raises(UsageError, match="is not a folder"):
        text.load_folder(tmp_path / "missing")
    with pytest.raises(UsageError, match="pass --data-dir"):
        text.load_corpus(text.FOLDER, None)


# ---------------------------------------------------------------- the Linux man pages

def test_man_pages_are_plain_text_labelled_by_section(tmp_path, no_system_data):
    man_tree(tmp_path / "manpages-dev")
    corpus = text.load_corpus("manpages-dev", tmp_path)
    assert len(corpus.documents) == 6  # 3 + 3: no alias, no redirect, no other package's page
    assert corpus.classes == ("man2", "man3") and corpus.labels.tolist() == [0, 0, 0, 1, 1, 1]
    assert corpus.description.endswith("(release 6.03)")
    page = corpus.documents[1]  # open.2 (sorted: close, open, read)
    assert "opens a file descriptor" in page and "open ()" in page and "NAME" in page
    for markup in ("\\f", ".TH", ".SH", ".PP", "Copyright", "Linux man-pages", '"'):
        assert markup not in page
    assert "unsigned type" in corpus.documents[-1]  # size_t.3type
    assert not any("compression" in document for document in corpus.documents)  # zlib's page is not Linux man-pages


def test_man_pages_are_found_where_the_package_installs_them(tmp_path, no_system_data, monkeypatch):
    installed = man_tree(tmp_path / "usr-share-man")
    spec = registry.dataset("manpages-dev")
    monkeypatch.setitem(registry.DATASETS, "manpages-dev", dataclasses.replace(spec, system_folders=(str(installed),)))
    assert registry.find_folder(registry.dataset("manpages-dev"), None) == installed
    with pytest.raises(UsageError, match="holds none of the 'manpages-dev' files"):  # an explicit root only
        registry.find_folder(registry.dataset("manpages-dev"), tmp_path / "usr-share-man" / "man2")
    assert "/usr/share/man" in text.MANPAGES.system_folders


def test_roff_escapes_and_requests():
    source = '.SH "SEE ALSO"\n.BI "int open(const char *" pathname );\n\\(lqquoted\\(rq \\e \\-1 \\[aq]x\\&.\n.in +4n\n'
    assert text.roff_to_text(source).split() == ["SEE", "ALSO", "int", "open(const", "char", "*", "pathname",
                                                 ");", "quoted", "-1", "x."]


# ---------------------------------------------------------------- bag of words

def test_vectorize_filters_by_document_frequency_and_keeps_token_positions():
    documents = ["apple banana cherry", "apple banana", "apple kiwi 123 a_b the"]
    bag = text.vectorize(documents, min_df=2, max_df=1.0)
    assert bag.vocabulary == ("apple", "banana")  # kiwi, cherry: in one document; the, 123, a_b: not words
    counts = bag.counts(documents)
    assert counts.toarray().tolist() == [[1, 1], [1, 1], [1, 0]] and counts.dtype == np.float32
    ids, offsets = text.token_ids(bag, documents)
    assert offsets.tolist() == [0, 3, 5, 7] and ids.tolist() == [0, 1, -1, 0, 1, 0, -1]


def test_an_empty_vocabulary_is_one_clear_error():
    with pytest.raises(RunError, match="vocabulary is empty .* lower min_df"):
        text.vectorize(["apple pie", "banana split"], min_df=2, max_df=1.0)


@pytest.mark.skipif(not Path("/usr/share/man/man2/open.2.gz").is_file(), reason="manpages-dev is not installed")
def test_the_installed_man_pages_are_the_linux_man_pages(monkeypatch):
    monkeypatch.delenv("DLCLASSICS_DATA", raising=False)
    corpus = text.load_corpus("manpages-dev")
    assert corpus.source == "/usr/share/man" and corpus.classes == ("man2", "man3")
    assert len(corpus.documents) >= 800  # 895 in Debian 12's manpages-dev 6.03 (with its dependency's intro pages)
    assert not any("\\f" in document or "\n.SH" in document for document in corpus.documents)

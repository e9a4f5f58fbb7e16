"""Text corpora: 20 Newsgroups, the Linux manual pages, any folder of text files; and the bag of words.

Three sources of documents, each read into one `Corpus` (documents, labels, published split):
- **20newsgroups**: the official `20news-bydate.tar.gz` (11,314 train / 7,532 test posts, the
  newsgroup is the label), verified by its sha256 and read member by member in memory: every member
  passes the checks of tarfile's "data" extraction filter (no absolute paths, no `..`, no links or
  devices) and must sit in the published layout `20news-bydate-{train,test}/<group>/<id>`, so a
  hostile archive is refused before anything is read from it. Headers, signature footers and quoted
  replies can be stripped, as scikit-learn's `fetch_20newsgroups(remove=...)` does.
- **manpages-dev**: Debian's `manpages-dev` (Linux man-pages, sections 2 and 3, gzipped roff) under
  `/usr/share/man`: the markup is stripped to plain text, the section is the label. It installs
  offline (`apt-get install manpages-dev`), so it is the real corpus every machine here can have.
  Pages of other packages that share those folders (zlib, OpenSSL...) are left out: a page belongs
  to the corpus when its `.TH` title line names "Linux man-pages".
- **a folder**: one document per file, the first-level subfolder (when there is one) is the label
  (`--dataset folder --data-dir DIR`).

Files are decoded as UTF-8 (20 Newsgroups: Latin-1, as published); a file that is not valid in its
encoding is decoded with replacement characters and counted, never refused.

`vectorize` turns documents into a sparse bag of words with scikit-learn's `CountVectorizer`
(document-frequency cuts, English stop words), fitted on the training documents only; `token_ids`
gives the same tokens in document order, for the sliding-window coherence.
"""

from __future__ import annotations

import dataclasses
import gzip
import io
import itertools
import re
import tarfile
import zlib
from collections.abc import Iterable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from dlclassics.data.registry import (
    DamagedFile,
    DataFile,
    DatasetSpec,
    dataset,
    explicit_root,
    file_path,
    names,
    read_verified,
    register,
    require_folder,
)
from dlclassics.errors import RunError, UsageError

if TYPE_CHECKING:  # scipy and scikit-learn are imported where text is vectorised: listing datasets stays cheap
    from scipy import sparse
    from sklearn.feature_extraction.text import CountVectorizer

FOLDER = "folder"  # the `dataset` value that reads --data-dir as a folder of text files
NEWS_PARTS = ("headers", "footers", "quotes")
# Token = a run of 3 or more letters (no digits, no underscores): what the ProdLDA literature keeps.
TOKEN_PATTERN = r"(?u)\b[^\W\d_]{3,}\b"
# Bounds on what a reader decompresses (the official archive inflates to 90 MB, a man page to < 1 MB).
MAX_ARCHIVE_CONTENT = 512 * 2**20
MAX_DOCUMENT_BYTES = 16 * 2**20


@dataclasses.dataclass
class Corpus:
    """Documents in memory with their labels and the split each belongs to ("train", "test" or "all")."""

    name: str
    documents: list[str]
    labels: np.ndarray  # int64 [N], index into `classes`; -1 for an unlabelled document
    classes: tuple[str, ...]
    splits: np.ndarray  # str [N]
    source: str
    replaced: int = 0  # documents that were not valid in their encoding (decoded with replacement)
    description: str = ""


@dataclasses.dataclass(frozen=True)
class RawDocument:
    """One file of a corpus as read: its bytes, label and split, before decoding."""

    data: bytes
    label: str
    split: str = "all"


# ---------------------------------------------------------------- decoding and assembling

def decode(data: bytes, encoding: str) -> tuple[str, bool]:
    """(text, whether bytes had to be replaced): an invalid byte never stops a corpus from loading."""
    try:
        return data.decode(encoding), False
    except UnicodeDecodeError:
        return data.decode(encoding, errors="replace"), True


def assemble(name: str, raw: Iterable[RawDocument], source: str, encoding: str = "utf-8",
             description: str = "") -> Corpus:
    """A Corpus from raw documents: decoded, labels numbered in sorted order (stable across runs)."""
    raw = list(raw)
    if not raw:
        raise RunError(f"{source} holds no documents; point --data-dir to a folder of text files")
    texts, replaced = zip(*(decode(doc.data, encoding) for doc in raw))
    classes = tuple(sorted({doc.label for doc in raw if doc.label}))
    index = {label: i for i, label in enumerate(classes)}
    labels = np.array([index.get(doc.label, -1) for doc in raw], dtype=np.int64)
    return Corpus(name, list(texts), labels, classes, np.array([doc.split for doc in raw]), source,
                  replaced=sum(replaced), description=description)


def read_bounded(stream: Any, source: str, limit: int = MAX_DOCUMENT_BYTES) -> bytes:
    data = stream.read(limit + 1)
    if len(data) > limit:
        raise RunError(f"{source} holds more than {limit // 2**20} MB of text in one document; is it the right file?")
    return data


# ---------------------------------------------------------------- a folder of text files

def read_folder(folder: Path) -> list[RawDocument]:
    """Every non-hidden file under `folder` (recursively, in sorted order) is a document; its label is
    the first-level subfolder it lies in ("" for files directly in `folder`)."""
    folder = Path(folder)
    if not folder.is_dir():
        raise UsageError(f"{folder} is not a folder; pass --data-dir to a folder of text files")
    documents = []
    for path in sorted(folder.rglob("*")):
        relative = path.relative_to(folder)
        if any(part.startswith(".") for part in relative.parts) or not path.is_file():
            continue
        try:
            with open(path, "rb") as handle:
                data = read_bounded(handle, str(path))
        except OSError as exc:
            raise RunError(f"cannot read {path} ({exc.strerror or exc}); make it readable or remove it") from None
        documents.append(RawDocument(data, relative.parts[0] if len(relative.parts) > 1 else ""))
    return documents


def load_folder(folder: Path) -> Corpus:
    return assemble(FOLDER, read_folder(folder), str(folder),
                    description=f"text files in {folder} (one document per file)")


# ---------------------------------------------------------------- the specs

@dataclasses.dataclass(frozen=True)
class TextDatasetSpec(DatasetSpec):
    """A registered text corpus; subclasses say how its files become documents."""

    encoding: str = "utf-8"

    def read_file(self, path: Path, entry: DataFile, unverified: bool) -> tuple[list[RawDocument], bytes]:
        raise NotImplementedError

    def load(self, folder: Path, unverified: bool = False, **options: Any) -> Corpus:
        raw = itertools.chain.from_iterable(read_verified(self, _path(folder, entry), entry, unverified)
                                            for entry in self.files)
        corpus = assemble(self.name, raw, str(folder), self.encoding, self.title)
        corpus.documents = self.clean(corpus.documents, **options)
        return corpus

    def clean(self, documents: list[str], **options: Any) -> list[str]:
        """Per-corpus cleaning of the decoded documents (none by default)."""
        return documents


def _path(folder: Path, entry: DataFile) -> Path:
    path = file_path(folder, entry)
    if path is None:
        raise RunError(f"{folder} lacks {entry.name}[.gz]; is it a complete copy?")
    return path


# ---- 20 Newsgroups

NEWS_LAYOUT = re.compile(r"20news-bydate-(train|test)/([^/]+)/([^/]+)")
NEWS_QUOTE = re.compile(r"(writes in|writes:|wrote:|says:|said:|^In article|^Quoted from|^\||^>)")


@dataclasses.dataclass(frozen=True)
class NewsgroupsSpec(TextDatasetSpec):
    """The 20news-bydate archive: its sha256 is of the .tar.gz as published (the one scikit-learn checks)."""

    def read_file(self, path: Path, entry: DataFile, unverified: bool) -> tuple[list[RawDocument], bytes]:
        archive = Path(path).read_bytes()
        return read_news_archive(archive, str(path)), archive

    def clean(self, documents: list[str], strip: Iterable[str] = NEWS_PARTS) -> list[str]:
        strip = tuple(strip)
        unknown = set(strip) - set(NEWS_PARTS)
        if unknown:
            raise UsageError(f"cannot strip {', '.join(sorted(unknown))} from posts; "
                             f"choose among {', '.join(NEWS_PARTS)}")
        return [strip_post(document, strip) for document in documents]


def read_news_archive(archive: bytes, source: str) -> list[RawDocument]:
    """The posts of a 20news-bydate tar.gz, read in memory after each member passed the safety checks."""
    documents, content = [], 0
    try:
        with tarfile.open(fileobj=io.BytesIO(archive), mode="r:gz") as tar:
            for member in tar:
                _check_member(member, source)
                if member.isdir():
                    continue
                match = NEWS_LAYOUT.fullmatch(member.name)
                if match is None:
                    raise RunError(f"{source}: member {member.name!r} is not in the 20news-bydate layout "
                                   "(20news-bydate-train|test/<group>/<id>); is it the right archive?")
                content += member.size
                if content > MAX_ARCHIVE_CONTENT:
                    raise RunError(f"{source} inflates to more than {MAX_ARCHIVE_CONTENT // 2**20} MB; "
                                   "the official archive holds 90 MB: is it the right file?")
                documents.append(RawDocument(tar.extractfile(member).read(), match[2], match[1]))
    except (tarfile.TarError, EOFError, zlib.error, gzip.BadGzipFile) as exc:
        raise DamagedFile(f"{source} is a damaged archive ({exc}); delete it and fetch it again") from None
    if not documents:
        raise RunError(f"{source} holds no posts; is it the 20news-bydate archive?")
    return documents


def _check_member(member: tarfile.TarInfo, source: str) -> None:
    """Refuse what tarfile's "data" filter refuses (absolute or escaping paths, links out of the tree,
    devices), and every link: the official archive holds only folders and regular files."""
    try:
        tarfile.data_filter(member, "/nonexistent-destination")
    except tarfile.FilterError as exc:
        raise RunError(f"{source}: refused member {member.name!r} ({exc}); the archive is not safe to read") from None
    if not (member.isfile() or member.isdir()):
        raise RunError(f"{source}: refused member {member.name!r} (a link or special file); the official archive "
                       "holds only regular files")


def strip_post(text: str, parts: Iterable[str]) -> str:
    """A newsgroup post without the parts named, by scikit-learn's heuristics and in its order:
    `headers` (everything before the first blank line), `footers` (everything after the last line that
    is blank or only dashes), `quotes` (lines quoting another post, or introducing a quote)."""
    parts = set(parts)
    if "headers" in parts:
        text = text.partition("\n\n")[2]
    if "footers" in parts:
        lines = text.strip().split("\n")
        last = next((i for i in range(len(lines) - 1, -1, -1) if lines[i].strip().strip("-") == ""), 0)
        text = "\n".join(lines[:last]) if last > 0 else text
    if "quotes" in parts:
        text = "\n".join(line for line in text.split("\n") if not NEWS_QUOTE.search(line))
    return text


NEWSGROUPS = register(NewsgroupsSpec(
    name="20newsgroups",
    title="20 Newsgroups, by-date version (train 11,314 / test 7,532 posts, 20 groups)",
    kind="text",
    files=(DataFile("20news-bydate.tar", "all", "archive",
                    "8f1b2514ca22a5ade8fbb9cfa5727df95fa587f4c87b786e15c759fa66d95610"),),
    mirrors=("http://qwone.com/~jason/20Newsgroups/",),
    encoding="latin-1",
    install_hint="run 'dlclassics data fetch 20newsgroups' (needs network; 14 MB) or pass --data-dir to the "
                 "folder holding 20news-bydate.tar.gz",
))


# ---- the Linux manual pages

ROFF_TEXT_MACROS = {"B", "I", "BI", "BR", "IB", "IR", "RB", "RI", "SB", "SM", "SH", "SS", "TP", "IP", "UR", "MT"}
ROFF_ESCAPES = (
    (re.compile(r"\\f(\(..|\[[^]]*\]|.)"), ""),  # font changes \fB \fI \fR \f(CW
    (re.compile(r"\\\*(\(..|\[[^]]*\]|.)"), ""),  # defined strings \*R \*(lq \*[name]
    (re.compile(r"\\(\(..|\[[^]]*\])"), " "),  # special characters \(em \(lq \[aq]
    (re.compile(r"\\-"), "-"),
    (re.compile(r"\\."), ""),  # the rest: \& \c \: \% zero-width marks, \e (a backslash: not a word)
)
MAN_TITLE = re.compile(r'^\.TH\s.*"Linux man-pages ([^"]*)"', re.MULTILINE)


def roff_to_text(source: str) -> str:
    """Plain text of a man page: comments and layout requests dropped, the arguments of text macros
    (.B, .BR, .SH ...) kept without quotes, escapes removed. Whole-string regexes, no per-word loop."""
    kept = []
    for line in source.split("\n"):
        if line.startswith((".", "'")):
            name, _, arguments = line[1:].strip().partition(" ")
            if name not in ROFF_TEXT_MACROS:
                continue
            line = arguments.replace('"', " ")
        kept.append(line)
    text = "\n".join(kept)
    for pattern, replacement in ROFF_ESCAPES:
        text = pattern.sub(replacement, text)
    return text


@dataclasses.dataclass(frozen=True)
class ManPagesSpec(TextDatasetSpec):
    """A man section is a folder of pages; its DataFile names one page every copy holds, by which the
    folder is recognised, and reading that "file" reads the whole section."""

    def load(self, folder: Path, unverified: bool = False, **options: Any) -> Corpus:
        corpus = super().load(folder, unverified, **options)
        corpus.description += f" (release {man_pages_version(_path(folder, self.files[0]))})"
        return corpus

    def read_file(self, path: Path, entry: DataFile, unverified: bool) -> tuple[list[RawDocument], bytes]:
        documents = read_man_section(Path(path).parent, entry.role)
        if not documents:
            raise RunError(f"{Path(path).parent} holds no Linux man-pages; is manpages-dev installed?")
        return documents, b"".join(doc.data for doc in documents)


def read_man_section(folder: Path, section: str) -> list[RawDocument]:
    """The Linux man-pages of one section folder as plain text: regular files only (a symlink is another
    name of a page already read), `.so` redirections and other packages' pages left out."""
    page_name = re.compile(rf".+\.{section[-1]}[a-z]*(\.gz)?")  # open.2, printf.3.gz, EOF.3const.gz
    documents = []
    for path in sorted(folder.iterdir()):
        if path.is_symlink() or not page_name.fullmatch(path.name) or not path.is_file():
            continue
        try:
            with _open_page(path) as handle:
                data = read_bounded(handle, str(path))
        except (OSError, EOFError, zlib.error) as exc:
            raise DamagedFile(f"{path} cannot be read ({exc}); reinstall the package (apt-get install "
                              "--reinstall manpages-dev)") from None
        text, _ = decode(data, "utf-8")
        if MAN_TITLE.search(text) is None or text.startswith(".so "):
            continue
        documents.append(RawDocument(roff_to_text(text).encode(), section))
    return documents


def man_pages_version(page: Path) -> str:
    """The man-pages release named in a page's title line ("6.03"), for the run's notes."""
    try:
        with _open_page(page) as handle:
            match = MAN_TITLE.search(handle.read(4096).decode("utf-8", errors="replace"))
    except (OSError, EOFError, zlib.error):
        return "unknown"
    return match[1] if match else "unknown"


def _open_page(path: Path) -> Any:
    return gzip.open(path) if path.suffix == ".gz" else open(path, "rb")


MANPAGES = register(ManPagesSpec(
    name="manpages-dev",
    title="Linux man-pages, sections 2 (system calls) and 3 (library functions), from Debian's manpages-dev",
    kind="text",
    files=(DataFile("man2/open.2", "all", "man2"), DataFile("man3/printf.3", "all", "man3")),
    system_folders=("/usr/share/man",),
    install_hint="run 'sudo apt-get install manpages-dev' (Debian/Ubuntu) or pass --data-dir to a folder "
                 "holding man2/ and man3/",
))


# ---------------------------------------------------------------- loading for a run

def text_datasets() -> tuple[str, ...]:
    """The registered text corpora, plus `folder` for one's own files."""
    return (*names("text"), FOLDER)


def load_corpus(name: str, data_dir: Path | None = None, unverified: bool = False, **options: Any) -> Corpus:
    """A registered corpus (located and verified by the registry), or with `folder` the files in --data-dir."""
    if name == FOLDER:
        explicit = explicit_root(data_dir)
        if explicit is None:
            raise UsageError("--dataset folder reads the text files in --data-dir DIR; pass --data-dir")
        return load_folder(explicit[0])
    spec: TextDatasetSpec = dataset(name, kind="text")  # type: ignore[assignment]
    return spec.load(require_folder(spec, data_dir), unverified=unverified, **options)


# ---------------------------------------------------------------- bag of words

@dataclasses.dataclass
class BagOfWords:
    """Documents as word counts over a vocabulary fitted on the training documents (sparse until batching)."""

    vocabulary: tuple[str, ...]
    vectorizer: CountVectorizer

    def counts(self, documents: list[str]) -> sparse.csr_matrix:
        """[N, V] float32 word counts (CSR)."""
        return self.vectorizer.transform(documents).astype(np.float32).tocsr()


def vectorize(train_documents: list[str], min_df: int, max_df: float, max_words: int = 0) -> BagOfWords:
    """Fit the vocabulary: tokens of 3+ letters, lower-cased, English stop words out, words in fewer than
    `min_df` documents or in more than a `max_df` fraction of them out, at most `max_words` (0 = all)."""
    from sklearn.feature_extraction.text import CountVectorizer

    vectorizer = CountVectorizer(token_pattern=TOKEN_PATTERN, stop_words="english", min_df=min_df,
                                 max_df=max_df, max_features=max_words or None, dtype=np.float32)
    try:
        vectorizer.fit(train_documents)
    except ValueError as exc:  # "empty vocabulary" / "After pruning, no terms remain"
        raise RunError(f"the vocabulary is empty after filtering {len(train_documents):,} training documents "
                       f"(min_df={min_df}, max_df={max_df}): {exc}. Lower min_df or raise max_df") from None
    return BagOfWords(tuple(vectorizer.get_feature_names_out()), vectorizer)


def token_ids(bag: BagOfWords, documents: list[str]) -> tuple[np.ndarray, np.ndarray]:
    """(ids, offsets): every token of every document in order, as its vocabulary index (-1 when not in
    the vocabulary, so positions are kept), and where each document starts ([N + 1])."""
    analyze = bag.vectorizer.build_analyzer()
    tokens = [analyze(document) for document in documents]
    lengths = np.fromiter(map(len, tokens), dtype=np.int64, count=len(tokens))
    lookup = bag.vectorizer.vocabulary_.get
    flat = itertools.chain.from_iterable(tokens)
    ids = np.fromiter(map(lookup, flat, itertools.repeat(-1)), dtype=np.int64, count=int(lengths.sum()))
    return ids, np.concatenate([[0], np.cumsum(lengths)])

import io
import sys

import pytest

from rlm_local.documents import DocumentError, read_context


def test_text_file_and_latin1(tmp_path):
    f = tmp_path / "a.txt"
    f.write_text("héllo world", encoding="utf-8")
    assert read_context(str(f)) == "héllo world"
    g = tmp_path / "b.txt"
    g.write_bytes("caf\xe9".encode("cp1252"))
    assert read_context(str(g)) == "café"


def test_directory_concatenates_text_files_with_headers_and_skips_binary(tmp_path):
    (tmp_path / "sub").mkdir()
    (tmp_path / "b.md").write_text("second")
    (tmp_path / "a.txt").write_text("first")
    (tmp_path / "sub" / "c.txt").write_text("third")
    (tmp_path / "img.bin").write_bytes(b"\x00\x01\x02")
    (tmp_path / ".hidden").mkdir()
    (tmp_path / ".hidden" / "x.txt").write_text("secret")
    text = read_context(str(tmp_path))
    assert text.index("=== FILE: a.txt ===") < text.index("=== FILE: b.md ===") < text.index("=== FILE: sub/c.txt ===")
    assert "first" in text and "third" in text and "secret" not in text and "img.bin" not in text


@pytest.mark.parametrize(
    "setup, message",
    [
        (lambda p: None, "no such file"),
        (lambda p: p.write_bytes(b"\x7fELF\x00\x00binary"), "binary"),
        (lambda p: p.write_text("  \n\n"), "empty"),
    ],
)
def test_bad_files(tmp_path, setup, message):
    f = tmp_path / "input.txt"
    setup(f)
    with pytest.raises(DocumentError, match=message):
        read_context(str(f))


def test_empty_directory(tmp_path):
    with pytest.raises(DocumentError, match="no readable text files"):
        read_context(str(tmp_path))


def test_stdin(monkeypatch):
    monkeypatch.setattr(sys, "stdin", io.TextIOWrapper(io.BytesIO(b"from a pipe")))
    assert read_context("-") == "from a pipe"


def test_pdf(tmp_path):
    pypdf = pytest.importorskip("pypdf")
    writer = pypdf.PdfWriter()
    writer.add_blank_page(width=200, height=200)
    path = tmp_path / "blank.pdf"
    with open(path, "wb") as fh:
        writer.write(fh)
    with pytest.raises(DocumentError, match="empty"):  # a PDF with no text is an empty context
        read_context(str(path))
    bad = tmp_path / "broken.pdf"
    bad.write_bytes(b"%PDF-1.4 not really")
    with pytest.raises(DocumentError):
        read_context(str(bad))


# ---- one extractor for paths and uploaded bytes ---------------------------------------------------------
from pdfs import make_pdf, make_pdf_bomb  # noqa: E402

from rlm_local.documents import Caps, extract  # noqa: E402
from rlm_local.errors import DocumentTooLarge  # noqa: E402


@pytest.mark.parametrize(
    "data",
    [
        "\ufeffUTF-16 with a mark: déjà vu".encode("utf-16-le"),
        "\ufeffUTF-16 big-endian: déjà vu".encode("utf-16-be"),
        "no mark, little-endian: déjà vu".encode("utf-16-le"),
        "no mark, big-endian: déjà vu".encode("utf-16-be"),
        "\ufeffUTF-32: déjà vu".encode("utf-32-le"),
        "\ufeffUTF-8 with a mark: déjà vu".encode(),
    ],
)
def test_utf16_and_other_unicode_files_are_text(tmp_path, data):
    """Before: every UTF-16 file was refused as binary (its zero bytes)."""
    f = tmp_path / "notes.txt"
    f.write_bytes(data)
    text = read_context(str(f))
    assert text.endswith("déjà vu") and "\ufeff" not in text and "\x00" not in text
    assert extract("notes.txt", data) == text  # the upload path reads it the same way


def test_paths_and_uploads_share_one_extractor(tmp_path):
    pytest.importorskip("pypdf")
    pdf = make_pdf("Planted PDF fact")
    (tmp_path / "a.pdf").write_bytes(pdf)
    assert read_context(str(tmp_path / "a.pdf")) == extract("a.pdf", pdf) == "--- page 1 ---\nPlanted PDF fact"
    import zipfile

    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as z:
        z.writestr("repo/b.md", "second")
        z.writestr("repo/a.txt", "first")
        z.writestr("repo/inner.zip", b"PK\x03\x04nested")
        z.writestr("repo/.git/config", "hidden")
    (tmp_path / "repo.zip").write_bytes(buf.getvalue())
    text = read_context(str(tmp_path / "repo.zip"))  # a zip on the CLI too
    assert (
        text
        == extract("repo.zip", buf.getvalue())
        == "=== FILE: repo/a.txt ===\nfirst\n\n=== FILE: repo/b.md ===\nsecond"
    )
    with pytest.raises(DocumentError, match=".docx files are not supported"):
        extract("report.docx", buf.getvalue())


def test_caps_on_characters_members_and_cpu(tmp_path):
    with pytest.raises(DocumentTooLarge, match="limit is 10"):
        extract("a.txt", b"x" * 11, Caps(max_chars=10))
    pytest.importorskip("pypdf")
    bomb = make_pdf_bomb()  # a few kilobytes drawing a 100-character line 60**4 times
    with pytest.raises(DocumentTooLarge, match="more than 50,000 characters"):
        extract("bomb.pdf", bomb, Caps(max_chars=50_000))
    with pytest.raises(DocumentTooLarge, match="s of CPU"):
        extract("bomb.pdf", bomb, Caps(max_seconds=0.2))
    import zipfile

    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", compression=zipfile.ZIP_DEFLATED) as z:
        z.writestr("zeros.txt", "0" * 1_000_000)
        for i in range(3):
            z.writestr(f"f{i}.txt", "x")
    with pytest.raises(DocumentTooLarge, match="unpacks to more than"):
        extract("z.zip", buf.getvalue(), Caps(max_unpacked_bytes=100_000))
    with pytest.raises(DocumentTooLarge, match="holds 4 files"):
        extract("z.zip", buf.getvalue(), Caps(max_members=3))
    with pytest.raises(DocumentTooLarge, match="more than 1,000 characters"):
        extract("z.zip", buf.getvalue(), Caps(max_chars=1_000))
    (tmp_path / "d").mkdir()
    (tmp_path / "d" / "big.txt").write_text("y" * 5_000)
    with pytest.raises(DocumentTooLarge):
        read_context(str(tmp_path / "d"), Caps(max_chars=1_000))

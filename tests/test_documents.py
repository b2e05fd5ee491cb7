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

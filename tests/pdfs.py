"""Hand-written PDFs for tests (correct xref tables, no PDF library needed to make them)."""

from __future__ import annotations


def assemble(objects: list[bytes]) -> bytes:
    """A PDF whose object i+1 is ``objects[i]``; object 1 must be the catalog."""
    out, offsets = bytearray(b"%PDF-1.4\n"), []
    for i, body in enumerate(objects, 1):
        offsets.append(len(out))
        out += b"%d 0 obj\n" % i + body + b"\nendobj\n"
    xref = len(out)
    out += b"xref\n0 %d\n0000000000 65535 f \n" % (len(objects) + 1)
    out += b"".join(b"%010d 00000 n \n" % o for o in offsets)
    out += b"trailer\n<< /Size %d /Root 1 0 R >>\nstartxref\n%d\n%%%%EOF\n" % (len(objects) + 1, xref)
    return bytes(out)


def _stream(data: bytes, extra: bytes = b"") -> bytes:
    return b"<< /Length %d %s>>\nstream\n" % (len(data), extra) + data + b"\nendstream"


FONT = b"<< /Type /Font /Subtype /Type1 /BaseFont /Helvetica >>"


def make_pdf(text: str) -> bytes:
    """A one-page PDF with ``text`` on it."""
    return assemble(
        [
            b"<< /Type /Catalog /Pages 2 0 R >>",
            b"<< /Type /Pages /Kids [3 0 R] /Count 1 >>",
            b"<< /Type /Page /Parent 2 0 R /MediaBox [0 0 612 792] /Contents 4 0 R "
            b"/Resources << /Font << /F1 5 0 R >> >> >>",
            _stream(f"BT /F1 12 Tf 72 720 Td ({text}) Tj ET".encode()),
            FONT,
        ]
    )


def make_pdf_bomb(levels: int = 4, fan_out: int = 60) -> bytes:
    """A few kilobytes whose text is ``fan_out ** levels`` copies of a 100-character line: each level is a
    form XObject that draws the level below ``fan_out`` times (the text a reader extracts multiplies)."""
    line = b"BT /F1 12 Tf 72 720 Td (" + b"A" * 100 + b") Tj ET\n"
    objects = [
        b"<< /Type /Catalog /Pages 2 0 R >>",
        b"<< /Type /Pages /Kids [3 0 R] /Count 1 >>",
        b"",  # the page, filled below
        FONT,
        _stream(line, b"/Type /XObject /Subtype /Form /BBox [0 0 612 792] /Resources << /Font << /F1 4 0 R >> >> "),
    ]
    for _ in range(levels - 1):
        below = len(objects)  # the object number of the previous level
        draw = b"/X Do\n" * fan_out
        objects.append(
            _stream(
                draw,
                b"/Type /XObject /Subtype /Form /BBox [0 0 612 792] /Resources << /XObject << /X %d 0 R >> >> " % below,
            )
        )
    top = len(objects)
    objects.append(_stream(b"/X Do\n" * fan_out))
    objects[2] = (
        b"<< /Type /Page /Parent 2 0 R /MediaBox [0 0 612 792] /Contents %d 0 R "
        b"/Resources << /XObject << /X %d 0 R >> >> >>" % (top + 1, top)
    )
    return assemble(objects)

"""``report.pdf``: the compliance report as a PDF, laid out from the ``report.html`` beside it.

The PDF is a print rendering of the HTML page that :mod:`include.compliance.report` builds, so both
have the same sections, tables, notices and images and cannot drift apart. The HTML is our own markup
(every bundle value in it is already escaped); it is parsed with the standard library and turned into
ReportLab flowables (pure Python: no system libraries, which Airflow workers and explainer pods lack).

* Text is set in DejaVu Sans (the TTF that matplotlib, a pinned dependency, ships) so any Unicode in
  the bundle prints; without it the core Helvetica is used and characters outside Latin-1 become "?".
* Images are the bundle's own PNGs, read only when they are regular files inside the bundle folder
  (the same rule as the HTML); each keeps its sha256 caption.
* The output is deterministic (ReportLab's invariant mode: no creation date, fixed document id), like
  the HTML, so identical runs give identical bundles.
* A cell or block longer than :data:`MAX_BLOCK_CHARS` is cut with a note pointing at ``report.html``,
  so one enormous value cannot make a table row taller than a page.
"""

from __future__ import annotations

import html
import os
import re
import stat
import urllib.parse
from dataclasses import dataclass, field
from html.parser import HTMLParser
from pathlib import Path
from typing import Any

PDF_NAME = "report.pdf"
MAX_BLOCK_CHARS = 6000
PRE_LINES_PER_BLOCK = 60

_VOID = frozenset({"meta", "img", "br", "hr", "link", "input", "source", "wbr"})
_SKIP = frozenset({"head", "nav", "script", "style", "title"})
_BLOCK = frozenset(
    {"section", "div", "details", "summary", "h1", "h2", "h3", "h4", "p", "ul", "ol", "li", "table", "pre"}
    | {"figure", "img", "figcaption"}
)
# Colours of the HTML stylesheet's classes, for text.
_CLASS_STYLE = {
    "ok": ("#145a32", True),
    "bad": ("#922b21", True),
    "na": ("#424949", False),
    "muted": ("#707b7c", False),
    "pos": ("#b03a2e", False),
    "neg": ("#1f618d", False),
    "alert": ("#922b21", True),
}


@dataclass
class Node:
    tag: str
    attrs: dict[str, str] = field(default_factory=dict)
    children: list[Node | str] = field(default_factory=list)

    @property
    def classes(self) -> set[str]:
        return set(self.attrs.get("class", "").split())

    def text(self) -> str:
        return "".join(c if isinstance(c, str) else c.text() for c in self.children)


class _TreeBuilder(HTMLParser):
    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.root = Node("document")
        self._stack = [self.root]

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        node = Node(tag, {k: v or "" for k, v in attrs})
        self._stack[-1].children.append(node)
        if tag not in _VOID:
            self._stack.append(node)

    def handle_startendtag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self._stack[-1].children.append(Node(tag, {k: v or "" for k, v in attrs}))

    def handle_endtag(self, tag: str) -> None:
        for depth in range(len(self._stack) - 1, 0, -1):
            if self._stack[depth].tag == tag:
                del self._stack[depth:]
                return

    def handle_data(self, data: str) -> None:
        self._stack[-1].children.append(data)


def parse_html(page: str) -> Node:
    builder = _TreeBuilder()
    builder.feed(page)
    builder.close()
    return builder.root


def _find(node: Node, tag: str) -> Node | None:
    for child in node.children:
        if isinstance(child, Node):
            if child.tag == tag:
                return child
            found = _find(child, tag)
            if found is not None:
                return found
    return None


# --------------------------------------------------------------------------- fonts


@dataclass(frozen=True)
class _Fonts:
    sans: str
    bold: str
    mono: str
    unicode: bool


def _register_fonts() -> _Fonts:
    from reportlab.pdfbase import pdfmetrics
    from reportlab.pdfbase.ttfonts import TTFont

    try:
        import matplotlib

        folder = Path(matplotlib.get_data_path()) / "fonts" / "ttf"
    except Exception:  # matplotlib is pinned; still, a PDF in core fonts beats no PDF
        folder = None
    files = {
        "XacSans": "DejaVuSans.ttf",
        "XacSans-Bold": "DejaVuSans-Bold.ttf",
        "XacSans-Oblique": "DejaVuSans-Oblique.ttf",
        "XacSans-BoldOblique": "DejaVuSans-BoldOblique.ttf",
        "XacMono": "DejaVuSansMono.ttf",
    }
    if folder is None or not all((folder / name).is_file() for name in files.values()):
        return _Fonts("Helvetica", "Helvetica-Bold", "Courier", unicode=False)
    registered = set(pdfmetrics.getRegisteredFontNames())
    for name, file_name in files.items():
        if name not in registered:
            pdfmetrics.registerFont(TTFont(name, str(folder / file_name)))
    pdfmetrics.registerFontFamily(
        "XacSans",
        normal="XacSans",
        bold="XacSans-Bold",
        italic="XacSans-Oblique",
        boldItalic="XacSans-BoldOblique",
    )
    return _Fonts("XacSans", "XacSans-Bold", "XacMono", unicode=True)


# --------------------------------------------------------------------------- layout


class _Renderer:
    def __init__(self, root: Path, fonts: _Fonts) -> None:
        from reportlab.lib import colors
        from reportlab.lib.styles import ParagraphStyle

        self.root = root
        self.fonts = fonts
        self.colors = colors
        base = ParagraphStyle("body", fontName=fonts.sans, fontSize=8.5, leading=11, spaceAfter=3)
        self.styles = {
            "body": base,
            "title": ParagraphStyle(
                "title", parent=base, fontName=fonts.bold, fontSize=16, leading=20, spaceAfter=6
            ),
            "h2": ParagraphStyle(
                "h2",
                parent=base,
                fontName=fonts.bold,
                fontSize=12.5,
                leading=16,
                spaceBefore=12,
                spaceAfter=5,
            ),
            "h3": ParagraphStyle(
                "h3", parent=base, fontName=fonts.bold, fontSize=10, leading=13, spaceBefore=7
            ),
            "cell": ParagraphStyle("cell", parent=base, fontSize=7, leading=8.8, spaceAfter=0),
            "head": ParagraphStyle(
                "head", parent=base, fontName=fonts.bold, fontSize=7, leading=8.8, spaceAfter=0
            ),
            "caption": ParagraphStyle(
                "caption", parent=base, fontSize=6, leading=7.5, textColor=colors.HexColor("#707b7c")
            ),
            "pre": ParagraphStyle(
                "pre",
                parent=base,
                fontName=fonts.mono,
                fontSize=6.5,
                leading=8,
                wordWrap="CJK",  # log lines without spaces still wrap
                backColor=colors.HexColor("#f8f9f9"),
            ),
            "summary": ParagraphStyle("summary", parent=base, fontName=fonts.bold, spaceBefore=4),
        }

    # ---- text

    def _plain(self, text: str) -> str:
        if not self.fonts.unicode:
            text = text.encode("latin-1", "replace").decode("latin-1")
        return html.escape(text, quote=False)

    def inline(self, node: Node | str, *, pre: bool = False) -> str:
        """ReportLab paragraph markup for inline content (text escaped again: the parser unescaped it)."""
        if isinstance(node, str):
            return self._plain(node if pre else re.sub(r"\s+", " ", node))
        if node.tag in _SKIP:
            return ""
        if node.tag == "br":
            return "<br/>"
        inner = "".join(self.inline(child, pre=pre) for child in node.children)
        if node.tag == "code":
            return f'<font face="{self.fonts.mono}">{inner}</font>'
        if node.tag in ("strong", "b", "th"):
            return f"<b>{inner}</b>"
        if node.tag in ("em", "i"):
            return f"<i>{inner}</i>"
        for cls in node.classes:
            if cls in _CLASS_STYLE:
                colour, bold = _CLASS_STYLE[cls]
                inner = f'<font color="{colour}">{inner}</font>'
                return f"<b>{inner}</b>" if bold else inner
        return inner

    def _paragraph(self, markup: str, style: str, *, bullet: str | None = None) -> Any:
        from reportlab.platypus import Paragraph

        if len(markup) > MAX_BLOCK_CHARS:
            # Cut on a tag boundary is not guaranteed: fall back to the plain text of the block.
            plain = re.sub(r"<[^>]+>", "", markup)
            markup = (
                plain[:MAX_BLOCK_CHARS]
                + f' <font color="#922b21">… (cut in the PDF after {MAX_BLOCK_CHARS:,} characters; the full '
                "value is in report.html and in the bundle's files)</font>"
            )
        return Paragraph(markup, self.styles[style], bulletText=bullet)

    # ---- blocks

    def blocks(self, nodes: list[Node | str], width: float, style: str = "body") -> list[Any]:
        """Flowables for a run of children: inline runs become paragraphs, block elements their own."""
        out: list[Any] = []
        run: list[str] = []

        def flush() -> None:
            markup = "".join(run).strip()
            run.clear()
            if markup and re.sub(r"<[^>]+>|&nbsp;|\s", "", markup):
                out.append(self._paragraph(markup, style))

        for child in nodes:
            if isinstance(child, Node) and child.tag in _SKIP:
                continue
            if isinstance(child, Node) and child.tag in _BLOCK:
                flush()
                out.extend(self.block(child, width, style))
            else:
                run.append(self.inline(child))
        flush()
        return out

    def block(self, node: Node, width: float, style: str) -> list[Any]:
        from reportlab.platypus import Spacer, Table, TableStyle

        tag = node.tag
        if tag == "h1":
            return [self._paragraph(self.inline(node), "title")]
        if tag == "h2":
            # A heading paragraph that the document also turns into a PDF outline entry (the HTML's TOC).
            heading = self._paragraph(self.inline(node), "h2")
            heading.outline = " ".join(node.text().split())
            return [heading]
        if tag in ("h3", "h4"):
            return [self._paragraph(self.inline(node), "h3")]
        if tag == "summary":
            return [self._paragraph(self.inline(node), "summary")]
        if tag in ("ul", "ol"):
            items = [c for c in node.children if isinstance(c, Node) and c.tag == "li"]
            return [
                self._paragraph(self.inline(item), "cell" if style == "cell" else "body", bullet="•")
                for item in items
            ]
        if tag == "li":
            return [self._paragraph(self.inline(node), style, bullet="•")]
        if tag == "pre":
            return self.pre(node)
        if tag == "table":
            return [self.table(node, width), Spacer(1, 4)]
        if tag in ("figure", "img"):
            return self.figure(node, width)
        if tag == "figcaption":
            return [self._paragraph(self.inline(node), "caption")]
        if tag == "div" and "notice" in node.classes:
            inner = self.blocks(node.children, width - 12)
            box = Table([[inner]], colWidths=[width])
            box.setStyle(
                TableStyle(
                    [
                        ("BACKGROUND", (0, 0), (-1, -1), self.colors.HexColor("#fef5e7")),
                        ("BOX", (0, 0), (-1, -1), 0.6, self.colors.HexColor("#f5cba7")),
                        ("LEFTPADDING", (0, 0), (-1, -1), 6),
                    ]
                )
            )
            return [box, Spacer(1, 6)]
        # section, details, div, p and anything else: their children, with p as one paragraph run
        return self.blocks(node.children, width, style)

    def pre(self, node: Node) -> list[Any]:
        lines = node.text().split("\n")
        out = []
        for start in range(0, len(lines), PRE_LINES_PER_BLOCK):
            chunk = lines[start : start + PRE_LINES_PER_BLOCK]
            markup = "<br/>".join(self._plain(line).replace("  ", "&nbsp; ") for line in chunk)
            out.append(self._paragraph(markup or "&nbsp;", "pre"))
        return out

    def figure(self, node: Node, width: float) -> list[Any]:
        from reportlab.platypus import Image

        img = node if node.tag == "img" else _find(node, "img")
        out: list[Any] = []
        if img is not None:
            rel = urllib.parse.unquote(img.attrs.get("src", ""))
            path = _regular_inside(self.root, rel)
            try:
                if path is None:
                    raise OSError("not a regular file inside the bundle")
                from PIL import Image as PILImage

                with PILImage.open(path) as picture:
                    px_w, px_h = picture.size
                declared = float(img.attrs.get("width") or px_w)
                # CSS pixels to points (96 px = 72 pt), never wider than the space available.
                draw_w = min(declared * 0.75, width)
                draw_h = draw_w * px_h / max(px_w, 1)
                if draw_h > 480:
                    draw_w, draw_h = draw_w * 480 / draw_h, 480
                out.append(Image(str(path), width=draw_w, height=draw_h))
            except Exception as exc:  # a broken or hostile image must not stop the report
                out.append(
                    self._paragraph(self._plain(f"[image {rel} could not be shown: {exc}]"), "caption")
                )
        caption = _find(node, "figcaption") if node.tag == "figure" else None
        if caption is not None:
            out.append(self._paragraph(self.inline(caption), "caption"))
        return out

    def table(self, node: Node, width: float) -> Any:
        from reportlab.platypus import Table, TableStyle

        rows: list[list[Node]] = []
        header_rows = 0
        for part in node.children:
            if not isinstance(part, Node):
                continue
            trs = (
                [part]
                if part.tag == "tr"
                else [c for c in part.children if isinstance(c, Node) and c.tag == "tr"]
            )
            for tr in trs:
                cells = [c for c in tr.children if isinstance(c, Node) and c.tag in ("td", "th")]
                if cells:
                    rows.append(cells)
                    if part.tag == "thead":
                        header_rows += 1
        if not rows:
            return self._paragraph("", "body")
        columns = max(len(r) for r in rows)
        kv = "kv" in node.classes
        widths = self._column_widths(rows, columns, width, kv)
        data = []
        for r_index, row in enumerate(rows):
            line = []
            for c_index in range(columns):
                if c_index >= len(row):
                    line.append("")
                    continue
                cell = row[c_index]
                colspan = int(cell.attrs.get("colspan") or 1)
                cell_width = sum(widths[c_index : c_index + colspan]) - 6
                header = r_index < header_rows or (kv and cell.tag == "th")
                line.append(self.blocks(cell.children, cell_width, "head" if header else "cell"))
            data.append(line)
        table = Table(data, colWidths=widths, repeatRows=header_rows, splitInRow=1, hAlign="LEFT")
        grid = self.colors.HexColor("#d5d8dc")
        commands: list[tuple[Any, ...]] = [
            ("GRID", (0, 0), (-1, -1), 0.4, grid),
            ("VALIGN", (0, 0), (-1, -1), "TOP"),
            ("LEFTPADDING", (0, 0), (-1, -1), 3),
            ("RIGHTPADDING", (0, 0), (-1, -1), 3),
            ("TOPPADDING", (0, 0), (-1, -1), 2),
            ("BOTTOMPADDING", (0, 0), (-1, -1), 2),
        ]
        if header_rows:
            commands.append(("BACKGROUND", (0, 0), (-1, header_rows - 1), self.colors.HexColor("#f2f3f4")))
        if kv:
            commands.append(("BACKGROUND", (0, 0), (0, -1), self.colors.HexColor("#f8f9f9")))
        for r_index, row in enumerate(rows):  # the "none" row of an empty table spans all columns
            if len(row) == 1 and columns > 1 and row[0].attrs.get("colspan"):
                commands.append(("SPAN", (0, r_index), (-1, r_index)))
        table.setStyle(TableStyle(commands))
        return table

    @staticmethod
    def _column_widths(rows: list[list[Node]], columns: int, width: float, kv: bool) -> list[float]:
        """Widths in points: every column gets its longest word (so numbers never break), the rest of
        the page goes to the columns with the most text."""
        if kv and columns == 2:
            return [width * 0.26, width * 0.74]
        char = 4.1  # average advance of a 7 pt DejaVu Sans character, in points
        minimum = [24.0] * columns
        desire = [24.0] * columns
        for row in rows:
            for index, cell in enumerate(row[:columns]):
                if int(cell.attrs.get("colspan") or 1) > 1:
                    continue
                text = cell.text()
                longest = max((len(word) for word in text.split()), default=0)
                minimum[index] = max(minimum[index], min(longest * char + 8, width * 0.3))
                wanted = min(len(text), 90) * char + 8
                if _find(cell, "img") is not None:
                    wanted = max(wanted, 200.0)
                    minimum[index] = max(minimum[index], 120.0)
                desire[index] = max(desire[index], wanted, minimum[index])
        if sum(minimum) >= width:
            return [width * m / sum(minimum) for m in minimum]
        spare = width - sum(minimum)
        extra = [d - m for d, m in zip(desire, minimum, strict=True)]
        if sum(extra) <= spare:  # everything fits: share what is left in proportion to the text
            return [d + (width - sum(desire)) * d / sum(desire) for d in desire]
        return [m + spare * e / sum(extra) for m, e in zip(minimum, extra, strict=True)]


def _regular_inside(root: Path, rel: str) -> Path | None:
    """``root/rel`` when every component is a real entry (no symlink) and the last a regular file."""
    if not rel or rel.startswith("/") or "\\" in rel:
        return None
    path = root
    for part in rel.split("/"):
        if part in ("", ".", ".."):
            return None
        path = path / part
        try:
            mode = os.lstat(path).st_mode
        except OSError:
            return None
        if stat.S_ISLNK(mode):
            return None
    return path if path.is_file() else None


def render_pdf(bundle_root: Path, page_html: str, *, title: str) -> Path:
    """Write ``report.pdf`` into ``bundle_root`` from the report's HTML; return its path.

    Written to a temporary name and renamed, so a failure never leaves a half PDF to be signed.
    """
    from reportlab.lib.pagesizes import A4, landscape
    from reportlab.lib.units import mm
    from reportlab.platypus import SimpleDocTemplate

    root = Path(bundle_root)
    fonts = _register_fonts()
    renderer = _Renderer(root, fonts)
    tree = parse_html(page_html)
    body = _find(tree, "body") or tree
    page_size = landscape(A4)
    margin = 14 * mm
    width = page_size[0] - 2 * margin

    story = renderer.blocks(body.children, width)

    class Document(SimpleDocTemplate):
        def afterFlowable(self, flowable: Any) -> None:
            outline = getattr(flowable, "outline", None)
            if outline:
                key = f"section-{len(self._outline_keys)}"
                self._outline_keys.append(key)
                self.canv.bookmarkPage(key)
                self.canv.addOutlineEntry(outline, key, level=0)

    def footer(canvas: Any, doc: Any) -> None:
        canvas.saveState()
        canvas.setFont(fonts.sans, 6.5)
        canvas.setFillColorRGB(0.44, 0.48, 0.49)
        shown = title if fonts.unicode else title.encode("latin-1", "replace").decode("latin-1")
        canvas.drawString(margin, 8 * mm, shown[:150])
        canvas.drawRightString(page_size[0] - margin, 8 * mm, f"page {doc.page}")
        canvas.restoreState()

    target = root / PDF_NAME
    tmp = target.with_name(f".{PDF_NAME}.tmp")
    document = Document(
        str(tmp),
        pagesize=page_size,
        leftMargin=margin,
        rightMargin=margin,
        topMargin=margin,
        bottomMargin=margin + 4 * mm,
        title=title,
        author="Explainability-as-Code",
        subject="Compliance report of one explainer run (rendered from report.html)",
        creator="xac report",
        invariant=1,
    )
    document._outline_keys = []  # type: ignore[attr-defined]
    try:
        document.build(story, onFirstPage=footer, onLaterPages=footer)
        tmp.replace(target)
    finally:
        tmp.unlink(missing_ok=True)
    return target

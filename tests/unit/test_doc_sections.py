"""bench/doc_sections.replace_marked: a report rewrites only the text between its markers."""

from __future__ import annotations

from bench.doc_sections import replace_marked

BEGIN, END = "<!-- x:begin -->", "<!-- x:end -->"


def _never(text: str, section: str) -> str:
    raise AssertionError("the markers are there: no first-time placement")


def test_only_the_marked_text_is_replaced() -> None:
    doc = f"# Page\nkept above\n{BEGIN}\nold figures\n{END}\nkept below {BEGIN[:4]}\n"
    assert replace_marked(doc, BEGIN, END, "new figures", _never) == \
        f"# Page\nkept above\n{BEGIN}\nnew figures\n{END}\nkept below {BEGIN[:4]}\n"


def test_the_first_time_the_report_places_its_section() -> None:
    doc = "# Page\n<!-- GENERATED -->\n"
    placed = replace_marked(doc, BEGIN, END, "figures",
                            lambda text, section: text.replace("<!-- GENERATED", section + "\n<!-- GENERATED"))
    assert placed == f"# Page\n{BEGIN}\nfigures\n{END}\n<!-- GENERATED -->\n"
    assert replace_marked(placed, BEGIN, END, "again", _never).count(BEGIN) == 1

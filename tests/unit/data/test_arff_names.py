"""ARFF attribute names by ARFF's quoting rules (quotes, backslash escapes), matched against the
Mulan XML; messages print names as written, not as repr (which doubles every backslash)."""

from __future__ import annotations

import pytest

from mlcdist.data.sources.arff import list_arff, split_name
from mlcdist.data.sources.common import AnnotationError

ARFF = r"""@relation 'quoting \'test\''
@attribute f1 numeric
@attribute 'a feature, with comma' REAL
@attribute "pct\%" numeric
@attribute 'It\'s' {0,1}
@attribute "say \"hi\"" {0,1}
@attribute 'back\\slash' {0,1}
@attribute "mixed 'q'"{0,1}
@data
1,2,3,1,0,1,0
4,5,6,0,1,1,1
"""
XML = """<?xml version="1.0" encoding="utf-8"?>
<labels xmlns="http://mulan.sourceforge.net/labels">
<label name="It&apos;s"/><label name="say &quot;hi&quot;"/><label name="back\\slash"/>
<labels><label name="mixed 'q'"/></labels>
</labels>
"""


@pytest.mark.parametrize("text,name,rest", [
    ("f1 numeric", "f1", "numeric"),
    ("  'two words'   REAL", "two words", "REAL"),
    (r"'It\'s' {0,1}", "It's", "{0,1}"),
    (r'"say \"hi\"" {0,1}', 'say "hi"', "{0,1}"),
    (r"'back\\slash' numeric", "back\\slash", "numeric"),
    (r"'tab\there\%' numeric", "tab\there%", "numeric"),
    (r"""'double " inside' numeric""", 'double " inside', "numeric"),
    ("bare{0,1}", "bare", "{0,1}"),
])
def test_split_name_follows_arff_quoting(text, name, rest):
    assert split_name(text) == (name, rest)


def test_quoted_and_escaped_names_match_the_xml(tmp_path):
    (tmp_path / "q.arff").write_text(ARFF)
    (tmp_path / "q.xml").write_text(XML)
    listing = list_arff(tmp_path / "q.arff", tmp_path / "q.xml")
    assert listing.class_names == ["It's", 'say "hi"', "back\\slash", "mixed 'q'"]
    assert listing.feature_dim == 3
    assert [spec.labels for spec in listing.specs] == [(0, 2), (1, 2, 3)]


def test_messages_print_names_as_written(tmp_path):
    (tmp_path / "q.arff").write_text(ARFF)
    (tmp_path / "q.xml").write_text(XML.replace("back\\slash", "back\\\\slash"))  # XML says back\\slash
    with pytest.raises(AnnotationError) as err:
        list_arff(tmp_path / "q.arff", tmp_path / "q.xml")
    message = str(err.value)
    assert "label 'back\\\\slash' is not an attribute" in message  # two backslashes, as in the XML
    assert "its closest attribute is 'back\\slash'" in message  # one, as the ARFF means it
    (tmp_path / "q.xml").write_text(XML)
    (tmp_path / "q.arff").write_text(ARFF + "1,2,3,7,0,1,0\n")
    with pytest.raises(AnnotationError, match="data row 3, label 'It's' is 7.0"):
        list_arff(tmp_path / "q.arff", tmp_path / "q.xml")


def test_unclosed_quote_names_the_line(tmp_path):
    (tmp_path / "q.arff").write_text(ARFF.replace(r"'It\'s'", r"'It\'s"))
    (tmp_path / "q.xml").write_text(XML)
    with pytest.raises(AnnotationError, match=r"q\.arff:5: cannot parse attribute line @attribute 'It\\'s "
                                              r"\{0,1\} \(the name's ' quote is never closed\)"):
        list_arff(tmp_path / "q.arff", tmp_path / "q.xml")

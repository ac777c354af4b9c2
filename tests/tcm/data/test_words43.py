"""The task 4.3 cropped-word label form: quotes, escapes, confidences, errors naming file and line."""

import pytest

from tcm.data.formats import words43
from tcm.types import AnnotationError


def test_escaped_quotes_and_backslashes_round_trip():
    data = b'word_1.png, "Genaxis Theatre"\r\nword_2.png, "\\"HOTEL"\r\nword_3.png, "a\\\\b, c"\r\n'
    labels = words43.parse(data, "gt.txt")
    assert [(w.name, w.text, w.line) for w in labels] == [
        ("word_1.png", "Genaxis Theatre", 1),
        ("word_2.png", '"HOTEL', 2),
        ("word_3.png", "a\\b, c", 3),
    ]
    assert words43.write(labels) == data


def test_confidence_after_the_text():
    (label,) = words43.parse(b'word_7.png, "06", 0.25\n', "pred.txt")
    assert (label.text, label.confidence) == ("06", 0.25)
    assert words43.format_line(label) == 'word_7.png, "06", 0.2500'


@pytest.mark.parametrize(
    "line, reason",
    [
        ("word_1.png", "expected"),
        ('word_1.png, Genaxis"', "double-quoted"),
        ('word_1.png, "open', "closing quote"),
        ('word_1.png, "a" b', "unexpected"),
        ('word_1.png, "a", high', "not a number"),
    ],
)
def test_malformed_lines_name_file_and_line(line, reason):
    with pytest.raises(AnnotationError) as err:
        words43.parse(f'word_0.png, "ok"\n{line}\n'.encode(), "pred.txt")
    assert str(err.value).startswith("pred.txt:2: ") and reason in str(err.value)


def test_a_crop_labelled_twice_is_an_error():
    with pytest.raises(AnnotationError, match="gt.txt:2: word_1.png already labelled on line 1"):
        words43.parse(b'word_1.png, "a"\nword_1.png, "b"\n', "gt.txt")

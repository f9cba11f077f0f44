"""Glyphs: Levenshtein, the template reader, and exact rewards of edited renders.

reward = 1 - levenshtein(read, target) / max(len(read), len(target), 1)
"""

from collections import Counter

import pytest
import torch

from dflow.tasks import GlyphsTask, Prompt
from dflow.tasks.glyphs import levenshtein, similarity
from dflow.tasks.glyphs.font import FONT_CHARS, glyph_bitmaps, min_hamming_distance


@pytest.mark.parametrize(
    ("a", "b", "d"),
    [
        ("", "", 0),
        ("ABC", "", 3),
        ("", "AB", 2),
        ("ABC", "ABC", 0),
        ("ABCD", "ACD", 1),  # one deletion
        ("ABCD", "AXCD", 1),  # one substitution
        ("ABC", "ABCD", 1),  # one insertion
        ("ABCD", "BADC", 3),  # no transpositions in Levenshtein
        ("kitten", "sitting", 3),
        ("flaw", "lawn", 2),
        ("intention", "execution", 5),
    ],
)
def test_levenshtein_hand_cases(a, b, d):
    assert levenshtein(a, b) == d == levenshtein(b, a)


def test_similarity():
    assert similarity("ACD", "ABCD") == 0.75
    assert similarity("", "") == 1.0
    assert similarity("", "ABC") == 0.0
    assert similarity("ABCDE", "ABC") == pytest.approx(1 - 2 / 5)


def test_font_and_default_alphabet():
    assert len(FONT_CHARS) == 26 and glyph_bitmaps(FONT_CHARS).shape == (26, 5, 3)
    assert min_hamming_distance("ABCEIJLMOSXZ") >= 3  # one flipped pixel never changes a read


def _image(task: GlyphsTask, text: str) -> torch.Tensor:
    return torch.from_numpy(task.reader.render(text)).view(1, -1)


def _cell(task: GlyphsTask, x: torch.Tensor, k: int) -> torch.Tensor:
    """View of cell ``k`` of a single image ``[1, L]`` (writes go through)."""
    lay = task.reader.layout
    return x.view(task.height, task.width)[lay.cell_rows, lay.cell_columns(k)]


def _score(task: GlyphsTask, x: torch.Tensor, target: str) -> tuple[float, bool, str]:
    p = [Prompt(target, f"len{len(target)}", target)]
    return task.reward(x, p).item(), bool(task.correct(x, p).item()), task.read(x)[0]


def test_blank_one_letter(glyphs_task):
    x = _image(glyphs_task, "ABCE")
    _cell(glyphs_task, x, 1).zero_()  # reads "ACE": 1 deletion of 4
    assert _score(glyphs_task, x, "ABCE") == (0.75, False, "ACE")


def test_change_one_letter(glyphs_task):
    x = _image(glyphs_task, "ABCE")
    _cell(glyphs_task, x, 2).copy_(torch.from_numpy(glyph_bitmaps("Z")[0]).long())
    assert _score(glyphs_task, x, "ABCE") == (0.75, False, "ABZE")


def test_unreadable_letter_is_a_question_mark(glyphs_task):
    x = _image(glyphs_task, "ABCE")
    _cell(glyphs_task, x, 0).fill_(1)  # a solid block matches no glyph within 1 pixel
    assert _score(glyphs_task, x, "ABCE") == (0.75, False, "?BCE")


def test_one_flipped_pixel_is_tolerated(glyphs_task):
    x = _image(glyphs_task, "MOS")
    cell = _cell(glyphs_task, x, 1)
    cell[2, 1] = 1 - cell[2, 1]
    assert _score(glyphs_task, x, "MOS") == (1.0, True, "MOS")


def test_extra_letter_and_empty_image(glyphs_task):
    x = _image(glyphs_task, "JLMX")
    assert _score(glyphs_task, x, "JLM") == (0.75, False, "JLMX")  # 1 insertion, max len 4
    empty = torch.zeros(1, glyphs_task.seq_len, dtype=torch.long)
    assert _score(glyphs_task, empty, "JLM") == (0.0, False, "")
    assert _score(glyphs_task, _image(glyphs_task, "MJL"), "JLM")[0] == pytest.approx(1 / 3)


def test_ink_outside_cells_is_ignored(glyphs_task):
    x = _image(glyphs_task, "AB")
    x.view(glyphs_task.height, glyphs_task.width)[0, :] = 1  # top margin row
    assert _score(glyphs_task, x, "AB") == (1.0, True, "AB")


def test_layout_and_prompt_tokens(glyphs_task):
    assert (glyphs_task.height, glyphs_task.width) == (7, 17)
    p = Prompt("CAB", "len3", "CAB")
    ids = glyphs_task.encode_prompts([p])[0].tolist()
    a = glyphs_task.alphabet
    assert ids == [a.index("C") + 1, a.index("A") + 1, a.index("B") + 1, 0]
    with pytest.raises(ValueError, match="outside"):
        glyphs_task.encode_prompts([Prompt("CAT", "len3", "CAT")])  # T is not in the alphabet
    with pytest.raises(ValueError, match="spec"):
        glyphs_task.encode_prompts([Prompt("ABCEA", "len4", "ABCEA")])  # too long


def test_categories_and_held_out_strings(glyphs_task):
    assert glyphs_task.categories == ("len2", "len3", "len4")
    for split in ("pretrain", "rl", "test"):
        for p in glyphs_task.prompts(split):
            assert p.text == p.spec and p.category == f"len{len(p.text)}"
        texts = {p.text for p in glyphs_task.prompts(split)}
        assert len(texts) == len(glyphs_task.prompts(split))  # no duplicates
    # len2 has 12**2 = 144 strings: 36 test + 108 pretraining, none left for RL
    assert Counter(p.category for p in glyphs_task.prompts("rl")) == {"len3": 200, "len4": 200}


def test_constructor_validation():
    with pytest.raises(ValueError, match="alphabet 'ABD'"):
        GlyphsTask(alphabet="ABD")  # B and D differ in 2 pixels only
    with pytest.raises(ValueError, match="alphabet character 'a'"):
        GlyphsTask(alphabet="ab")
    with pytest.raises(ValueError, match="alphabet"):
        GlyphsTask(alphabet="AA")
    with pytest.raises(ValueError, match="max_length"):
        GlyphsTask(max_length=9)
    with pytest.raises(ValueError, match="max_length"):
        GlyphsTask(min_length=3, max_length=2)
    assert GlyphsTask(alphabet="ABD", max_read_distance=0).reader.max_distance == 0


def test_other_lengths():
    t = GlyphsTask(min_length=1, max_length=6)
    assert t.width == 25 and t.prompt_len == 6 and len(t.categories) == 6
    b = t.sample_data(30, torch.Generator().manual_seed(0))
    assert torch.equal(t.reward(b.x1, b.prompts), torch.ones(30))

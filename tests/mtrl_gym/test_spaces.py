import pytest
from gymnasium.vector.utils import batch_space

from mtrl_gym import TextSpace


def test_text_space__accepts_any_unicode_up_to_max_length():
    space = TextSpace(max_length=12)
    for text in ["", "plain ascii!", "tab\tnew\nline", "émoji 🤖", "\x00\ud800", "中文" * 6]:
        assert space.contains(text), text
    assert not space.contains("x" * 13)
    assert not space.contains(b"bytes") and not space.contains(None) and not space.contains(3)


def test_text_space__samples_are_seeded_members():
    a, b = TextSpace(1000, seed=3), TextSpace(1000, seed=3)
    samples = [a.sample() for _ in range(50)]
    assert samples == [b.sample() for _ in range(50)]
    assert all(a.contains(s) for s in samples)
    assert len(set(samples)) > 40
    assert any(ord(c) > 127 for s in samples for c in s)  # not only ASCII
    assert TextSpace(3, seed=0).sample().__len__() <= 3


def test_text_space__equality_batching_and_errors():
    assert TextSpace(5) == TextSpace(5) != TextSpace(6)
    batched = batch_space(TextSpace(5), 3)
    assert len(batched.spaces) == 3 and batched.contains(("a", "b", "c"))
    with pytest.raises(ValueError, match="max_length"):
        TextSpace(-1)
    with pytest.raises(NotImplementedError):
        TextSpace(5).sample(mask=1)

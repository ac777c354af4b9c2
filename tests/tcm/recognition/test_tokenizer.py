"""Token ids in the released layout, padding, greedy decoding and its confidence."""

import math

import pytest
import torch

from tcm.recognition.charset import CHARSET_94
from tcm.recognition.tokenizer import Tokenizer


def test_ids_follow_the_released_layout():
    tok = Tokenizer(CHARSET_94)
    assert (tok.eos_id, tok.bos_id, tok.pad_id, len(tok), tok.num_classes) == (0, 95, 96, 97, 95)
    assert tok.itos[1] == "0" and tok.itos[11] == "a" and tok.itos[37] == "A" and tok.itos[94] == "~"


def test_encode_pads_to_the_longest_label():
    tok = Tokenizer("abc")  # [E]=0 a=1 b=2 c=3 [B]=4 [P]=5
    ids = tok.encode(["cab", "a"])
    assert ids.tolist() == [[4, 3, 1, 2, 0], [4, 1, 0, 5, 5]]


def test_encode_names_the_label_and_character_outside_the_charset():
    with pytest.raises(ValueError, match=r"'aé'.*'é'"):
        Tokenizer("abc").encode(["ab", "aé"])


def logits_from_probs(probs):
    return torch.tensor(probs).log()[None]  # (1, T, C): softmax(log p) = p


def test_decode_cuts_at_the_first_end_token_and_multiplies_probabilities_up_to_it():
    tok = Tokenizer("ab")  # classes: [E], a, b
    texts, conf = tok.decode(
        logits_from_probs([[0.1, 0.8, 0.1], [0.2, 0.1, 0.7], [0.6, 0.3, 0.1], [0.1, 0.1, 0.8]])
    )
    assert texts == ["ab"]  # the 'b' after [E] is dropped
    assert math.isclose(conf[0], 0.8 * 0.7 * 0.6, rel_tol=1e-5)  # [E]'s probability included, later steps not


def test_decode_without_end_token_uses_every_step():
    tok = Tokenizer("ab")
    texts, conf = tok.decode(logits_from_probs([[0.2, 0.5, 0.3], [0.1, 0.3, 0.6]]))
    assert texts == ["ab"] and math.isclose(conf[0], 0.5 * 0.6, rel_tol=1e-5)


def test_decode_checks_the_class_count():
    with pytest.raises(ValueError, match="classes"):
        Tokenizer("ab").decode(torch.zeros(1, 2, 5))

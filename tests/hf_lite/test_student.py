"""Student initialisation from teacher layers."""

from __future__ import annotations

import pytest
import torch
from transformers import AutoModelForSequenceClassification

from hf_lite.student import init_student_from_teacher, select_layers
from hf_lite.testing import build_tiny_model


def test_select_layers():
    assert select_layers("every_other", 6) == [0, 2, 4]
    assert (
        select_layers(2, 6) == [0, 5] and select_layers(1, 6) == [5] and select_layers(6, 6) == list(range(6))
    )
    assert select_layers([4, 1], 6) == [1, 4]
    with pytest.raises(ValueError, match=r"layers \[6\] are out of range: the teacher has layers 0..5"):
        select_layers([0, 6], 6)
    with pytest.raises(ValueError, match=r"layers=7 must be between 1 and the teacher's 6 layers"):
        select_layers(7, 6)
    with pytest.raises(ValueError, match="repeats an index"):
        select_layers([1, 1], 6)
    with pytest.raises(ValueError, match="keeps no layer"):
        select_layers([], 6)
    with pytest.raises(ValueError, match="layers='half' is not understood"):
        select_layers("half", 6)
    with pytest.raises(TypeError, match="layers must be"):
        select_layers(2.5, 6)


def test_student_copies_the_chosen_teacher_layers_and_reloads(tmp_path):
    teacher, tok = build_tiny_model("bert", "sequence-classification", num_hidden_layers=4)
    teacher.eval()
    before = {k: v.clone() for k, v in teacher.state_dict().items()}
    student = init_student_from_teacher(teacher, layers=[0, 3], output_dir=tmp_path, tokenizer=tok)
    # The teacher is untouched; the student's layer i is the teacher's layer keep[i].
    assert all(torch.equal(v, teacher.state_dict()[k]) for k, v in before.items())
    s, t = student.state_dict(), teacher.state_dict()
    for new, old in [(0, 0), (1, 3)]:
        key = "bert.encoder.layer.{}.attention.self.query.weight"
        assert torch.equal(s[key.format(new)], t[key.format(old)])
    assert torch.equal(s["classifier.weight"], t["classifier.weight"])
    assert student.training and all(p.requires_grad for p in student.parameters())
    reloaded = AutoModelForSequenceClassification.from_pretrained(tmp_path)
    assert reloaded.config.num_hidden_layers == 2
    ids = tok(["the cat sees a dog"], return_tensors="pt")
    with torch.no_grad():
        torch.testing.assert_close(reloaded(**ids).logits, student.eval()(**ids).logits)


def test_a_peft_teacher_is_refused():
    from peft import LoraConfig, get_peft_model

    teacher, _ = build_tiny_model("llama")
    with pytest.raises(ValueError, match=r"merge the adapter first"):
        init_student_from_teacher(get_peft_model(teacher, LoraConfig(target_modules=["q_proj"])))

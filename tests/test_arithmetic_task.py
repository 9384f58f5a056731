"""The embedded arithmetic task: determinism, the held-out split, the record formats and
the RL prompt-file reader's errors (jaxlm.data.arithmetic_task). No JAX needed."""

import hashlib
import re

import pytest

from jaxlm.data import arithmetic_task as task
from jaxlm.data.chat import parse_conversation
from jaxlm.errors import InputError


def test_same_seed_same_examples_and_other_seed_differs():
    a = task.examples("train", 200, seed=3, max_digits=3, ops="+-*")
    assert a == task.examples("train", 200, seed=3, max_digits=3, ops="+-*")
    assert a != task.examples("train", 200, seed=4, max_digits=3, ops="+-*")
    # A longer draw starts with the shorter one: count only cuts the stream.
    assert task.examples("train", 300, seed=3, max_digits=3, ops="+-*")[:200] == a


def test_pinned_first_examples():
    """The stream is sha256-based: these exact problems on every machine and version."""
    problems = [e["problem"] for e in task.examples("train", 5, seed=0, max_digits=3, ops="+-*")]
    assert problems == ["84*8", "73+44", "76*2", "614*4", "48+73"]


def test_train_and_held_out_are_disjoint_and_sized_by_the_fraction():
    train = task.examples("train", 4000, seed=0, max_digits=3)
    held_out = task.examples("held_out", 1000, seed=0, max_digits=3)
    assert not {e["problem"] for e in train} & {e["problem"] for e in held_out}
    # Commuted twins share a side ("345+12" is keyed "12+345").
    keys = {task.split_key(e["problem"]) for e in train}
    assert not keys & {task.split_key(e["problem"]) for e in held_out}
    # The split of a fresh stream of problems, whatever the side asked for.
    candidates = [task._candidate(7, 3, "+-", i) for i in range(5000)]
    share = sum(task.is_held_out(p, 0.1) for p in candidates) / len(candidates)
    assert 0.085 < share < 0.115
    assert all(task.is_held_out(e["problem"], 0.1) for e in held_out)
    assert not any(task.is_held_out(e["problem"], 0.1) for e in train)


def test_held_out_is_the_hash_of_the_split_key():
    key = int.from_bytes(hashlib.sha256(b"12+345").digest()[:8], "big")
    assert task.is_held_out("12+345", 0.3) == (key < 0.3 * 2**64)
    assert task.split_key("345+12") == "12+345"
    assert task.split_key("7*123") == "7*123" and task.split_key("123*7") == "7*123"
    assert task.split_key("345-12") == "345-12"  # not commutative


def test_problem_shapes():
    examples = task.examples("train", 2000, seed=1, max_digits=2, ops="+-*")
    ops = {e["problem"][re.search(r"[-+*]", e["problem"]).start()] for e in examples}
    assert ops == {"+", "-", "*"}
    for e in examples:
        a, op, b = re.fullmatch(r"(\d+)([-+*])(\d+)", e["problem"]).groups()
        assert len(a) <= 2 and len(b) <= 2
        assert str(int(a)) == a and str(int(b)) == b  # no leading zeros
        if op == "-":
            assert int(a) >= int(b)
        if op == "*":
            assert 2 <= int(b) <= 9
        assert e["answer"] == str(eval(e["problem"]))
        assert not e["answer"].startswith("-")
    # One-digit operands are as likely as two-digit ones.
    one_digit = sum(len(re.match(r"\d+", e["problem"])[0]) == 1 for e in examples)
    assert 0.4 < one_digit / len(examples) < 0.6


def test_example_format():
    assert task.example("12+345") == {
        "prompt": "12+345=",
        "messages": [{"role": "user", "content": "What is 12 + 345?"}],
        "answer": "357",
        "problem": "12+345",
    }
    assert task.example("123*7")["messages"][0]["content"] == "What is 123 * 7?"
    assert task.example("52-17")["answer"] == "35"


def test_unique_keeps_each_problem_once_and_gives_up_when_the_split_runs_out():
    held_out = task.examples("held_out", 300, seed=0, max_digits=2, unique=True)
    assert len({e["problem"] for e in held_out}) == 300
    drawn = task.examples("held_out", 300, seed=0, max_digits=2)
    assert len({e["problem"] for e in drawn}) < 300  # one-digit problems recur
    # One digit, "+" only: 100 problems, about 10 of them held out.
    with pytest.raises(InputError, match=r"only \d+ distinct held_out problems"):
        task.examples("held_out", 50, seed=0, max_digits=1, ops="+", unique=True)


@pytest.mark.parametrize(
    ("kwargs", "argument"),
    [
        ({"split": "validation"}, "split"),
        ({"count": -1}, "count"),
        ({"count": 1.5}, "count"),
        ({"seed": "0"}, "seed"),
        ({"max_digits": 0}, "max_digits"),
        ({"max_digits": 19}, "max_digits"),
        ({"ops": "+/"}, "ops"),
        ({"ops": ""}, "ops"),
        ({"ops": "++"}, "ops"),
        ({"held_out_fraction": 0.0}, "held_out_fraction"),
        ({"held_out_fraction": 1.0}, "held_out_fraction"),
    ],
)
def test_bad_arguments_name_the_argument(kwargs, argument):
    arguments = {"split": "train", "count": 3, "seed": 0, "max_digits": 2} | kwargs
    split, count = arguments.pop("split"), arguments.pop("count")
    with pytest.raises(InputError, match=rf"^arithmetic task: {argument} must"):
        task.examples(split, count, **arguments)


@pytest.mark.parametrize(
    ("problem", "working", "answer"),
    [
        ("12+345", "12+345: 2+5=7, 1+4=5, 0+3=3", "357"),
        ("58+67", "58+67: 8+7=15, 5+6+1=12", "125"),
        ("999+1", "999+1: 9+1=10, 9+0+1=10, 9+0+1=10", "1000"),
        ("345-12", "345-12: 5-2=3, 4-1=3, 3-0=3", "333"),
        ("52-17", "52-17: 12-7=5, 5-1-1=3", "35"),
        ("100-1", "100-1: 10-1=9, 10-0-1=9, 1-0-1=0", "99"),
        ("123*7", "123*7: 3*7=21, 2*7+2=16, 1*7+1=8", "861"),
        ("0-0", "0-0: 0-0=0", "0"),
    ],
)
def test_working_and_answer(problem, working, answer):
    assert task.working(problem) == working
    assert task.solve(problem) == answer


def test_sft_and_text_records():
    example = task.example("12+345")
    assert task.sft_record(example) == {
        "conversations": [
            {"role": "user", "content": "What is 12 + 345?"},
            {"role": "assistant", "content": "357"},
        ]
    }
    think = task.sft_record(example, think=True)
    assert think["conversations"][-1]["content"] == (
        "<think>12+345: 2+5=7, 1+4=5, 0+3=3</think>357"
    )
    # jaxlm's SFT reader takes them as they are.
    assert [m.role for m in parse_conversation(think)] == ["user", "assistant"]
    assert task.text_record(example) == {"text": "12+345=357"}
    # The record does not share the example's message dicts.
    task.sft_record(example)["conversations"][0]["content"] = "changed"
    assert example["messages"][0]["content"] == "What is 12 + 345?"


def test_prompt_records_have_one_form():
    example = task.example("12+345")
    assert task.prompt_record(example) == {
        "prompt": "12+345=",
        "answer": "357",
        "problem": "12+345",
    }
    assert task.prompt_record(example, chat=True) == {
        "messages": [{"role": "user", "content": "What is 12 + 345?"}],
        "answer": "357",
        "problem": "12+345",
    }


def test_bad_problem_text():
    with pytest.raises(InputError, match=r"'12\+' is not a problem"):
        task.solve("12+")

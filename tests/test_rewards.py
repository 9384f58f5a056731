"""RL rewards (jaxlm.training.rewards): the built-in components on hand-written
completions, DAPO's overlong penalty against a hand-computed table, the spec syntax,
functions of one's own, and the errors of broken ones. No JAX needed."""

import math
import textwrap

import numpy as np
import pytest

from jaxlm.errors import InputError
from jaxlm.training.rewards import (
    BUILT_INS,
    RewardError,
    Rewards,
    Sample,
    extract_answer,
    overlong_penalty,
    parse_reward_spec,
)


def sample(completion, answer="357", *, num_tokens=4, truncated=False, max_tokens=100):
    return Sample(
        prompt="12+345=",
        completion=completion,
        example={"answer": answer},
        num_tokens=num_tokens,
        truncated=truncated,
        max_tokens=max_tokens,
    )


def component(name, samples, **kwargs):
    return Rewards(name, **kwargs).score(samples)[1][name].tolist()


@pytest.mark.parametrize(
    ("completion", "expected"),
    [
        ("357", 1.0),
        ("  357\n", 1.0),
        ("<think>2+5=7</think>357", 1.0),
        ("<think>2+5=7</think>\n 357 ", 1.0),
        ("<think>357</think>358", 0.0),  # only the text after </think> counts
        ("<think>a</think>b</think>357", 1.0),  # after the last </think>
        ("<think>2+5=7 ... 357", 0.0),  # unclosed: the whole completion
        ("358", 0.0),
        ("3 57", 0.0),
        ("Answer: 357", 0.0),
        ("", 0.0),
    ],
)
def test_answer(completion, expected):
    assert component("answer", [sample(completion)]) == [expected]


def test_answer_strips_the_reference_too():
    assert component("answer", [sample("357", answer=" 357\n")]) == [1.0]
    assert extract_answer("<think>x</think> 1 ") == "1"


@pytest.mark.parametrize(
    ("completion", "expected"),
    [
        ("<think>2+5=7</think>357", 1.0),
        ("<think>\nline\nline\n</think>\n357\n", 1.0),  # DOTALL
        ("<think></think>357", 1.0),  # empty reasoning is still the format
        ("<think>2+5=7</think>", 0.0),  # no answer
        ("<think>2+5=7</think>  \n", 0.0),  # a blank answer
        ("<think>2+5=7 357", 0.0),  # missing close tag
        ("2+5=7</think>357", 0.0),  # missing open tag
        ("357", 0.0),
        ("ok <think>2+5=7</think>357", 0.0),  # text before <think>
        (" <think>2+5=7</think>357", 0.0),  # even whitespace
        ("<think>a</think>b</think>357", 0.0),  # two closing tags
        ("<think>a<think>b</think>357", 0.0),  # two opening tags
        ("<think>a</think>357<think>b</think>", 0.0),  # a second block
    ],
)
def test_format(completion, expected):
    assert component("format", [sample(completion)]) == [expected]


# max_tokens 100, buffer 20: free up to 80, then (80 - n) / 20, -1 from 100 on.
OVERLONG_TABLE = [
    (0, False, 0.0),
    (50, False, 0.0),
    (80, False, 0.0),
    (81, False, -0.05),
    (90, False, -0.5),
    (99, False, -0.95),
    (100, False, -1.0),
    (100, True, -1.0),
    (101, False, -1.0),
    (10, True, -1.0),  # truncated is -1 whatever the count
]


@pytest.mark.parametrize(("num_tokens", "truncated", "expected"), OVERLONG_TABLE)
def test_overlong_table(num_tokens, truncated, expected):
    assert overlong_penalty(num_tokens, 100, truncated=truncated, buffer=20) == pytest.approx(
        expected
    )
    s = sample("x", num_tokens=num_tokens, truncated=truncated, max_tokens=100)
    assert component("overlong", [s], overlong_buffer=20) == pytest.approx([expected])


def test_overlong_default_buffer_is_a_quarter_and_clamped():
    # overlong_buffer=0: max_tokens // 4 = 8 of 32, so free up to 24.
    samples = [sample("x", num_tokens=n, max_tokens=32) for n in (24, 25, 28, 31, 32)]
    assert component("overlong", samples) == pytest.approx([0, -1 / 8, -4 / 8, -7 / 8, -1])
    # A buffer longer than the limit is the limit: linear from 0 tokens.
    assert overlong_penalty(5, 10, truncated=False, buffer=50) == pytest.approx(-0.5)
    # A limit under 4 tokens still has a buffer of 1 (no division by zero).
    assert component("overlong", [sample("x", num_tokens=n, max_tokens=3) for n in (1, 2, 3)]) == [
        0.0,
        0.0,
        -1.0,
    ]
    with pytest.raises(InputError, match="overlong_buffer"):
        Rewards("overlong", overlong_buffer=-1)


def test_length():
    samples = [sample("x", num_tokens=n, max_tokens=64) for n in (0, 16, 64)]
    assert component("length", samples) == [0.0, -0.25, -1.0]


@pytest.mark.parametrize(
    ("completion", "answer", "expected"),
    [
        ("357", "357", 1.0),
        (" 357 ", "357", 1.0),
        ("<think>7, 5</think>357", "357", 1.0),
        ("358", "357", 2 / 3),  # ones wrong, tens and hundreds right
        ("57", "357", 2 / 3),  # aligned from the right: a missing leading digit
        ("1357", "357", 3 / 4),  # an extra leading digit: over the longer length
        ("", "357", 0.0),
        ("753", "357", 1 / 3),  # only the middle digit in place
        ("abc", "357", 0.0),
    ],
)
def test_digits_partial_credit(completion, answer, expected):
    got = component("digits", [sample(completion, answer)])
    assert got == [pytest.approx(expected)]


@pytest.mark.parametrize(
    ("text", "parsed"),
    [
        ("answer", [("answer", 1.0)]),
        ("answer=1,format=0.2,overlong=1", [("answer", 1.0), ("format", 0.2), ("overlong", 1.0)]),
        (" answer = 2 , my_mod:fn=0.5", [("answer", 2.0), ("my_mod:fn", 0.5)]),
        ("a.b.c:fn,length=-0.5,format=0", [("a.b.c:fn", 1.0), ("length", -0.5), ("format", 0.0)]),
        ("answer=1e-1", [("answer", 0.1)]),
    ],
)
def test_parse_reward_spec(text, parsed):
    assert parse_reward_spec(text) == parsed


@pytest.mark.parametrize(
    ("text", "bad"),
    [
        ("", "empty"),
        ("  ", "empty"),
        ("answer=x", "'answer=x'"),
        ("answer=", "'answer='"),
        ("answer=nan", "not finite"),
        ("answer=inf", "not finite"),
        ("answer,,format", "no reward name"),
        ("answer,", "no reward name"),
        ("=1", "no reward name"),
        ("my mod:fn", "'my mod:fn' is not a reward name"),
        ("mod:", "not a reward name"),
        ("mod:fn:g", "not a reward name"),
        ("answer=1=2", "'answer=1=2'"),
        ("answer,answer=2", "'answer' is named twice"),
    ],
)
def test_parse_reward_spec_errors_name_the_key_and_the_part(text, bad):
    with pytest.raises(InputError) as error:
        parse_reward_spec(text)
    message = str(error.value)
    assert message.startswith("rl.rewards: "), message
    assert bad in message


def test_unknown_reward_lists_the_choices():
    with pytest.raises(InputError) as error:
        Rewards("answer,correct", extra={"reward_model": lambda s: [0.0] * len(s)})
    message = str(error.value)
    assert "unknown reward 'correct'" in message
    assert all(name in message for name in BUILT_INS)
    assert "reward_model" in message and "module.path:function" in message


def test_weighted_total_is_the_sum_of_weighted_components():
    rewards = Rewards("answer=1,format=0.25,overlong=0.5,length=0.1")
    assert rewards.names == ["answer", "format", "overlong", "length"]
    samples = [
        sample("<think>2+5=7</think>357", num_tokens=20, max_tokens=32),
        sample("358", num_tokens=3, max_tokens=32),
        sample("<think>forever", num_tokens=32, truncated=True, max_tokens=32),
        sample("<think></think>357", num_tokens=27, max_tokens=32),
    ]
    total, components = rewards.score(samples)
    assert total.dtype == np.float32 and total.shape == (4,)
    assert list(components) == rewards.names
    assert all(v.dtype == np.float32 and v.shape == (4,) for v in components.values())
    assert components["answer"].tolist() == [1, 0, 0, 1]
    assert components["format"].tolist() == [1, 0, 0, 1]
    assert components["overlong"].tolist() == pytest.approx([0, 0, -1, -3 / 8])
    weights = dict(rewards.weights)
    expected = sum(weights[name] * components[name] for name in rewards.names)
    np.testing.assert_allclose(total, expected, rtol=1e-6)
    np.testing.assert_allclose(
        total, [1.25 - 20 / 320, -3 / 320, -0.5 - 0.1, 1.25 - 3 / 16 - 27 / 320], rtol=1e-6
    )
    empty_total, empty = rewards.score([])
    assert empty_total.shape == (0,) and empty["answer"].shape == (0,)


def _module(tmp_path, monkeypatch, name, source):
    (tmp_path / f"{name}.py").write_text(textwrap.dedent(source), encoding="utf-8")
    monkeypatch.syspath_prepend(str(tmp_path))


def test_function_of_ones_own(tmp_path, monkeypatch):
    _module(
        tmp_path,
        monkeypatch,
        "my_rewards_ok",
        """
        def brevity(completion, example):
            return 1.0 / (1 + len(completion))

        def exact(completion, example):
            return completion == example["answer"]  # a bool counts as a number

        def tokens(completion, example):
            return len(completion)  # an int too
        """,
    )
    rewards = Rewards("answer,my_rewards_ok:brevity=0.5,my_rewards_ok:exact,my_rewards_ok:tokens=0")
    total, components = rewards.score([sample("357"), sample("<think>x</think>1")])
    assert components["my_rewards_ok:brevity"].tolist() == pytest.approx([1 / 4, 1 / 18])
    assert components["my_rewards_ok:exact"].tolist() == [1.0, 0.0]
    assert components["my_rewards_ok:tokens"].tolist() == [3.0, 17.0]
    assert total.tolist() == pytest.approx([1 + 0.5 / 4 + 1, 0.5 / 18])


def test_missing_module_or_function(tmp_path, monkeypatch):
    with pytest.raises(InputError, match=r"cannot import module 'no_such_reward_mod'") as error:
        Rewards("no_such_reward_mod:fn")
    assert isinstance(error.value.__cause__, ModuleNotFoundError)
    _module(tmp_path, monkeypatch, "my_rewards_few", "def one(completion, example): return 1\n")
    with pytest.raises(InputError, match=r"module 'my_rewards_few' .* has no function 'two'"):
        Rewards("my_rewards_few:two")
    _module(tmp_path, monkeypatch, "my_rewards_broken", "def one(:\n")
    with pytest.raises(InputError, match=r"cannot import module 'my_rewards_broken'.*SyntaxError"):
        Rewards("my_rewards_broken:one")


BAD_FUNCTIONS = """
def raises(completion, example):
    if completion == "boom":
        return 1 / 0
    return 0.0

def text(completion, example):
    return "x" if completion == "boom" else 0.0

def nothing(completion, example):
    return None if completion == "boom" else 0.0

def many(completion, example):
    return [1.0] if completion == "boom" else 0.0

def not_a_number(completion, example):
    return float("nan") if completion == "boom" else 0.0

def infinite(completion, example):
    return float("-inf") if completion == "boom" else 0.0
"""


@pytest.mark.parametrize(
    ("function", "why"),
    [
        ("raises", "raised ZeroDivisionError: division by zero"),
        ("text", "returned 'x' (str)"),
        ("nothing", "returned None (NoneType)"),
        ("many", "returned [1.0] (list)"),
        ("not_a_number", "returned nan"),
        ("infinite", "returned -inf"),
    ],
)
def test_bad_functions_name_the_function_and_the_example(tmp_path, monkeypatch, function, why):
    _module(tmp_path, monkeypatch, "my_rewards_bad", BAD_FUNCTIONS)
    name = f"my_rewards_bad:{function}"
    rewards = Rewards(f"answer,{name}")
    samples = [sample("357"), sample("358"), sample("boom")]
    with pytest.raises(RewardError) as error:
        rewards.score(samples)
    message = str(error.value)
    assert f"reward '{name}'" in message
    assert why in message
    assert "example 2 of the batch" in message
    assert "'12+345='" in message and "'boom'" in message
    assert "\n" not in message
    assert isinstance(error.value, InputError)
    if function == "raises":
        assert isinstance(error.value.__cause__, ZeroDivisionError)


def test_built_in_failure_is_a_reward_error():
    bare = Sample("p", "357", {"id": 1}, num_tokens=1, truncated=False, max_tokens=8)
    with pytest.raises(
        RewardError, match=r"reward 'answer' raised KeyError: 'answer' on example 0"
    ):
        Rewards("answer").score([bare])


def test_long_prompts_and_completions_are_cut_in_messages():
    long = Sample("p" * 500, "c\n" * 500, {"answer": "1"}, 1, False, 8)
    with pytest.raises(RewardError) as error:
        Rewards("rm", extra={"rm": lambda samples: [math.nan]}).score([long])
    message = str(error.value)
    assert len(message) < 300 and "\n" not in message and "..." in message


def test_extra_batched_rewards():
    seen = []

    def reward_model(samples):
        seen.append([s.completion for s in samples])
        return np.array([len(s.completion) for s in samples], np.float32)

    rewards = Rewards("answer,reward_model=0.5", extra={"reward_model": reward_model})
    total, components = rewards.score([sample("357"), sample("12")])
    assert seen == [["357", "12"]]  # one call for the batch
    assert components["reward_model"].tolist() == [3.0, 2.0]
    assert total.tolist() == [2.5, 1.0]
    # Supplied but not named: never called.
    Rewards("answer", extra={"reward_model": reward_model}).score([sample("357")])
    assert len(seen) == 1


@pytest.mark.parametrize(
    ("returns", "why"),
    [
        (lambda n: [0.0] * (n - 1), "returned 1 values for a batch of 2 samples"),
        (lambda n: "ab", "returned 'ab' (str)"),
        (lambda n: None, "returned None (NoneType)"),
        (lambda n: [0.0, None], "returned None (NoneType) on example 1 of the batch"),
        (lambda n: [0.0, "1"], "returned '1' (str) on example 1 of the batch"),
        (lambda n: np.array([np.inf, 0.0]), "returned inf on example 0 of the batch"),
    ],
)
def test_bad_batched_rewards(returns, why):
    rewards = Rewards("rm", extra={"rm": lambda samples: returns(len(samples))})
    with pytest.raises(RewardError) as error:
        rewards.score([sample("357"), sample("12")])
    assert "reward 'rm'" in str(error.value) and why in str(error.value)


def test_batched_reward_that_raises_is_chained():
    def broken(samples):
        raise RuntimeError("out of memory")

    with pytest.raises(RewardError, match=r"reward 'rm' raised RuntimeError: out of memory") as e:
        Rewards("rm", extra={"rm": broken}).score([sample("357")])
    assert isinstance(e.value.__cause__, RuntimeError)


def test_extra_may_not_shadow_a_built_in():
    with pytest.raises(ValueError, match="built-in"):
        Rewards("answer", extra={"answer": lambda s: [1.0] * len(s)})

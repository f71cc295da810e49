"""Verifiable-reward envs: the arithmetic generator and parser, answer rewards, rlfl/Arithmetic-v0 and rlfl/GSM8K-v0."""

from __future__ import annotations

import builtins
import gzip
import json
import pickle
import re
import subprocess
import sys
import warnings
from fractions import Fraction

import gymnasium
import numpy as np
import pytest
from gymnasium.utils.env_checker import check_env as gym_check_env
from stable_baselines3.common.env_checker import check_env as sb3_check_env

from conftest import shared_file, step_text
from rlfl.envs import TextGenerationVectorEnv  # importing rlfl.envs registers the ids
from rlfl.envs.verifiable import (LEVELS, AnswerReward, ArithmeticProblems, GSM8KProblems, arithmetic_answer,
                                  arithmetic_problem, evaluate_expression, exact_match, gsm8k_final_answer,
                                  parse_answer, write_arithmetic_sft)
from rlfl.sft_data import read_sft
from rlfl.tokenizer import byte_tokenizer

EOT = byte_tokenizer().eot_id


def python_value(expression: str) -> int:
    """The value of a generated expression by Python arithmetic on its parts (products first), no parser."""
    parts = re.findall(r"\d+|[+\-*]", expression)
    numbers, ops = [int(p) for p in parts[::2]], parts[1::2]
    terms, signs = [numbers[0]], [1]
    for op, n in zip(ops, numbers[1:]):
        if op == "*":
            terms[-1] *= n
        else:
            terms.append(n)
            signs.append(1 if op == "+" else -1)
    return sum(s * t for s, t in zip(signs, terms))


# -------------------------------------------------------------------------------- generator and parser
def test_generator_is_deterministic_and_levels_stay_in_range():
    for level in LEVELS:
        draws = [[arithmetic_problem(level, rng) for _ in range(300)] for rng in
                 (np.random.default_rng(3), np.random.default_rng(3))]
        assert draws[0] == draws[1]
        assert draws[0] != [arithmetic_problem(level, np.random.default_rng(4)) for _ in range(300)]
        for prompt, answer in draws[0]:
            expression = re.fullmatch(r"Q: (.*)=\? A:", prompt).group(1)
            numbers = [int(n) for n in re.findall(r"\d+", expression)]
            ops = re.findall(r"[+\-*]", expression)
            assert answer == python_value(expression) == arithmetic_answer(prompt)
            if level == 1:
                assert ops == ["+"] and all(0 <= n <= 9 for n in numbers)
            elif level == 2:
                assert ops in (["+"], ["-"]) and all(10 <= n <= 99 for n in numbers) and answer >= 0
            elif ops == ["*"]:
                assert 10 <= numbers[0] <= 99 and 2 <= numbers[1] <= 9
            else:
                assert len(ops) == 2 and all(0 <= n <= 9 for n in numbers)
        assert len({p for p, _ in draws[0]}) > (50 if level == 1 else 250)
    level3_ops = {tuple(re.findall(r"[+\-*]", p)) for p, _ in draws[0]}
    assert ("*",) in level3_ops and len(level3_ops) >= 9  # a*b and every pair of the three operators
    assert min(a for _, a in draws[0]) < 0  # three operands may go below zero


def test_parser_computes_exact_answers_and_never_runs_code(monkeypatch):
    def forbidden(*args, **kwargs):
        raise AssertionError("the parser called eval/exec/compile")

    for name in ("eval", "exec", "compile"):
        monkeypatch.setattr(builtins, name, forbidden)
    assert evaluate_expression("2+3*4-5") == 9 and evaluate_expression(" 12 - 30 ") == -18
    assert evaluate_expression("99*9*9") == 8019 and evaluate_expression("7") == 7
    assert evaluate_expression("1-2-3") == -4 and evaluate_expression("2*3+4*5-6*7") == -16
    big = "99999999999*99999999999"
    assert evaluate_expression(big) == 99999999999 ** 2  # exact: Python ints, no floats
    for bad in ["__import__('os').system('true')", "2**3", "(1+2)", "-3+4", "1+", "", "1 2", "1e3", "1+2;3",
                "1/2", "os", "9" * 100, None]:
        with pytest.raises(ValueError, match="expression"):
            evaluate_expression(bad)
    with pytest.raises(ValueError, match=r"is not an arithmetic problem; use the format 'Q: 23\+45=\? A:'"):
        arithmetic_answer("What is 2+2?")
    assert arithmetic_answer("Q: 23+45=? A:") == 68 and arithmetic_answer(" Q:  2 * 3 = ? A: ") == 6


def test_arithmetic_problems_are_a_seeded_pool_of_distinct_prompts():
    problems = ArithmeticProblems(level=1, n=1000, seed=0)
    assert len(problems) == 100 and len(set(problems)) == 100  # every one-digit sum, once
    assert problems[:] == ArithmeticProblems(level=1, n=1000, seed=0)[:]
    assert problems[:] != ArithmeticProblems(level=1, n=1000, seed=1)[:]
    small = ArithmeticProblems(level=3, n=20, seed=0)
    assert len(small) == 20 and small.sample(np.random.default_rng(0)) in small
    assert all(small.answer(p) == python_value(p[3:-5]) for p in small)
    with pytest.raises(ValueError, match=r"^level=0; pass level=1, 2 or 3 \(1: a\+b"):
        ArithmeticProblems(level=0)
    with pytest.raises(ValueError, match=r"^n=0; pass a positive number of problems"):
        ArithmeticProblems(level=1, n=0)


# ------------------------------------------------------------------------------------------ rewards
def test_parse_answer_reads_the_expected_place_then_falls_back():
    assert parse_answer(" 68") == (Fraction(68), True)
    assert parse_answer("68\nQ: 1+1=? A: 2") == (Fraction(68), True)
    assert parse_answer(" -5") == (Fraction(-5), True)
    assert parse_answer(" it is 68, or 69") == (Fraction(68), False)  # answer-first: the first number
    assert parse_answer(" no idea") == (None, False)
    assert parse_answer("") == (None, False)
    gsm = "She has 3 + 4 = <<3+4=7>>7 apples.\n#### 1,072"
    assert parse_answer(gsm, marker="####") == (Fraction(1072), True)
    assert parse_answer("#### $18.00", marker="####") == (Fraction(18), True)
    assert parse_answer("3 then 4 then 7", marker="####") == (Fraction(7), False)  # reasoning-first: the last
    assert parse_answer("#### seven", marker="####") == (None, False)
    assert parse_answer("1" * 5000) == (None, False)  # past Python's int-digits limit: no number, no crash


def test_answer_reward_credits_format_and_correctness():
    prompt = "Q: 23+45=? A:"
    r = AnswerReward(arithmetic_answer)
    scores = r.score([prompt] * 5, [" 68", " 67", " no idea", " it is 68", " 68.0"])
    assert isinstance(scores, np.ndarray) and scores.dtype == np.float64
    np.testing.assert_allclose(scores, [1.0, 0.1, 0.0, 0.9, 1.0])
    custom = AnswerReward({prompt: "68"}, format_weight=0.5, correct_weight=2.0)
    np.testing.assert_allclose(custom.score([prompt] * 3, [" 68", "7", "x"]), [2.5, 0.5, 0.0])
    gold = exact_match(ArithmeticProblems(level=1, n=5))
    assert gold.name == "exact_match" and gold.score([prompt] * 3, [" 68", " it is 68", " 67"]).tolist() == [1, 1, 0]
    with pytest.raises(ValueError, match="no known answer for prompt 'Q: 1\\+1=\\? A:'; add it to the answers"):
        custom.score(["Q: 1+1=? A:"], [" 2"])
    with pytest.raises(ValueError, match=r"^format_weight=nan; pass a finite number"):
        AnswerReward(arithmetic_answer, format_weight=float("nan"))
    with pytest.raises(ValueError, match=r"^answers=int; pass an object with answer\(prompt\)"):
        AnswerReward(3)
    pickle.loads(pickle.dumps(r))  # subprocess vector envs pickle their reward source


# ----------------------------------------------------------------------------------------- the envs
def test_arithmetic_env_passes_both_checkers_and_rewards_right_answers():
    env = gymnasium.make("rlfl/Arithmetic-v0", level=2, n_prompts=200)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # SB3 suggests normalising non-image Box observations: not for token ids
        gym_check_env(env.unwrapped)
        sb3_check_env(env)
    obs, info = env.reset(seed=0)
    assert obs["input_ids"].shape == (24 + 8,) and arithmetic_answer(info["prompt"]) >= 0
    assert env.reset(seed=5)[1]["prompt"] == env.reset(seed=5)[1]["prompt"]
    results = {}
    for completion, stop in [(" 68", True), (" 67", True), (" sixty-eight", False), ("", True)]:
        env.reset(seed=0, options={"prompt": "Q: 23+45=? A:"})
        _, reward, terminated, truncated, info = step_text(env, completion, stop)
        results[completion] = (reward, terminated, truncated, info["completion"])
    assert results[" 68"] == (1.0, True, False, " 68")
    assert results[" 67"] == (pytest.approx(0.1), True, False, " 67")
    assert results[" sixty-eight"] == (0.0, False, True, " sixty-e")  # max_new_tokens=8: truncated
    assert results[""][0] == 0.0
    judge = env.unwrapped.gold_judge
    assert judge.name == "exact_match"
    assert judge.score(["Q: 12*3=? A:"] * 3, [" 36", " 35", " 36 apples"]).tolist() == [1.0, 0.0, 1.0]


def test_arithmetic_make_vec_and_options():
    venv = gymnasium.make_vec("rlfl/Arithmetic-v0", num_envs=4, vectorization_mode="vector_entry_point", level=3,
                              max_new_tokens=4)
    assert isinstance(venv, TextGenerationVectorEnv) and venv.unwrapped.gold_judge.name == "exact_match"
    obs, info = venv.reset(seed=0)
    prompts = list(info["prompts"])
    assert obs["input_ids"].shape == (4, 24 + 4) and all(p.startswith("Q: ") for p in prompts)
    answers = [f" {arithmetic_answer(p)}".ljust(4)[:4] for p in prompts]
    for t in range(4):
        _, rewards, terminated, truncated, info = venv.step(np.array([ord(a[t]) for a in answers]))
    expected = AnswerReward(arithmetic_answer).score(prompts, answers)
    np.testing.assert_allclose(rewards, expected)
    assert truncated.all() and (rewards > 0).all()
    # format_weight 0: the reward is the exact match; reward= replaces it, the gold judge stays
    env = gymnasium.make("rlfl/Arithmetic-v0", format_weight=0.0, correct_weight=1.0)
    env.reset(seed=0, options={"prompt": "Q: 2+2=? A:"})
    assert step_text(env, " 5")[1] == 0.0
    env = gymnasium.make("rlfl/Arithmetic-v0", reward=lambda p, c: -1.0)
    env.reset(seed=0)
    assert step_text(env, " 5")[1] == -1.0 and env.unwrapped.gold_judge.name == "exact_match"


def test_import_stays_light(tmp_path):
    code = ("import sys, gymnasium, rlfl.envs\n"
            "assert 'rlfl.envs.verifiable' not in sys.modules and 'torch' not in sys.modules\n"
            "env = gymnasium.make('rlfl/Arithmetic-v0')\n"
            "print(env.reset(seed=0)[1]['prompt'])\n")
    r = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True, timeout=120,
                       env={"HOME": str(tmp_path), "PATH": "/usr/bin:/bin", "OMP_NUM_THREADS": "1"})
    assert r.returncode == 0, r.stderr[-2000:]
    assert r.stdout.startswith("Q: ")


def test_bad_options_say_which_and_how_to_fix(tmp_path):
    with pytest.raises(ValueError, match=r"^rlfl/Arithmetic-v0: level=0; pass level=1, 2 or 3 \(") as e:
        gymnasium.make("rlfl/Arithmetic-v0", level=0)
    assert "\n" not in str(e.value)
    with pytest.raises(ValueError, match=r"^rlfl/Arithmetic-v0: unknown keyword 'levels' \(did you mean 'level'\?\)"):
        gymnasium.make("rlfl/Arithmetic-v0", levels=2)
    with pytest.raises(ValueError, match=r"^rlfl/GSM8K-v0 needs GSM8K problems: pass data_path='path/to/gsm8k'") as e:
        gymnasium.make("rlfl/GSM8K-v0")
    assert "\n" not in str(e.value)
    with pytest.raises(FileNotFoundError, match=r"nowhere: no such file or folder \(GSM8K data_path\); pass data_"):
        gymnasium.make("rlfl/GSM8K-v0", data_path=str(tmp_path / "nowhere"))
    with pytest.raises(ValueError, match=r"^rlfl/GSM8K-v0: split='dev'; pass 'train' or 'test'"):
        gymnasium.make("rlfl/GSM8K-v0", data_path=str(tmp_path), split="dev")


# ------------------------------------------------------------------------------------------- GSM8K
def test_gsm8k_problems_from_a_small_file(tmp_path):
    rows = [{"question": "Tom has 2 apples and buys 1,070 more. How many?", "answer": "2+1070=1072\n#### 1,072"},
            {"question": "  Ann has 5 pens and loses 2. How many?  ", "answer": "5-2=<<5-2=3>>3\n#### 3"}]
    f = tmp_path / "test.jsonl.gz"
    f.write_bytes(gzip.compress("".join(json.dumps(r) + "\n" for r in rows).encode()))
    problems = GSM8KProblems(tmp_path, split="test")
    assert problems[:] == ["Question: Tom has 2 apples and buys 1,070 more. How many?\nAnswer:",
                           "Question: Ann has 5 pens and loses 2. How many?\nAnswer:"]
    assert problems.answer(problems[0]) == "1072" and gsm8k_final_answer(rows[1]["answer"]) == "3"
    assert GSM8KProblems(f, template="{question}")[1] == "Ann has 5 pens and loses 2. How many?"
    reward = AnswerReward(problems, marker="####")
    np.testing.assert_allclose(reward.score(problems[:], [" 2+1070=1072\n#### 1072", " so 3"]), [1.0, 0.9])
    with pytest.raises(ValueError, match="is not one of the 2 GSM8K prompts"):
        problems.answer("Question: something else\nAnswer:")
    with pytest.raises(ValueError, match=r"template='Q: '; pass a string containing \{question\}"):
        GSM8KProblems(f, template="Q: ")
    bad = tmp_path / "bad.jsonl"
    bad.write_text(json.dumps(rows[0]) + "\n" + json.dumps({"question": "q", "answer": "no final line"}) + "\n")
    with pytest.raises(ValueError, match=r"bad.jsonl line 2: answer 'no final line' does not end in '#### <number>'"):
        GSM8KProblems(bad)
    with pytest.raises(FileNotFoundError, match=r"train.jsonl.gz: no such file; pass data_path= the gsm8k folder"):
        GSM8KProblems(tmp_path, split="train")


def test_gsm8k_env_reads_the_real_file_and_scores_the_final_number():
    folder = shared_file("sft/gsm8k")
    env = gymnasium.make("rlfl/GSM8K-v0", data_path=str(folder), split="test", n_prompts=50, max_new_tokens=16)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        gym_check_env(env.unwrapped)
    _, info = env.reset(seed=0)
    prompt = info["prompt"]
    assert prompt.startswith("Question: ") and prompt.endswith("\nAnswer:") and len(env.unwrapped.prompt_texts) == 50
    answer = env.unwrapped.gold_judge.answers.answer(prompt)
    _, reward, terminated, _, info = step_text(env, f" #### {answer}")
    assert terminated and reward == 1.0 and info["completion"] == f" #### {answer}"
    judge = env.unwrapped.gold_judge
    assert judge.score([prompt] * 2, [f"so it is {answer}", f"#### {int(answer) + 1}"]).tolist() == [1.0, 0.0]
    # The whole test split: Janet's ducks make $18; under the chat template the prompt is the bare question.
    problems = GSM8KProblems(folder, split="test")
    assert len(problems) == 1319 and problems.answer(problems[0]) == "18"
    chat = gymnasium.make("rlfl/GSM8K-v0", data_path=str(folder), split="test", chat_template=True, n_prompts=10)
    _, info = chat.reset(seed=0)
    assert not info["prompt"].startswith("Question: ") and chat.unwrapped.gold_judge.answers.answer(info["prompt"])
    # The data file is itself SFT data ({question, answer} records).
    assert read_sft(folder / "test.jsonl.gz", max_examples=2).conversations[0][-1]["content"].endswith("#### 18")


# ---------------------------------------------------------------------------------------- SFT data
@pytest.mark.parametrize("name", ["arith.jsonl", "arith.jsonl.gz"])
def test_sft_writer_writes_what_read_sft_reads(tmp_path, name):
    path = write_arithmetic_sft(tmp_path / name, level=2, n=40, seed=1)
    data = read_sft(path)
    assert len(data.conversations) == 40 and data.skipped == 0
    for conv in data.conversations:
        user, assistant = conv
        assert user["role"] == "user" and assistant["role"] == "assistant"
        assert assistant["content"] == f" {arithmetic_answer(user['content'])}"
    again = read_sft(write_arithmetic_sft(tmp_path / ("again-" + name), level=2, n=40, seed=1))
    assert again.conversations == data.conversations
    with pytest.raises(ValueError, match=r"^level=4; pass level=1, 2 or 3"):
        write_arithmetic_sft(tmp_path / "x.jsonl", level=4)

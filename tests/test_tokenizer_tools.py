"""`jaxlm tokenizer train|eval|extend`, the tokenizer sidecar, and extending to Chinese.

The base tokenizer (512 pieces) is trained on a slice of the stdlib and the English
text below; the extension learns Chinese from CHINESE (hand-written, with English
words mixed in) and is measured on CHINESE_HELD_OUT, which it never saw.
"""

import copy
import json
import random
import re
import shutil

import pytest

from jaxlm import cli
from jaxlm.data import corpus
from jaxlm.data.chat import Message, encode_conversation
from jaxlm.data.chat_template import CHATML
from jaxlm.data.tokenizer import IM_END_ID, Tokenizer
from jaxlm.data.tokenizer_extend import (
    _reachable_merges,
    added_pieces_in,
    base_characters,
    check_extension,
)
from jaxlm.data.tokenizer_extend import parse_model as parse_sentencepiece_model
from jaxlm.errors import InputError

ENGLISH = """\
A tokenizer turns text into a sequence of integers that a language model can read.
The simplest choice maps every byte to its own id, which never fails but makes every
sequence long. Subword methods such as byte pair encoding start from characters and
repeatedly merge the most frequent adjacent pair, so common words become one token
while rare words are spelled out from smaller pieces.

When we train a model on source code and English prose, the vocabulary fills up with
pieces like "def", "return", "the" and "ing". Text in another script gets no such
pieces: every Chinese character is split into three byte tokens, so a sentence costs
three times as many positions as it would with a vocabulary that knew the characters.
Longer sequences mean slower training, slower generation and a shorter effective
context window.

Extending a vocabulary keeps the old pieces where they are and appends new ones at
the end. The embedding matrix then grows by the same number of rows. Old rows keep
their trained values, and new rows start at the average of the old rows, which puts
them in a region of the embedding space the network has already seen.

The weather on Tuesday was mild. We walked along the river, watched the boats come
in, and bought bread, cheese and a bag of apples at the market. In the evening the
wind picked up and the rain started around nine o'clock, so we stayed inside, read
for a while and went to bed early.

To bake a simple loaf, mix five hundred grams of flour with ten grams of salt, seven
grams of yeast and three hundred and fifty millilitres of warm water. Knead for ten
minutes, let it rise for an hour, shape it, let it rise again, and bake at two hundred
and twenty degrees for about thirty five minutes until the crust sounds hollow.

Good tests are small, fast and honest. A test that cannot fail tells you nothing, and
a test that takes an hour will not be run. Write the input data yourself, keep it in
a temporary directory, and check the exact values that matter instead of printing
them and hoping somebody reads the output.

The committee met on the third of March to review the budget. Most members agreed
that the library should stay open on Sundays, that the roof needed repairs before the
winter, and that the reading room could use better lighting. The treasurer promised a
detailed report by the end of the month.

Numbers such as 3.14159, 2024 and 1,000,000 appear in ordinary text as well, and a
tokenizer that splits digits keeps arithmetic regular: every number is a sequence of
single digit tokens, whatever its length.
"""

CHINESE = """\
分词器把文字变成一串整数，语言模型只能读懂这些整数。最简单的做法是每个字节一个编号，
这样永远不会出错，但是序列会变得很长。字节对编码从单个字符开始，反复合并最常见的相邻两个片段，
于是常见的词变成一个词元，罕见的词则由更小的片段拼出来。

如果一个模型只在英文和代码上训练，它的词表里几乎没有中文字符。每个汉字在 UTF-8 中占三个字节，
所以一个汉字会被切成三个字节词元。同样一句话，中文要占用的位置是英文的好几倍，
训练更慢，生成更慢，能放进上下文窗口的内容也更少。

扩展词表的办法是保留原来的所有片段和编号，只在末尾追加新的片段。新的片段来自在中文语料上训练的分词器，
去掉原词表里已经有的部分，剩下的按照顺序加到后面。模型的嵌入矩阵也要增加同样多的行，
旧的行保持训练好的数值不变，新的行用旧行的平均值初始化，然后在中文数据上继续预训练。

今天天气很好，我们沿着河边散步，看见很多小船慢慢地划过来。中午我们在市场上买了面包、
奶酪和一袋苹果。下午起风了，晚上九点左右开始下雨，我们就待在家里看书，早早地睡觉了。

做一个简单的面包，需要五百克面粉、十克盐、七克酵母和三百五十毫升温水。先把面粉和盐混合，
再加入酵母和温水，揉面十分钟，让面团发酵一个小时，整形以后再发酵一次，
最后放进烤箱，用两百二十度烤三十五分钟左右，直到表皮敲起来有空心的声音。

好的测试应该小、快而且诚实。一个不可能失败的测试什么也说明不了，一个要跑一个小时的测试没有人会去运行。
测试数据要自己写，放在临时目录里，检查真正重要的数值，而不是把结果打印出来，希望有人去看。

委员会在三月三日开会审查预算。大多数成员同意图书馆星期天也要开放，屋顶要在冬天之前修好，
阅览室需要更好的照明。财务主管答应在月底之前提交一份详细的报告。

我们用 JAX 和 Python 写训练代码，在 GPU 和 TPU 上都能运行。模型的参数、优化器的状态和数据的位置
都保存在检查点里，训练中断以后可以从最近的检查点继续。中文和 English 混在一起的句子也很常见，
比如“这个 tokenizer 的压缩率是多少”或者“请把 batch size 调小一点”。

中文分词没有空格作为边界，所以分词器需要从统计中学习哪些字经常一起出现。
“我们”、“模型”、“训练”、“数据”、“中文”这样的词出现得很多，就会被合并成一个片段。
数字和标点符号也很常见，比如逗号、句号、引号和问号，它们也应该有自己的编号。

春天来了，公园里的花都开了，孩子们在草地上跑来跑去，老人们坐在树下聊天。
城市的另一边，工人们正在修一座新的桥，听说明年夏天就能通车。
"""

CHINESE_HELD_OUT = """\
我们在中文数据上继续训练模型，发现生成的速度快了很多，因为同样的内容需要的词元少了。
词表扩展以后，旧的编号都没有变化，所以原来的英文能力基本保留下来。
下雨的时候，我们在家里做面包，等面团发酵的时候就看书或者聊天。
图书馆的阅览室换了新的照明，晚上看书的人比以前多了。
测试数据是我们自己写的，放在临时目录里，每次运行都一样。
分词器的压缩率可以用每个词元的字节数来衡量，数字越大，序列越短。
这个模型的参数保存在检查点里，我们可以从最近的检查点继续训练。
公园里的孩子们在河边看小船，老人们在树下聊天，春天的天气很好。
"""

MIXED = [
    "我们用 JAX 训练一个 language model，batch size 是 64。\n",
    "The tokenizer saw 中文 only after it was extended: 词表扩展以后 it is much shorter.\n",
    "emoji 😀 和生僻字 龘 都没有学过，只能用字节表示。\n",
    "a\u2581b 和 <|im_end|> 只是普通文字\n",
]

BASE_VOCAB = 512
EXTENDED_VOCAB = 1024
BASE_TRAIN_CHARS = 300_000


def jaxlm(*argv) -> int:
    return cli.main([str(a) for a in argv])


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    root = tmp_path_factory.mktemp("texts")
    (root / "en.txt").write_text(ENGLISH, encoding="utf-8")
    (root / "zh.txt").write_text(CHINESE, encoding="utf-8")
    (root / "zh_heldout.txt").write_text(CHINESE_HELD_OUT, encoding="utf-8")
    return root


@pytest.fixture(scope="module")
def base(data_dir, tmp_path_factory):
    out = tmp_path_factory.mktemp("base") / "base"
    # English first: training reads the inputs in order, up to --max-chars in all.
    rc = jaxlm(
        "tokenizer", "train", data_dir / "en.txt", "stdlib",
        "--vocab-size", BASE_VOCAB, "--max-chars", BASE_TRAIN_CHARS, "--out", out,
    )  # fmt: skip
    assert rc == 0
    return Tokenizer.load(f"{out}.model")


def extend(base, data_dir, out, *flags) -> Tokenizer:
    rc = jaxlm("tokenizer", "extend", base.path, data_dir / "zh.txt", "--out", out, *flags)
    assert rc == 0
    return Tokenizer.load(f"{out}.model")


@pytest.fixture(scope="module")
def extended(base, data_dir, tmp_path_factory):
    out = tmp_path_factory.mktemp("ext") / "zh"
    return extend(base, data_dir, out, "--vocab-size", EXTENDED_VOCAB)


@pytest.fixture(scope="module")
def extended_all(base, data_dir, tmp_path_factory):
    out = tmp_path_factory.mktemp("ext_all") / "zh_all"
    return extend(base, data_dir, out, "--vocab-size", EXTENDED_VOCAB, "--pieces", "all")


def added_pieces(base, extended) -> list[str]:
    return [extended.id_to_piece(i) for i in range(base.vocab_size, extended.vocab_size)]


def _random_texts(count, seed=0):
    rng = random.Random(seed)
    ranges = [(0x20, 0x80), (0x4E00, 0x9FA6), (0x3000, 0x3040), (0x80, 0x2000), (0x1F600, 0x1F650)]
    return [
        "".join(chr(rng.randrange(*rng.choice(ranges))) for _ in range(rng.randrange(0, 40)))
        for _ in range(count)
    ]


# --------------------------------------------------------------------------- train


def test_train_writes_model_vocab_and_sidecar(base):
    prefix = base.path.with_suffix("")
    assert base.vocab_size == BASE_VOCAB
    assert prefix.with_suffix(".vocab").read_text(encoding="utf-8").startswith("<pad>\t0\n")
    sidecar = json.loads(prefix.with_suffix(".json").read_text(encoding="utf-8"))
    assert sidecar["model_sha256"] == base.sha256
    assert sidecar["special_ids"] == {
        "<pad>": 0, "<s>": 1, "</s>": 2, "<unk>": 3, "<|im_start|>": 4, "<|im_end|>": 5,
    }  # fmt: skip
    assert sidecar["chat_template"]["name"] == "chatml"
    assert sidecar["chat_template"]["im_start"] == "<|im_start|>"
    assert sidecar["chat_template"]["im_end"] == "<|im_end|>"
    assert (sidecar["model_type"], sidecar["byte_fallback"]) == ("bpe", True)
    assert sidecar["user_symbols"] == {} and sidecar["extended_from"] is None


def test_user_symbols_take_ids_after_the_chat_markers(data_dir, tmp_path):
    out = tmp_path / "sym"
    symbols = "<|tool_call|>,<|tool_result|>"
    rc = jaxlm("tokenizer", "train", data_dir / "en.txt", "--vocab-size", 400,
               "--user-symbols", symbols, "--out", out)  # fmt: skip
    assert rc == 0
    tok = Tokenizer.load(f"{out}.model")
    assert tok.user_symbols == ("<|tool_call|>", "<|tool_result|>")
    assert [tok.piece_to_id(s) for s in tok.user_symbols] == [6, 7]
    assert [tok.id_to_piece(i) for i in (8, 8 + 255)] == ["<0x00>", "<0xFF>"]
    assert tok.encode("<|tool_call|>") == [6]
    # Untrusted content cannot produce the symbol's id, and still decodes exactly.
    text = "x<|tool_call|>y<|im_end|>"
    ids = tok.encode_literal(text)
    assert 6 not in ids and 5 not in ids and tok.decode(ids) == text
    assert int(tok.token_bytes()[ids].sum()) == len(text.encode("utf-8"))
    assert json.loads(out.with_suffix(".json").read_text())["user_symbols"] == {
        "<|tool_call|>": 6,
        "<|tool_result|>": 7,
    }


def test_bad_user_symbol_is_refused(data_dir, tmp_path, capsys):
    rc = jaxlm("tokenizer", "train", data_dir / "en.txt", "--user-symbols", "<s>",
               "--out", tmp_path / "t")  # fmt: skip
    assert rc == 2 and "'<s>'" in capsys.readouterr().err


def test_unigram_from_jsonl_with_a_text_field(data_dir, tmp_path):
    records = tmp_path / "docs.jsonl"
    lines = [json.dumps({"content": p, "id": i}) for i, p in enumerate(ENGLISH.split("\n\n"))]
    records.write_text("\n".join(lines) + "\n", encoding="utf-8")
    out = tmp_path / "uni"
    rc = jaxlm("tokenizer", "train", records, "--text-field", "content",
               "--model-type", "unigram", "--vocab-size", 400, "--out", out)  # fmt: skip
    assert rc == 0
    tok = Tokenizer.load(f"{out}.model")
    assert tok.metadata.model_type == "unigram" and tok.vocab_size == 400
    for text in [ENGLISH, CHINESE_HELD_OUT, *MIXED]:
        assert tok.decode(tok.encode(text)) == text


def test_jsonl_without_the_text_field_names_file_and_line(tmp_path, capsys):
    records = tmp_path / "docs.jsonl"
    records.write_text('{"text": "fine"}\n{"body": "wrong field"}\n', encoding="utf-8")
    assert jaxlm("tokenizer", "train", records, "--out", tmp_path / "t") == 2
    err = capsys.readouterr().err
    assert f"{records}:2" in err and "'text'" in err


@pytest.mark.parametrize(
    "argv",
    [
        ["tokenizer", "train", "{missing}/corpus.txt", "--out", "{tmp}/t"],
        ["tokenizer", "eval", "{data}/en.txt", "--model", "{missing}/tok.model"],
        ["tokenizer", "extend", "{missing}/tok.model", "{data}/zh.txt", "--vocab-size", "600",
         "--out", "{tmp}/t"],
        ["tokenizer", "extend", "{base}", "{missing}/*.txt", "--vocab-size", "600",
         "--out", "{tmp}/t"],
    ],
)  # fmt: skip
def test_missing_paths_exit_2_naming_them(argv, base, data_dir, tmp_path, capsys):
    paths = {"missing": tmp_path / "nowhere", "tmp": tmp_path, "data": data_dir, "base": base.path}
    assert jaxlm(*[a.format(**paths) for a in argv]) == 2
    assert str(tmp_path / "nowhere") in capsys.readouterr().err


def test_byte_fallback_off_is_lossy_and_loads_only_for_evaluation(data_dir, tmp_path, capsys):
    out = tmp_path / "lossy"
    rc = jaxlm("tokenizer", "train", data_dir / "en.txt", "--byte-fallback", "off",
               "--vocab-size", 300, "--out", out)  # fmt: skip
    assert rc == 0
    with pytest.raises(InputError, match="lossless"):
        Tokenizer.load(f"{out}.model")
    lossy = Tokenizer.load(f"{out}.model", require_lossless=False)
    assert lossy.metadata.byte_fallback is False
    assert lossy.unk_id in lossy.encode("中文")
    capsys.readouterr()
    rc = jaxlm("tokenizer", "eval", data_dir / "zh_heldout.txt", "--model", f"{out}.model",
               "--json", "--repeats", 1)  # fmt: skip
    assert rc == 0
    (report,) = json.loads(capsys.readouterr().out)["reports"]
    assert report["unk_token_fraction"] > 0.3 and report["byte_fallback_token_fraction"] == 0


# ------------------------------------------------------------------------- sidecar


def test_sidecar_round_trips_through_load_and_copies(base):
    loaded = Tokenizer.load(base.path)
    assert loaded.chat_template == CHATML
    assert loaded.metadata == base.metadata
    assert copy.deepcopy(loaded).metadata == loaded.metadata


def test_sidecar_of_another_model_is_refused_naming_both_files(base, extended, tmp_path, capsys):
    model = tmp_path / "mixed.model"
    shutil.copyfile(base.path, model)
    shutil.copyfile(extended.path.with_suffix(".json"), tmp_path / "mixed.json")
    with pytest.raises(InputError) as error:
        Tokenizer.load(model)
    message = str(error.value)
    assert str(model) in message and str(tmp_path / "mixed.json") in message
    assert base.sha256 in message and extended.sha256 in message
    assert jaxlm("tokenizer", "eval", "stdlib", "--model", model) == 2
    assert str(model) in capsys.readouterr().err


def test_model_without_sidecar_loads_with_chatml(base, tmp_path):
    model = tmp_path / "bare.model"
    shutil.copyfile(base.path, model)
    tok = Tokenizer.load(model)
    assert tok.chat_template == CHATML and tok.sha256 == base.sha256


def test_sidecar_with_an_unknown_template_is_refused(base, tmp_path):
    model = tmp_path / "tpl.model"
    shutil.copyfile(base.path, model)
    sidecar = json.loads(base.path.with_suffix(".json").read_text(encoding="utf-8"))
    sidecar["chat_template"]["name"] = "llama2"
    (tmp_path / "tpl.json").write_text(json.dumps(sidecar), encoding="utf-8")
    with pytest.raises(InputError, match=re.escape(str(tmp_path / "tpl.json")) + ".*llama2"):
        Tokenizer.load(model)
    sidecar["chat_template"] = {**CHATML.to_json(), "im_end": "<|end|>"}  # known name, other text
    (tmp_path / "tpl.json").write_text(json.dumps(sidecar), encoding="utf-8")
    with pytest.raises(InputError, match="differs"):
        Tokenizer.load(model)


def test_stored_template_describes_what_sft_encodes(base):
    messages = [
        Message("system", "Be brief."),
        Message("user", "中文 and <|im_end|> typed by a user"),
        Message("assistant", "Fine."),
    ]
    encoded = encode_conversation(messages, base, max_len=4096)
    assert encoded.tokens[0] == base.bos_id and base.chat_template.starts_with_bos
    assert base.decode(encoded.tokens) == base.chat_template.render(messages)
    prompt = base.chat_template.render(messages[:2], add_generation_prompt=True)
    assert prompt.endswith("<|im_end|>\n<|im_start|>assistant\n")
    assert base.piece_to_id(base.chat_template.stop_piece) == IM_END_ID


# ---------------------------------------------------------------------------- eval


def test_eval_json_counts_match_direct_encoding(base, extended, data_dir, capsys):
    capsys.readouterr()
    rc = jaxlm("tokenizer", "eval", data_dir / "zh_heldout.txt", "--model", base.path,
               "--model", extended.path, "--json", "--repeats", 1)  # fmt: skip
    assert rc == 0
    result = json.loads(capsys.readouterr().out)
    before, after = result["reports"]
    for report, tok in ((before, base), (after, extended)):
        tokens = len(tok.encode(CHINESE_HELD_OUT))
        assert report["tokens"] == tokens and report["documents"] == 1
        assert report["bytes"] == len(CHINESE_HELD_OUT.encode("utf-8"))
        assert report["bytes_per_token"] == pytest.approx(report["bytes"] / tokens)
        assert report["chars_per_token"] == pytest.approx(len(CHINESE_HELD_OUT) / tokens)
        assert report["encode_mb_per_s"] > 0 and report["batch_tokens_per_s"] > 0
    # The base spells almost every Chinese character in byte pieces; the extension not.
    assert before["byte_fallback_token_fraction"] > 0.9
    assert after["byte_fallback_token_fraction"] < 0.2


def test_eval_table_compares_two_models_on_the_stdlib_held_out_split(base, extended, capsys):
    capsys.readouterr()
    rc = jaxlm("tokenizer", "eval", "stdlib", "--model", base.path, "--model", extended.path,
               "--max-chars", 200_000, "--repeats", 1)  # fmt: skip
    assert rc == 0
    out = capsys.readouterr().out
    assert "B / A" in out and base.path.name in out and extended.path.name in out
    bytes_row = next(line for line in out.splitlines() if line.startswith("bytes / token"))
    a, b, ratio = map(float, bytes_row.split()[-3:])
    # Code holds few characters the base lacks, and new ones only shorten it.
    assert a > 1.5 and b >= a and ratio == pytest.approx(b / a, abs=2e-3)


# -------------------------------------------------------------------------- extend


def test_extension_keeps_every_old_id_piece_and_score(base, extended):
    assert extended.vocab_size == EXTENDED_VOCAB
    old = parse_sentencepiece_model(base.model_proto).pieces
    new = parse_sentencepiece_model(extended.model_proto).pieces
    assert [(p.piece, p.score, p.type) for p in new[: len(old)]] == [
        (p.piece, p.score, p.type) for p in old
    ]
    lowest_old = min(p.score for p in old if p.type == 1)
    assert all(p.type == 1 and p.score < lowest_old for p in new[len(old) :])  # NORMAL, below
    assert len({p.piece for p in new}) == len(new)
    provenance = extended.metadata.extended_from
    assert provenance["model_sha256"] == base.sha256
    assert provenance["vocab_size"] == BASE_VOCAB and provenance["pieces"] == "new-chars"


def test_english_and_code_encode_to_the_same_ids_after_extension(base, extended):
    # Default --pieces new-chars: every added piece holds a character the base lacks,
    # so text made of base characters cannot contain one.
    known = base_characters(parse_sentencepiece_model(base.model_proto))
    code = "".join(corpus.read_text(p) for p in corpus.stdlib_files("validation")[:10])
    code = "".join(c for c in code if c.replace(" ", "\u2581") in known)
    for text in [ENGLISH, code]:
        assert not added_pieces_in(text, added_pieces(base, extended))
        assert extended.encode(text) == base.encode(text)


def test_with_all_pieces_only_text_containing_an_added_piece_can_change(base, extended_all):
    added = added_pieces(base, extended_all)
    lines = ENGLISH.splitlines(keepends=True)
    changed = [line for line in lines if extended_all.encode(line) != base.encode(line)]
    containing = [line for line in lines if added_pieces_in(line, added)]
    # Pieces such as "iz" or "ho" come from the English words in the Chinese text.
    assert containing and set(changed) <= set(containing)
    for line in changed:
        assert extended_all.decode(extended_all.encode(line)) == line
    print(f"\n--pieces all: {len(changed)}/{len(lines)} English lines encode differently")


def test_chinese_encodes_to_far_fewer_tokens_and_decodes_exactly(base, extended):
    chars = len(CHINESE_HELD_OUT)
    before, after = len(base.encode(CHINESE_HELD_OUT)), len(extended.encode(CHINESE_HELD_OUT))
    print(
        f"\nheld-out Chinese, {chars} chars: {chars / before:.3f} -> {chars / after:.3f} "
        f"chars/token ({before / after:.2f}x fewer tokens)"
    )
    assert before / after > 2.5
    assert extended.decode(extended.encode(CHINESE_HELD_OUT)) == CHINESE_HELD_OUT
    token_bytes = extended.token_bytes()
    for text in [CHINESE, ENGLISH, *MIXED, *_random_texts(300)]:
        ids = extended.encode(text)
        assert extended.decode(ids) == text
        assert int(token_bytes[ids].sum()) == len(text.encode("utf-8"))


def test_byte_fallback_pieces_keep_their_ids(base, extended):
    assert [extended.id_to_piece(i) for i in range(6, 262)] == [f"<0x{b:02X}>" for b in range(256)]
    assert all(extended.is_byte(i) for i in range(6, 262))
    # Characters the extension did not learn still fall back to the same byte ids.
    for text in ["龘", "😀", "ꙮ"]:
        assert extended.encode(text) == base.encode(text)
        assert all(extended.is_byte(i) for i in extended.encode(text))


def test_an_extension_that_moves_an_old_id_is_caught(base, extended):
    proto = parse_sentencepiece_model(extended.model_proto)
    proto.pieces[300].piece, proto.pieces[301].piece = (
        proto.pieces[301].piece,
        proto.pieces[300].piece,
    )
    with pytest.raises(ValueError, match="id 300"):
        check_extension(base.model_proto, proto.SerializeToString())
    check_extension(base.model_proto, extended.model_proto)


def test_small_budget_gives_exactly_the_target_size(base, data_dir, tmp_path):
    small = extend(base, data_dir, tmp_path / "small", "--vocab-size", 600)
    assert small.vocab_size == 600
    assert small.decode(small.encode(CHINESE_HELD_OUT)) == CHINESE_HELD_OUT
    assert len(small.encode(CHINESE_HELD_OUT)) < len(base.encode(CHINESE_HELD_OUT))


def test_extend_refuses_a_target_not_above_the_base(base, data_dir, tmp_path, capsys):
    rc = jaxlm("tokenizer", "extend", base.path, data_dir / "zh.txt", "--vocab-size", BASE_VOCAB,
               "--out", tmp_path / "t")  # fmt: skip
    assert rc == 2 and str(base.path) in capsys.readouterr().err


def test_unigram_base_extends_too(data_dir, tmp_path):
    rc = jaxlm("tokenizer", "train", data_dir / "en.txt", "--model-type", "unigram",
               "--vocab-size", 400, "--out", tmp_path / "uni")  # fmt: skip
    assert rc == 0
    base = Tokenizer.load(tmp_path / "uni.model")
    ext = extend(base, data_dir, tmp_path / "uni_zh", "--vocab-size", 800)
    assert [ext.id_to_piece(i) for i in range(400)] == [base.id_to_piece(i) for i in range(400)]
    assert ext.encode(ENGLISH) == base.encode(ENGLISH)
    assert len(base.encode(CHINESE_HELD_OUT)) / len(ext.encode(CHINESE_HELD_OUT)) > 2.5
    assert ext.decode(ext.encode(CHINESE_HELD_OUT)) == CHINESE_HELD_OUT


def test_merges_whose_parts_are_not_pieces_are_not_added():
    # "xy" was left out (say, known characters only), so "xy中" can never be merged.
    candidates = ["中文", "xy中", "文字", "中文字", "好"]
    assert _reachable_merges(candidates, existing={"x", "y"}) == {"中文", "文字", "中文字", "好"}
    assert _reachable_merges(["ab", "abc中"], existing={"c中"}) == {"ab", "abc中"}


def test_added_pieces_in_spells_spaces_as_sentencepiece_does():
    assert added_pieces_in("a b", ["a\u2581b", "ab", "b"]) == ["a\u2581b", "b"]
    assert added_pieces_in("abc", ["zz", "ca"]) == []

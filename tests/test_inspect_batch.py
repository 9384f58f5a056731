"""`jaxlm data inspect`: the rendering shows exactly which tokens carry loss."""

import numpy as np
from helpers.batches import ByteTokenizer, byte_decode

from jaxlm.analysis.inspect_batch import plot_batch, predicted, render_batch, token_table
from jaxlm.data.packing import add_targets_and_mask, padding_rows


def _sft_like_batch():
    """Row 0: segment 1 = prompt "Q?" (untrained) + answer "Ok"; segment 2 = "hi"; padding."""
    tok = ByteTokenizer()
    seg1 = [1, *tok.encode("Q?"), *tok.encode("Ok"), 2]
    train1 = [0, 0, 0, 1, 1, 1]  # answer and its EOS are trained
    seg2 = [1, *tok.encode("hi"), 2]
    T = 12
    rows = padding_rows(1, T, pad_id=0)
    rows["train_token"] = np.zeros((1, T), np.int32)
    n1, n2 = len(seg1), len(seg2)
    rows["tokens"][0, : n1 + n2] = seg1 + seg2
    rows["segment_ids"][0, :n1], rows["segment_ids"][0, n1 : n1 + n2] = 1, 2
    rows["positions"][0, :n1], rows["positions"][0, n1 : n1 + n2] = np.arange(n1), np.arange(n2)
    rows["train_token"][0, :n1], rows["train_token"][0, n1 : n1 + n2] = train1, 1
    return add_targets_and_mask(rows)


def test_predicted_tokens_are_the_trained_ones():
    batch = _sft_like_batch()
    # Segment 1: "O", "k", EOS are predicted; segment 2: "h", "i", EOS (not its BOS).
    assert predicted(batch)[0].tolist() == [0, 0, 0, 1, 1, 1, 0, 1, 1, 1, 0, 0]


def test_render_marks_untrained_stretches():
    text = render_batch(_sft_like_batch(), byte_decode)
    assert "row 0: 2 segments, 2 padding" in text
    assert "seg 1 cols 0-5 pos 0-5 trained 3/6: '⟦Q?⟧Ok'" in text
    assert "seg 2 cols 6-9 pos 0-3 trained 3/4: 'hi'" in text
    assert "8 carry loss" not in text and "6 carry loss" in text


def test_token_table_and_plot(tmp_path):
    batch = _sft_like_batch()
    table = token_table(batch, lambda i: f"<{i}>", limit=4)
    assert table.splitlines()[1].split()[:2] == ["0", "1"]
    png = plot_batch(batch, tmp_path / "batch.png")
    assert png.stat().st_size > 1000


def test_inspect_command_with_a_token_table(tmp_path, capsys):
    """`jaxlm data inspect` end to end on a tiny jsonl experiment override."""
    import json

    from jaxlm import cli
    from jaxlm.data.tokenizer import train_tokenizer

    texts = [f"def f{i}(x):\n    return x + {i}\n" * (1 + i % 5) for i in range(80)]
    data = tmp_path / "d.jsonl"
    data.write_text("".join(json.dumps({"text": t}) + "\n" for t in texts))
    tok = train_tokenizer(texts, tmp_path / "tok", vocab_size=300, max_chars=100_000)
    overrides = [
        f"data.sources=jsonl:{data}",
        f"data.tokenizer={tok.path}",
        "model.vocab_size=300",
        "data.val_fraction=0.2",
    ]
    argv = ["data", "inspect", "quickstart", "--rows", "1", "--tokens", "--split", "eval"]
    for item in overrides:
        argv += ["--set", item]
    assert cli.main(argv) == 0
    out = capsys.readouterr().out
    assert "row 0:" in out and "col    id  piece" in out and "'return'" in out

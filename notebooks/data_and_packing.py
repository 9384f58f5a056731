# ---
# jupyter:
#   jupytext:
#     formats: ipynb,py:percent
#     text_representation:
#       extension: .py
#       format_name: percent
#       format_version: '1.3'
#       jupytext_version: 1.19.6
#   kernelspec:
#     display_name: Python 3 (ipykernel)
#     language: python
#     name: python3
# ---

# %% [markdown]
# # From documents to packed batches
#
# A language model trains on fixed-shape `[B, T]` batches, but documents come in every
# length. jaxlm **packs** several documents into each row and keeps them apart with
# `segment_ids`, so almost no position is wasted on padding and no token ever attends
# to, or is trained to predict, a token of another document.
#
# This notebook walks the data path on the embedded corpus (the Python standard
# library of the running interpreter: present everywhere, nothing downloaded):
#
# 1. documents → a small SentencePiece tokenizer,
# 2. tokenized documents → packed rows → batches with `targets`, `loss_mask`,
#    `segment_ids`, `positions`,
# 3. what one packed row looks like to attention: its mask.

# %%
import tempfile
import time
from pathlib import Path

import grain
import matplotlib.pyplot as plt
import numpy as np
from IPython.display import Image, display

from jaxlm.analysis.inspect_batch import plot_batch, render_batch, token_table
from jaxlm.config import Config, apply_overrides
from jaxlm.data import run_inputs
from jaxlm.data.corpus import read_text, stdlib_files, stdlib_root
from jaxlm.data.counters import COUNTS_KEY
from jaxlm.data.packing import real_token_fraction
from jaxlm.data.pipeline import mixture_dataset
from jaxlm.data.tokenizer import train_tokenizer
from jaxlm.models.attention import causal_segment_mask

WORKDIR = Path(tempfile.mkdtemp(prefix="jaxlm-data-"))
print("writing to", WORKDIR)

# %% [markdown]
# ## 1. The corpus and a tokenizer
#
# `stdlib_files("train")` lists the usable `*.py` files of the training split. The
# split is decided per file by a hash of its relative path, so it is the same on every
# machine. A full run trains its tokenizer on millions of characters; here 1024
# pieces on 300k characters of the first 80 files take well under a second.

# %%
files = stdlib_files("train")
print(f"{len(files)} training files under {stdlib_root()}, e.g.")
for path in files[:3]:
    print("  ", path.relative_to(stdlib_root()))

texts = [read_text(path) for path in files[:80]]
start = time.perf_counter()
tokenizer = train_tokenizer(texts, WORKDIR / "tok", vocab_size=1024, max_chars=300_000)
print(f"{tokenizer} trained in {time.perf_counter() - start:.2f}s")

# %% [markdown]
# Every jaxlm tokenizer pins the same special ids (padding 0, BOS 1, EOS 2, unknown 3,
# the two chat markers 4 and 5), followed by 256 byte-fallback pieces: any text, in
# any script, encodes losslessly. Learned pieces such as `▁=` (a space then `=`) or
# `):` are whole tokens; `▁` shows a space inside a piece.

# %%
for name in ("pad_id", "bos_id", "eos_id", "unk_id"):
    token_id = getattr(tokenizer, name)
    print(f"{name:7s} {token_id}  {tokenizer.id_to_piece(token_id)!r}")

snippet = "def area(radius):\n    return 3.14159 * radius ** 2  # π r²\n"
ids = tokenizer.encode(snippet)
print(f"\n{len(snippet.encode())} bytes -> {len(ids)} tokens:")
print([tokenizer.piece(i) for i in ids])
assert tokenizer.decode(ids) == snippet  # the round trip is exact

# %% [markdown]
# ## 2. Packing short documents
#
# A source is a Grain `MapDataset` of documents. To make packing visible, the
# documents here are the blank-line-separated blocks of a few stdlib files (a few to
# a hundred tokens each) rather than whole files. `mixture_dataset` is the same
# function a training run uses; its stages are
#
#     shuffle → tokenize ([BOS] + ids + [EOS]) → split documents longer than T
#     → pack pieces into rows (Grain's first-fit packer) → batch → targets and mask

# %%
blocks = [block for text in texts[:10] for block in text.split("\n\n") if block.strip()]
print(f"{len(blocks)} documents; the first:\n{blocks[0][:200]}")
source = grain.MapDataset.source(blocks)

SEQ_LEN, BATCH = 128, 4
options = dict(seq_len=SEQ_LEN, batch_size=BATCH, seed=0, shuffle_window=64)
dataset = mixture_dataset([source], tokenizer, num_packing_bins=16, **options)
batch = next(iter(dataset))
# Counts of what the pipeline has read so far (its shuffle window reads ahead).
counts = batch.pop(COUNTS_KEY)
print({key: value.shape for key, value in batch.items()}, counts)

# %% [markdown]
# `render_batch` prints every row segment by segment: its columns, its positions, and
# its decoded text, with the stretches that carry **no** loss wrapped in `⟦…⟧`. A
# segment's first token is never a training target: nothing before it in its own
# segment predicts it. For a whole document that token is BOS, which decodes to
# nothing; a segment that opens with a visible `⟦…⟧` is a later piece of a document
# longer than T, cut there, so it starts mid-text (at position 0 again).

# %%
print(render_batch(batch, tokenizer.decode, max_chars=160))

# %% [markdown]
# Token by token, the schema of the row holding the most documents: `targets[t]` is
# `tokens[t + 1]` when both are in the same segment, and `loss_mask` is 1 exactly
# there. Where one document ends (EOS) and the next begins (BOS), the EOS position
# has target 0 and loss 0: the model is never trained to predict the first token of
# an unrelated document.

# %%
row = int(np.argmax([len(np.unique(r[r > 0])) for r in batch["segment_ids"]]))
print("row", row)
boundary = int(np.flatnonzero(np.diff(batch["segment_ids"][row]))[0])
table = token_table(batch, tokenizer.piece, row=row, limit=boundary + 4).splitlines()
print("\n".join(table[:1] + table[max(1, boundary - 3) :]))

# %% [markdown]
# The whole batch at once. `plot_batch` (what `jaxlm data inspect --plot` writes)
# colours each segment, leaves padding white and greys out positions with no loss.
# Next to it: positions restart at 0 in every segment (RoPE sees each document from
# its own start), and the loss mask.

# %%
display(Image(filename=plot_batch(batch, WORKDIR / "batch.png")))

# %%
fig, axes = plt.subplots(1, 3, figsize=(15, 2.6))
padding = batch["segment_ids"] == 0
panels = [
    ("segment_ids", "tab10", "segment_ids (white: padding)"),
    ("positions", "viridis", "positions"),
    ("loss_mask", "Greys", "loss_mask (black: 1)"),
]
for ax, (key, cmap, title) in zip(axes, panels, strict=True):
    shown = np.ma.masked_where(padding, batch[key]) if key != "loss_mask" else batch[key]
    im = ax.imshow(shown, aspect="auto", cmap=cmap, interpolation="nearest")
    ax.set_title(title)
    ax.set_xlabel("column")
    ax.set_ylabel("row")
    fig.colorbar(im, ax=ax)
fig.tight_layout()
plt.show()

# %% [markdown]
# ## 3. The attention mask of one packed row
#
# `causal_segment_mask` is `causal & (segment_q == segment_k)`: a lower triangle cut
# into blocks, one per document. This is what makes a packed row compute exactly the
# same logits as its documents run one by one (a property the tests check). Padding
# (segment 0) attends only to padding, so no softmax row is empty; it carries no
# loss.

# %%
segment_ids = batch["segment_ids"][row : row + 1]
mask = np.asarray(causal_segment_mask(segment_ids))[0, 0]
fig, ax = plt.subplots(figsize=(6, 6))
ax.imshow(mask, cmap="Blues", interpolation="nearest")
for edge in np.flatnonzero(np.diff(segment_ids[0])) + 0.5:
    ax.axhline(edge, color="red", linewidth=0.6)
    ax.axvline(edge, color="red", linewidth=0.6)
ax.set_xlabel("key position")
ax.set_ylabel("query position")
ax.set_title(f"row {row}: {len(np.unique(segment_ids[segment_ids > 0]))} documents")
plt.show()
print(f"{int(mask.sum())} allowed query-key pairs of {mask.size}")

# %% [markdown]
# ## 4. Packers and document length
#
# How much of a batch is real tokens depends on the packer and on how document
# lengths compare to T. `first_fit` and `best_fit` fill `num_packing_bins` rows at a
# time and pad what is left when a piece fits none of them (more bins: less padding;
# runs default to `data.packing_bins=64`); `concat_then_split` fills every row
# completely by cutting documents across rows (each part then starts a new segment at
# position 0).

# %%
for packer, bins in [
    ("first_fit", 4),
    ("first_fit", 64),
    ("best_fit", 64),
    ("concat_then_split", 0),
]:
    stream = iter(
        mixture_dataset(
            [source], tokenizer, packer=packer, num_packing_bins=bins or None, **options
        )
    )
    fractions = [real_token_fraction(next(stream)) for _ in range(20)]
    print(f"{packer:18s} bins {bins or '-':>3}: real tokens {np.mean(fractions):.1%}")

# %% [markdown]
# A training run builds its stream from its config with `run_inputs.train_stream`
# (which calls `dataset_from_specs("stdlib", ...)` and then `mixture_dataset`): there
# every document is a whole stdlib file, thousands of tokens long, so at T = 64 a
# row is almost always one piece of one long file. The pieces after the first start
# mid-document, without BOS, at position 0.

# %%
cfg = apply_overrides(Config(), ["data.seq_len=64", "data.batch_size=4"])
run_batch = next(iter(run_inputs.train_stream(cfg, tokenizer, process_index=0, process_count=1)))
run_batch.pop(COUNTS_KEY)
print(render_batch(run_batch, tokenizer.decode, rows=2, max_chars=160))

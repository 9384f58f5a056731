"""`jaxlm generate`: complete prompts with a trained model (KV-cached, batched, streamed).

    jaxlm generate exports/quickstart "def parse_args(" --max-new-tokens 64
    jaxlm generate runs/quickstart --prompts-file prompts.txt --temperature 0.8 --top-p 0.95
    jaxlm generate exports/quickstart "x" --set model.rope_scaling=yarn ...

Prompts come from the arguments or from --prompts-file (one prompt per line of a text
file, or a .jsonl file of {"prompt": "..."} records; `\\n` in a text line is not
unescaped: use jsonl for multi-line prompts). Each prompt starts with BOS, as
training documents do. A single prompt streams to the terminal as it is generated;
several are generated as batches of --batch-size and printed in order. Generation
stops at the chat template's end-of-turn token `<|im_end|>` (unless
--ignore-end-of-turn: a chat model's answer ends there, and what follows is a turn
nobody asked for), at EOS (unless --ignore-eos), at any --stop token, or after
--max-new-tokens. Only whole characters are printed: a cut inside a character spelt
with byte tokens drops its first bytes (jaxlm.inference.streaming).
--think hide keeps a reasoning model's <think>...</think> off the screen.
--json OUT also writes every prompt, completion and token count.

Distillation data (sequence-level, black-box: the teacher's sampled answers become
the student's SFT targets):

    jaxlm generate exports/teacher --prompts-file prompts.jsonl --sft-out sft.jsonl \\
        --samples-per-prompt 4 --temperature 0.8 --top-p 0.95 --seed 0 [--drop-truncated]

writes one MiniMind SFT record per (prompt, sample), {"conversations": [the prompt's
turns..., {"role": "assistant", "content": COMPLETION}]}, ready for data.format=chat,
and OUT.settings.json with the model, tokenizer sha256, sampling settings and counts
(jaxlm.inference.sft_records). Here every prompt is a conversation: a text line or a
{"prompt"} record is one user turn, a {"messages"}/{"conversations"} record (system
turn included) is used as it is, and each is rendered as SFT renders it, so the
model answers in the layout it was trained on (unlike the display mode above, which
continues plain text). The completion keeps <think>...</think> as generated
(--think only changes what a display shows; nothing is displayed here). Generation
stops at the end of the turn; answers cut by --max-new-tokens are written and counted,
or with --drop-truncated left out and counted. Rows are the prompts in order, each
repeated --samples-per-prompt times, generated in batches of --batch-size with seed
--seed + the batch's first row: the same prompts, settings and batch size give the
same file. Both files are replaced atomically when the run ends, and never the prompts.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from jaxlm.errors import InputError

HELP = "generate text from prompts with a trained model (KV cache, sampling, streaming)"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from jaxlm.inference.cli_options import add_model_arguments, add_sampling_arguments

    add_model_arguments(parser)
    parser.add_argument("prompts", nargs="*", metavar="PROMPT", help="prompt texts")
    parser.add_argument("--prompts-file", default=None, help="a .txt (one per line) or .jsonl")
    add_sampling_arguments(parser, max_new_tokens=128)
    parser.add_argument(
        "--stop",
        action="append",
        default=[],
        metavar="PIECE",
        help="also stop at this token (a piece of the vocabulary, e.g. '<|im_end|>')",
    )
    parser.add_argument("--ignore-eos", action="store_true", help="do not stop at EOS")
    parser.add_argument(
        "--ignore-end-of-turn",
        action="store_true",
        help="do not stop at the chat template's end-of-turn token (<|im_end|>)",
    )
    parser.add_argument(
        "--think",
        choices=("show", "hide"),
        default="show",
        help="show (default) or hide the reasoning a model writes between <think> and </think>",
    )
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--no-stream", action="store_true", help="print only when done")
    parser.add_argument("--json", default=None, metavar="OUT", help="write results as JSON")
    sft = parser.add_argument_group("distillation data (SFT records)")
    sft.add_argument(
        "--sft-out",
        default=None,
        metavar="OUT",
        help="write each (prompt, sample) as a chat SFT record to OUT (jsonl), "
        "with the settings in OUT.settings.json, instead of printing",
    )
    sft.add_argument(
        "--samples-per-prompt", type=int, default=1, metavar="N", help="answers per prompt"
    )
    sft.add_argument(
        "--drop-truncated",
        action="store_true",
        help="leave out answers cut by --max-new-tokens (counted either way)",
    )


def read_prompts(path: str) -> list[str]:
    """Prompts of a .txt file (one per non-empty line) or a .jsonl file ({"prompt": ...})."""

    file = Path(path)
    if not file.is_file():
        raise FileNotFoundError(f"--prompts-file: no such file: {file}")
    prompts = []
    for number, line in enumerate(file.read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip():
            continue
        if file.suffix != ".jsonl":
            prompts.append(line)
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as error:
            raise InputError(f"{file}:{number}: not valid JSON ({error.msg})") from None
        if not isinstance(record, dict) or not isinstance(record.get("prompt"), str):
            raise InputError(f'{file}:{number}: expected an object with a string "prompt"')
        prompts.append(record["prompt"])
    return prompts


def stop_ids(tokenizer, pieces: list[str], *, eos: bool, end_of_turn: bool) -> list[int]:
    ids = [tokenizer.eos_id] if eos else []
    if end_of_turn:  # the chat template's end of turn, and the model's other stop tokens
        ids += [token_id for token_id in tokenizer.stop_ids if token_id != tokenizer.eos_id]
    for piece in pieces:
        token_id = tokenizer.piece_to_id(piece)
        unknown = token_id is None or (
            token_id == tokenizer.unk_id and piece != tokenizer.id_to_piece(tokenizer.unk_id)
        )
        if unknown:
            raise InputError(f"--stop {piece!r}: not a piece of the tokenizer's vocabulary")
        ids.append(token_id)
    return ids


def print_timing(rows: int, out) -> None:
    """One batch's token count and times, on stderr (stdout is the generated text)."""
    new = sum(len(t) for t in out.tokens)
    rate = new / out.decode_s if out.decode_s > 0 else float("nan")
    print(
        f"[{rows} prompt(s): {new} tokens; prefill {out.prefill_s:.2f} s, "
        f"decode {out.decode_s:.2f} s ({rate:.1f} tokens/s incl. compilation)]",
        file=sys.stderr,
    )


def run(args: argparse.Namespace) -> int:
    if args.sft_out is not None:
        return run_sft(args)
    if args.samples_per_prompt != 1 or args.drop_truncated:
        raise InputError("--samples-per-prompt and --drop-truncated go with --sft-out")
    from jaxlm.data.packing import document_prefix
    from jaxlm.inference.cli_options import load, sampling_config
    from jaxlm.inference.streaming import TextStream, complete_text
    from jaxlm.inference.think import ThinkFilter, split_think

    prompts = list(args.prompts) + (read_prompts(args.prompts_file) if args.prompts_file else [])
    if not prompts:
        raise InputError("no prompts: give PROMPT arguments or --prompts-file")
    if args.batch_size < 1:
        raise InputError(f"--batch-size {args.batch_size} must be >= 1")
    sampling = sampling_config(args)
    model, generator = load(args)
    tokenizer = model.tokenizer
    stops = stop_ids(
        tokenizer, args.stop, eos=not args.ignore_eos, end_of_turn=not args.ignore_end_of_turn
    )
    stream = len(prompts) == 1 and not args.no_stream
    results = []
    for first in range(0, len(prompts), args.batch_size):
        batch = prompts[first : first + args.batch_size]
        ids = [[*document_prefix(tokenizer), *tokenizer.encode(p)] for p in batch]
        on_tokens = None
        if stream:
            text_stream, think = TextStream(tokenizer), ThinkFilter(args.think)
            sys.stdout.write(batch[0])

            def on_tokens(step, tokens, emitted, text_stream=text_stream, think=think):
                if emitted[0]:
                    sys.stdout.write(think.push(text_stream.push(tokens[0])))
                    sys.stdout.flush()

        out = generator.generate(
            ids,
            max_new_tokens=args.max_new_tokens,
            sampling=sampling,
            stop_ids=stops,
            seed=args.seed + first,
            on_tokens=on_tokens,
        )
        rows = zip(batch, ids, out.tokens, out.stopped, strict=True)
        for prompt, prompt_ids, tokens, stopped in rows:
            completion = complete_text(tokenizer, tokens)
            shown, reasoning = split_think(completion, args.think)
            if stream:
                sys.stdout.write(think.push(text_stream.finish()) + think.finish() + "\n")
            else:
                print(f"{prompt}{shown}\n" + "-" * 40)
            # With --think hide, "completion" is what was shown and "reasoning" the rest.
            result = {"prompt": prompt, "completion": shown}
            if args.think == "hide":
                result["reasoning"] = reasoning
            results.append(
                {
                    **result,
                    "prompt_tokens": len(prompt_ids),
                    "new_tokens": len(tokens),
                    "stopped": stopped,
                }
            )
        print_timing(len(batch), out)
    if args.json:
        with open(args.json, "w", encoding="utf-8") as f:
            json.dump({"model": model.source, "results": results}, f, indent=2)
            f.write("\n")
    return 0


def run_sft(args: argparse.Namespace) -> int:
    """--sft-out: generate answers to chat prompts and write them as SFT records."""
    from jaxlm.data.atomic import atomic_text_writer
    from jaxlm.inference import sft_records
    from jaxlm.inference.cli_options import load, sampling_config
    from jaxlm.inference.streaming import complete_text

    refusals = [
        (args.prompts_file is None, "--sft-out reads its prompts from --prompts-file"),
        (bool(args.prompts), "--sft-out reads --prompts-file only, not PROMPT arguments"),
        (args.json is not None, "--sft-out writes the records; --json is for displayed runs"),
        (
            args.ignore_end_of_turn,
            "--sft-out writes assistant turns, which end at the end-of-turn token: "
            "--ignore-end-of-turn does not go with it",
        ),
        (args.samples_per_prompt < 1, f"--samples-per-prompt {args.samples_per_prompt} < 1"),
        (args.batch_size < 1, f"--batch-size {args.batch_size} must be >= 1"),
    ]
    for refused, message in refusals:
        if refused:
            raise InputError(message)
    sft_records.check_output(args.sft_out, args.prompts_file)
    # Read and checked before the model loads: a bad line fails in a second, not minutes.
    prompts = sft_records.read_chat_prompts(args.prompts_file)
    sampling = sampling_config(args)
    model, generator = load(args)
    tokenizer = model.tokenizer
    max_tokens = model.cfg.model.max_seq_len - args.max_new_tokens
    if max_tokens < 1:
        raise InputError(
            f"--max-new-tokens {args.max_new_tokens} leaves no room for a prompt in "
            f"model.max_seq_len={model.cfg.model.max_seq_len}"
        )
    encoded = sft_records.encode_prompts(prompts, tokenizer, max_tokens)
    stops = stop_ids(tokenizer, args.stop, eos=not args.ignore_eos, end_of_turn=True)
    samples = args.samples_per_prompt
    if samples > 1 and sampling.greedy:
        print(
            f"warning: --temperature 0 is greedy: the {samples} samples of each prompt "
            "will be the same",
            file=sys.stderr,
        )
    # Prompt-major: the samples of a prompt are neighbours, in the file as in the batches.
    rows = [row for row in zip(prompts, encoded, strict=True) for _ in range(samples)]
    counts = sft_records.SftCounts()
    with atomic_text_writer(args.sft_out) as file:
        writer = sft_records.RecordWriter(file)
        for first in range(0, len(rows), args.batch_size):
            batch = rows[first : first + args.batch_size]
            out = generator.generate(
                [ids for _, ids in batch],
                max_new_tokens=args.max_new_tokens,
                sampling=sampling,
                stop_ids=stops,
                # The display mode's seeds: one sample per prompt gives its answers.
                seed=args.seed + first,
            )
            for (prompt, _), tokens, stopped in zip(batch, out.tokens, out.stopped, strict=True):
                if counts.keep(stopped, drop_truncated=args.drop_truncated):
                    # The text as generated, reasoning included: --think is display only.
                    completion = complete_text(tokenizer, tokens)
                    writer.write(sft_records.conversation_record(prompt.messages, completion))
            print_timing(len(batch), out)
    settings = sft_records.sft_settings(
        model=model,
        overrides=args.overrides,
        prompts_file=args.prompts_file,
        prompts=len(prompts),
        samples_per_prompt=samples,
        sampling=sampling,
        seed=args.seed,
        max_new_tokens=args.max_new_tokens,
        batch_size=args.batch_size,
        stop={"eos": not args.ignore_eos, "end_of_turn": True, "pieces": list(args.stop)},
        drop_truncated=args.drop_truncated,
        counts=counts,
        sha256=writer.digest.hexdigest(),
    )
    settings_file = sft_records.write_settings(args.sft_out, settings)
    verb = "dropped" if args.drop_truncated else "kept"
    print(
        f"[wrote {counts.records} records ({len(prompts)} prompts x {samples} samples) to "
        f"{args.sft_out}; {counts.truncated} cut at --max-new-tokens {args.max_new_tokens} "
        f"({verb}); settings in {settings_file}]",
        file=sys.stderr,
    )
    return 0

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


def run(args: argparse.Namespace) -> int:
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
        new = sum(len(t) for t in out.tokens)
        rate = new / out.decode_s if out.decode_s > 0 else float("nan")
        print(
            f"[{len(batch)} prompt(s): {new} tokens; prefill {out.prefill_s:.2f} s, "
            f"decode {out.decode_s:.2f} s ({rate:.1f} tokens/s incl. compilation)]",
            file=sys.stderr,
        )
    if args.json:
        with open(args.json, "w", encoding="utf-8") as f:
            json.dump({"model": model.source, "results": results}, f, indent=2)
            f.write("\n")
    return 0

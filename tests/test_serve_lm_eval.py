r"""lm-evaluation-harness against `jaxlm serve`: the log-likelihoods of `jaxlm eval`.

A user runs the harness's `local-completions` model against the server's
/v1/completions, with the tokenizer `jaxlm convert --to-hf` writes (the export's own
tokenizer.json is jaxlm's format, which transformers cannot load), as the README shows:

    ARGS=model=NAME,base_url=http://HOST:PORT/v1/completions,tokenizer=HF_DIR
    ARGS=$ARGS,tokenizer_backend=huggingface,add_bos_token=True,max_length=CONTEXT
    lm_eval --model local-completions --model_args $ARGS --tasks TASK \
        --include_path TASKS_DIR --batch_size 8 --output_path OUT --log_samples

For each (context, continuation) the harness encodes context and context+continuation
with that tokenizer, takes the continuation's ids as the whole's past the context's,
posts the ids of both (prompt: list of token-id lists, echo: true, logprobs: 1,
max_tokens: 1) and sums `choices[i].logprobs.token_logprobs[ctxlen:-1]`: the prompt's
tokens past the context (the last entry is the one generated token's).

`jaxlm eval --multiple-choice` scores [BOS] + encode(context) followed by
encode(choice), encoded on its own. The two score the same tokens when
  - the harness adds BOS (`add_bos_token=True`: the exported tokenizer.json's
    post-processor puts <s> first, as jaxlm starts every document); without it the
    first context token would be scored with no BOS before it;
  - the task's continuation is the record's choice itself: choices carry their leading
    space and the task sets `target_delimiter: ""` (the harness's default " " would
    add a second one), and no context ends in whitespace (the harness moves trailing
    whitespace into the continuation);
  - encode(context + choice) == encode(context) + encode(choice): no piece spans the
    boundary, which a choice starting with a space after a context ending in a word
    gives with jaxlm's tokenizers (pieces hold a space only at their start);
  - the exported tokenizer.json encodes as jaxlm's SentencePiece model does.
The test does not assume these: it runs the harness's own request encoding
(`loglikelihood` -> `batch_loglikelihood_requests`, with the model_args of the command
line) and asserts that the token ids it posts are jaxlm's rows, and that the request
strings the task built are each record's context and choice. (jaxlm's embedded set,
`jaxlm data multiple-choice`, is chat style: its contexts end in "assistant\n", which
the harness scores with every choice, so its log-likelihoods differ from jaxlm's by
log p("\n" | context), the same for each choice of a record: equal accuracy, not equal
scores.)

Tolerance 1e-4 nats on each choice's sum: both sides run the same float32 model, with
different batch shapes, padding and programs (the server's prefill, the eval's padded
buckets), so each token's log-probability (up to ~20 in magnitude here) differs by a
few float32 ulps, and a sum of at most ~10 tokens by ~1e-5 (measured: 5e-6). A wrong
token (a missing BOS: ~4 nats here, a shifted slice, another tokenization) moves a sum
by far more. The accuracies are compared exactly; the margins of both argmaxes (scores,
and scores per byte) are checked to be far above the tolerance, so no rounding can
flip a prediction.
"""

import dataclasses
import json
import subprocess
import sys
from pathlib import Path

import jax
import numpy as np
import pytest
from lm_eval.api.instance import Instance
from lm_eval.api.registry import get_model

from jaxlm import cli
from jaxlm.checkpointing.params_io import save_params
from jaxlm.config import Config, DataConfig
from jaxlm.data.tokenizer import train_tokenizer
from jaxlm.inference.loading import load_model
from jaxlm.models.params import init_params
from jaxlm.presets import get_preset
from tests.helpers.live_server import live_server
from tests.helpers.runs import environment, tail

V = 320
MODEL = dataclasses.replace(get_preset("tiny"), vocab_size=V, max_seq_len=96)
TEXT = "The quick brown fox jumps over the lazy dog while the cat sleeps.\n" * 40
NAME = "tiny-mc"
TASK = "jaxlm_tiny_mc"
TOLERANCE = 1e-4

# jaxlm's multiple-choice records (context, choices, answer), read as they are by both
# tools. Each choice starts with its space; no context ends in whitespace.
RECORDS = [
    ("The quick brown fox jumps over the", [" lazy dog", " cat", " brown fox"], 0),
    ("The quick brown fox jumps over the lazy dog while the cat", [" sleeps.", " dog."], 0),
    ("The lazy dog", [" sleeps", " jumps over the fox"], 1),
    ("while the", [" cat sleeps", " quick brown fox", " dog"], 2),
    ("The cat sleeps while the quick", [" fox", " dog jumps", " cat"], 0),
]

TASK_YAML = """\
task: {task}
dataset_path: json
dataset_kwargs:
  data_files:
    test: {data}
test_split: test
output_type: multiple_choice
doc_to_text: context
doc_to_choice: choices
doc_to_target: answer
target_delimiter: ""
metric_list:
  - metric: acc
    aggregation: mean
    higher_is_better: true
  - metric: acc_norm
    aggregation: mean
    higher_is_better: true
  - metric: acc_bytes
    aggregation: mean
    higher_is_better: true
"""


def model_args(base_url: str, hf_dir: Path) -> str:
    return (
        f"model={NAME},base_url={base_url}/completions,tokenizer={hf_dir},"
        f"tokenizer_backend=huggingface,add_bos_token=True,max_length={MODEL.max_seq_len}"
    )


def offline_environment(tmp_path: Path) -> dict[str, str]:
    """No Hub: offline flags, an unreachable endpoint, and caches of the test's own."""
    return environment(
        1,
        HF_HUB_OFFLINE="1",
        HF_DATASETS_OFFLINE="1",
        TRANSFORMERS_OFFLINE="1",
        HF_ENDPOINT="http://127.0.0.1:9",
        HF_HOME=str(tmp_path / "hf-home"),
        OPENAI_API_KEY="none",
    )


def margin(scores) -> float:
    """How far the best score is above the second best."""
    top, second = np.sort(scores)[::-1][:2]
    return float(top - second)


def posted_requests(args: str, records) -> tuple[list[list[int]], list[int]]:
    """The prompts (token ids) and context lengths the harness posts for every choice."""
    lm = get_model("local-completions").create_from_arg_string(args)
    captured = []

    def capture(requests, **kwargs):
        captured.extend(requests)
        return [(0.0, False)] * len(requests)

    lm._loglikelihood_tokens = capture
    instances = [
        Instance("loglikelihood", doc=r, arguments=(r["context"], choice), idx=i)
        for r in records
        for i, choice in enumerate(r["choices"])
    ]
    lm.loglikelihood(instances, disable_tqdm=True)
    inputs, ctxlens, _ = lm.batch_loglikelihood_requests([captured])
    return inputs, ctxlens


@dataclasses.dataclass(frozen=True)
class Setup:
    export_dir: Path
    hf_dir: Path  # `jaxlm convert --to-hf`: the tokenizer the harness loads
    tasks: Path  # --include_path
    records: list[dict]
    jaxlm_eval: dict  # `jaxlm eval --multiple-choice --json`'s report of the file


@pytest.fixture(scope="module")
def setup(tmp_path_factory) -> Setup:
    root = tmp_path_factory.mktemp("lm_eval")
    tokenizer = train_tokenizer([TEXT], root / "tok", vocab_size=V)
    cfg = Config(model=MODEL, data=DataConfig(tokenizer_vocab_size=V, seq_len=32))
    # Weights 3x the init's: at init attention is nearly uniform and a sum hardly
    # depends on the context (dropping BOS moves it by ~3e-3 nats); scaled, by nats.
    params = jax.tree.map(lambda x: 3 * np.asarray(x), init_params(MODEL, jax.random.key(3)))
    export_dir = save_params(root / "export", params, cfg, tokenizer=tokenizer.path)
    hf_dir = root / "hf"
    assert cli.main(["convert", "--to-hf", str(export_dir), str(hf_dir)]) == 0

    data = root / "mc.jsonl"
    records = [{"context": c, "choices": cs, "answer": a} for c, cs, a in RECORDS]
    data.write_text("".join(json.dumps(r) + "\n" for r in records), encoding="utf-8")
    tasks = root / "tasks"
    tasks.mkdir()
    (tasks / f"{TASK}.yaml").write_text(TASK_YAML.format(task=TASK, data=data), encoding="utf-8")

    out = root / "jaxlm_eval.json"
    args = ["eval", str(export_dir), "--multiple-choice", str(data), "--json", str(out)]
    assert cli.main(args) == 0
    (report,) = json.loads(out.read_text())["multiple_choice"]
    return Setup(export_dir, hf_dir, tasks, records, report)


def test_the_harness_posts_the_token_ids_jaxlm_eval_scores(setup):
    tokenizer = load_model(setup.export_dir).tokenizer  # what `jaxlm eval` encodes with
    args = model_args("http://127.0.0.1:9/v1", setup.hf_dir)  # not contacted
    inputs, ctxlens = posted_requests(args, setup.records)
    expected_inputs, expected_ctxlens = [], []
    for record in setup.records:
        context = [tokenizer.bos_id, *tokenizer.encode(record["context"])]
        for choice in record["choices"]:
            expected_inputs.append([*context, *tokenizer.encode(choice)])
            expected_ctxlens.append(len(context))
    assert inputs == expected_inputs
    assert ctxlens == expected_ctxlens


def test_lm_eval_against_the_server_gives_jaxlm_eval_log_likelihoods(setup, tmp_path):
    output = tmp_path / "lm_eval_out"
    log = tmp_path / "lm_eval.log"
    with live_server(setup.export_dir, "--served-model-name", NAME, "--slots", "4") as server:
        cmd = [
            sys.executable, "-m", "lm_eval",  # no `run`: older versions take this form too
            "--model", "local-completions",
            "--model_args", model_args(server.base_url, setup.hf_dir),
            "--tasks", TASK,
            "--include_path", str(setup.tasks),
            "--batch_size", "4",
            "--output_path", str(output),
            "--log_samples",
        ]  # fmt: skip
        with log.open("wb") as out:
            code = subprocess.run(
                cmd,
                cwd=tmp_path,
                env=offline_environment(tmp_path),
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                timeout=300,
            ).returncode
        assert code == 0, f"lm-eval failed:\n{tail(log)}\n--- server:\n{server.tail()}"

    (samples_file,) = output.rglob(f"samples_{TASK}_*.jsonl")
    samples = sorted(
        (json.loads(line) for line in samples_file.read_text().splitlines()),
        key=lambda s: s["doc_id"],
    )
    assert [s["doc"] for s in samples] == setup.records
    examples = setup.jaxlm_eval["examples"]
    for sample, record, example in zip(samples, setup.records, examples, strict=True):
        # The strings the task built are the record's own: context, and each choice as is.
        requests = [sample["arguments"][f"gen_args_{i}"] for i in range(len(record["choices"]))]
        assert [(r["arg_0"], r["arg_1"]) for r in requests] == [
            (record["context"], choice) for choice in record["choices"]
        ]
        served = [float(resp[0][0]) for resp in sample["resps"]]
        np.testing.assert_allclose(served, example["scores"], rtol=0, atol=TOLERANCE)
        per_byte = np.divide(example["scores"], example["bytes"])
        assert margin(example["scores"]) > 100 * TOLERANCE  # predictions no rounding flips
        assert margin(per_byte) > 100 * TOLERANCE  # a choice has at least one byte
        assert sample["acc"] == float(example["correct"])

    (results_file,) = output.rglob("results_*.json")
    metrics = json.loads(results_file.read_text())["results"][TASK]
    assert metrics["acc,none"] == setup.jaxlm_eval["accuracy"]
    # jaxlm's acc_norm divides by UTF-8 bytes: the harness's acc_bytes (and, for ASCII
    # choices, its acc_norm, which divides by characters).
    assert metrics["acc_bytes,none"] == setup.jaxlm_eval["acc_norm"]
    assert metrics["acc_norm,none"] == setup.jaxlm_eval["acc_norm"]

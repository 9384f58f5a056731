"""Distillation (distill.teacher) steps and runs, end to end on tiny models.

What a user relies on: a distilled student beats the same student trained without
the teacher at equal steps (online and from a top-k table), the teacher never
changes, a teacher with another vocabulary is refused with both tokenizers named,
the sharded step equals the one-device step, a top-k table is reused by another
student and refused for other settings, a resume with another teacher is refused,
and on-policy (GKD) steps train on the student's own responses.
"""

import json
import shutil

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from helpers.runs import TINY, make_tokenizer

from jaxlm.checkpointing.params_io import save_params
from jaxlm.config import (
    Config,
    ConfigError,
    DistillConfig,
    ModelConfig,
    OptimConfig,
    apply_overrides,
)
from jaxlm.data.tokenizer import save_tokenizer, train_model_proto
from jaxlm.errors import InputError
from jaxlm.models.params import abstract_model, init_params, param_shardings
from jaxlm.presets import get_preset
from jaxlm.sharding import host_batch_to_global, make_mesh
from jaxlm.training.distill_steps import make_distill_step
from jaxlm.training.loop import train
from jaxlm.training.optim import learning_rate_schedule, make_optimizer
from jaxlm.training.state import TrainState, train_state_shardings
from jaxlm.training.steps import jit_train_step
from jaxlm.training.tasks.distill import MixedStream, response_batch

STUDENT = ["model.d_model=32", "model.n_layers=1", "model.n_heads=2", "model.n_kv_heads=1"]


def _run_cfg(tok, steps, extra=()):
    return apply_overrides(
        Config(),
        [
            *TINY,
            f"data.tokenizer={tok}",
            "data.eval_max_docs=8",
            f"train.steps={steps}",
            "train.log_every=5",
            "optim.lr=3e-3",
            *extra,
        ],
    )


def _summary(workdir):
    lines = (workdir / "metrics.jsonl").read_text().splitlines()
    return [json.loads(x) for x in lines if '"summary"' in x][-1]


@pytest.fixture(scope="module")
def teacher(tmp_path_factory):
    """(root, tokenizer, teacher workdir): a 2-layer model pretrained on the stdlib."""
    root = tmp_path_factory.mktemp("distill")
    tok = make_tokenizer(root)
    cfg = _run_cfg(
        tok, 150, ["model.d_model=64", "model.n_layers=2", "model.n_heads=4", "model.d_ff=192"]
    )
    train(cfg, root / "teacher")
    return root, tok, root / "teacher"


def test_distilled_student_beats_the_student_without_teacher(teacher):
    """Equal steps, data and seed: the online and top-k students end below the CE one."""
    root, tok, teacher_dir = teacher
    runs = {
        "ce": [],
        "online": [f"distill.teacher={teacher_dir}"],  # alpha 0.5: half CE, half KL
        "top_k": [f"distill.teacher={teacher_dir}", "distill.top_k=32"],
    }
    loss = {}
    for name, extra in runs.items():
        train(_run_cfg(tok, 40, [*STUDENT, *extra]), root / name)
        loss[name] = _summary(root / name)["eval_loss"]
    teacher_loss = _summary(teacher_dir)["eval_loss"]
    assert teacher_loss < loss["ce"]
    assert loss["online"] < loss["ce"] - 0.02, loss
    assert loss["top_k"] < loss["ce"] - 0.02, loss
    # Top-32 of 384 with the tail bucket lands where the online teacher does.
    assert abs(loss["top_k"] - loss["online"]) < 0.01, loss
    online = _summary(root / "online")
    # The online eval reports the teacher beside the student, on the same tokens.
    np.testing.assert_allclose(online["eval_teacher_loss"], teacher_loss, rtol=1e-4)
    assert online["eval_divergence"] > 0
    assert (root / "top_k" / "teacher_topk" / "manifest.json").is_file()


def test_a_top_k_table_is_reused_and_refused_for_other_settings(teacher, tmp_path):
    _, tok, teacher_dir = teacher
    table = tmp_path / "table"
    base = [*STUDENT, f"distill.teacher={teacher_dir}", "distill.top_k=4", f"distill.table={table}"]
    train(_run_cfg(tok, 6, base), tmp_path / "a")
    made = (table / "manifest.json").stat().st_mtime_ns
    assert json.loads((table / "manifest.json").read_text())["rows"] == 6 * 8
    # Another student (other shape, fewer steps) reads the same table, unchanged.
    train(_run_cfg(tok, 4, [*base, "model.d_model=48"]), tmp_path / "b")
    assert (table / "manifest.json").stat().st_mtime_ns == made
    with pytest.raises(InputError, match=r"temperature: table 1\.0, run 2\.0"):
        train(_run_cfg(tok, 4, [*base, "distill.temperature=2"]), tmp_path / "c")
    with pytest.raises(InputError, match="holds 48 rows; this run trains on 80"):
        train(_run_cfg(tok, 10, base), tmp_path / "d")
    with pytest.raises(InputError, match="seed"):
        train(_run_cfg(tok, 4, [*base, "data.seed=5"]), tmp_path / "e")


def test_a_teacher_with_another_vocabulary_is_refused(teacher, tmp_path):
    _, tok, _ = teacher
    from jaxlm.data.corpus import read_text, stdlib_files

    texts = [read_text(p) for p in stdlib_files("train")[:20]]
    other = save_tokenizer(
        train_model_proto(texts, vocab_size=384, max_chars=50_000), tmp_path / "o"
    )
    model = apply_overrides(Config(), [*TINY, f"data.tokenizer={other.path}"])
    save_params(
        tmp_path / "t", init_params(model.model, jax.random.key(0)), model, tokenizer=other.path
    )
    with pytest.raises(InputError, match="different vocabularies") as e:
        train(_run_cfg(tok, 2, [*STUDENT, f"distill.teacher={tmp_path / 't'}"]), tmp_path / "s")
    # Both tokenizers named: the run's (its workdir copy) and the teacher's.
    assert str(tmp_path / "s" / "tokenizer.model") in str(e.value)
    assert str(tmp_path / "t" / "tokenizer.model") in str(e.value) and "id " in str(e.value)


def test_a_resume_with_another_teacher_is_refused(teacher, tmp_path):
    """Same path, other weights: the checkpoint's teacher checksum no longer matches.
    (Another path is refused already, as a config difference.)"""
    _, tok, _ = teacher
    model = apply_overrides(Config(), [*TINY, f"data.tokenizer={tok}"])
    save_params(tmp_path / "t", init_params(model.model, jax.random.key(7)), model, tokenizer=tok)
    extra = [*STUDENT, "train.checkpoint_every=2", f"distill.teacher={tmp_path / 't'}"]
    train(_run_cfg(tok, 2, extra), tmp_path / "s")
    shutil.rmtree(tmp_path / "t")
    save_params(tmp_path / "t", init_params(model.model, jax.random.key(8)), model, tokenizer=tok)
    more = [*extra, "train.allow_config_change=train.steps"]
    with pytest.raises(InputError, match="distilled from teacher"):
        train(_run_cfg(tok, 4, more), tmp_path / "s")


def test_config_refusals():
    with pytest.raises(ConfigError, match="text or chat"):
        apply_overrides(Config(), ["distill.teacher=x", "data.format=preference"])
    with pytest.raises(ConfigError, match=r"data\.format=chat"):
        apply_overrides(Config(), ["distill.teacher=x", "distill.on_policy=0.5"])
    with pytest.raises(ConfigError, match="top_k=0"):
        apply_overrides(Config(), ["distill.on_policy=0.5", "distill.top_k=4"])
    with pytest.raises(ConfigError, match=r"\(0, 1\)"):
        apply_overrides(Config(), ["distill.loss=jsd", "distill.beta=0"])


# -- the step, on meshes -------------------------------------------------------------

S_CFG = get_preset("tiny")
T_CFG = ModelConfig(**{**S_CFG.__dict__, "d_model": 48, "n_layers": 3, "d_ff": 0})


def _batch(seed=0, B=8, T=16):
    rng = np.random.default_rng(seed)
    tokens = rng.integers(3, S_CFG.vocab_size, (B, T)).astype(np.int32)
    mask = (rng.random((B, T)) < 0.8).astype(np.int32)
    return {
        "tokens": tokens,
        "positions": np.broadcast_to(np.arange(T, dtype=np.int32), (B, T)).copy(),
        "segment_ids": np.ones((B, T), np.int32),
        "targets": np.roll(tokens, -1, axis=1),
        "loss_mask": mask,
    }


def _leaves(tree):
    return [np.asarray(x) for x in jax.tree.leaves(jax.device_get(tree))]


def test_sharded_teacher_and_student_equal_one_device_and_the_teacher_stays():
    # JSD reads both distributions (its mixture); the KLs are special cases of its terms.
    dcfg = DistillConfig(teacher="t", loss="jsd", beta=0.3, alpha=0.3, temperature=2.0)
    optim = OptimConfig(lr=3e-3, schedule="constant", warmup_steps=0)
    optimizer, schedule = make_optimizer(optim, 10), learning_rate_schedule(optim, 10)
    s_graph, _ = abstract_model(S_CFG)
    t_graph, t_abstract = abstract_model(T_CFG)
    params = jax.device_get(init_params(S_CFG, jax.random.key(0)))
    teacher = jax.device_get(init_params(T_CFG, jax.random.key(1)))
    teacher_copy = [x.copy() for x in _leaves(teacher)]
    state0 = TrainState(
        step=np.zeros((), np.int32),
        params=params,
        opt_state=jax.device_get(optimizer.init(params)),
        loss_ema=np.zeros((), np.float32),
    )
    batch = _batch()
    results = {}
    for shape, devices, accum in (
        ((1, 1, 1), jax.devices()[:1], 1),
        ((2, 2, 2), None, 1),
        ((2, 2, 2), None, 2),
    ):
        mesh = make_mesh(shape, devices)
        shardings = train_state_shardings(S_CFG, optimizer, mesh)
        t_shardings = param_shardings(t_abstract, mesh)
        fn = make_distill_step(
            s_graph, optimizer, schedule, dcfg, teacher_graphdef=t_graph, grad_accum=accum
        )
        step = jit_train_step(fn, shardings, mesh, extra=(t_shardings,))
        with jax.set_mesh(mesh):
            state = jax.device_put(state0, shardings)
            t_params = jax.device_put(teacher, t_shardings)
            b = host_batch_to_global(batch, mesh)
            history = []
            for _ in range(3):
                state, m = step(state, b, t_params)
                history.append({k: float(v) for k, v in m.items()})
            results[shape, accum] = (jax.device_get(state.params), history)
            for x, y in zip(_leaves(t_params), teacher_copy, strict=True):
                np.testing.assert_array_equal(x, y)  # the teacher is exactly as loaded
    ref_params, ref_history = results[(1, 1, 1), 1]
    assert ref_history[-1]["distill_loss"] < ref_history[0]["distill_loss"]
    for key in (((2, 2, 2), 1), ((2, 2, 2), 2)):
        p, history = results[key]
        for a, b in zip(history, ref_history, strict=True):
            for name in ("loss", "divergence", "distill_loss", "num_tokens"):
                np.testing.assert_allclose(a[name], b[name], rtol=2e-5, atol=1e-6)
        init = _leaves(params)
        for x, y, x0 in zip(_leaves(p), _leaves(ref_params), init, strict=True):
            assert np.linalg.norm(x - y) <= 1e-3 * np.linalg.norm(y - x0)


def test_alpha_one_is_the_next_token_step():
    """alpha = 1: the teacher has no say; the update is the plain LM step's."""
    from jaxlm.training.steps import make_lm_step

    optim = OptimConfig(lr=3e-3, schedule="constant", warmup_steps=0)
    optimizer, schedule = make_optimizer(optim, 10), learning_rate_schedule(optim, 10)
    s_graph, _ = abstract_model(S_CFG)
    t_graph, _ = abstract_model(T_CFG)
    params = init_params(S_CFG, jax.random.key(0))
    teacher = init_params(T_CFG, jax.random.key(1))

    def fresh():
        p = jax.tree.map(jnp.copy, params)
        return TrainState(jnp.zeros((), jnp.int32), p, optimizer.init(p), jnp.zeros(()))

    batch = {k: jnp.asarray(v) for k, v in _batch(3).items()}
    dstep = make_distill_step(
        s_graph,
        optimizer,
        schedule,
        DistillConfig(teacher="t", alpha=1.0),
        teacher_graphdef=t_graph,
    )
    a, ma = jax.jit(dstep)(fresh(), batch, teacher)
    b, mb = jax.jit(make_lm_step(s_graph, optimizer, schedule))(fresh(), batch)
    np.testing.assert_allclose(float(ma["loss"]), float(mb["loss"]), rtol=1e-6)
    for x, y in zip(_leaves(a.params), _leaves(b.params), strict=True):
        np.testing.assert_allclose(x, y, atol=1e-7)


# -- on-policy (GKD) -------------------------------------------------------------------


def test_response_batch_lays_prompt_and_response_out_as_one_row():
    prompts = jnp.asarray([[5, 6, 7, 0], [8, 0, 0, 0]], jnp.int32)
    lengths = jnp.asarray([3, 1], jnp.int32)
    tokens = jnp.asarray([[10, 11, 0], [12, 13, 14]], jnp.int32)
    mask = jnp.asarray([[1, 1, 0], [1, 1, 1]], jnp.int32)
    out = {k: np.asarray(v) for k, v in response_batch(prompts, lengths, tokens, mask).items()}
    np.testing.assert_array_equal(
        out["tokens"], [[5, 6, 7, 10, 11, 0, 0], [8, 12, 13, 14, 0, 0, 0]]
    )
    np.testing.assert_array_equal(out["segment_ids"], [[1] * 5 + [0] * 2, [1] * 4 + [0] * 3])
    np.testing.assert_array_equal(out["positions"], [[0, 1, 2, 3, 4, 0, 0], [0, 1, 2, 3, 0, 0, 0]])
    # Loss where the next token is a response token: predicting 10, 11 / 12, 13, 14.
    np.testing.assert_array_equal(out["loss_mask"], [[0, 0, 1, 1, 0, 0, 0], [1, 1, 1, 0, 0, 0, 0]])
    np.testing.assert_array_equal(out["targets"][0, 2:4], [10, 11])
    np.testing.assert_array_equal(out["targets"][1, :3], [12, 13, 14])


class _Counter:
    def __init__(self, name):
        self.name, self.i = name, 0

    def __iter__(self):
        return self

    def __next__(self):
        self.i += 1
        return (self.name, self.i)

    def get_state(self):
        return {"i": self.i}

    def set_state(self, s):
        self.i = s["i"]


def test_mixed_stream_draws_lambda_share_and_resumes_where_it_was():
    stream = MixedStream(_Counter("data"), _Counter("own"), 0.25, seed=3)
    first = [next(stream) for _ in range(400)]
    share = sum(kind == "own" for kind, _ in first) / 400
    assert 0.18 < share < 0.32
    state = json.loads(json.dumps(stream.get_state()))
    rest = [next(stream) for _ in range(50)]
    again = MixedStream(_Counter("data"), _Counter("own"), 0.25, seed=3)
    again.set_state(state)
    assert [next(again) for _ in range(50)] == rest


def test_on_policy_chat_distillation_trains_on_its_own_responses(teacher, tmp_path):
    _, tok, teacher_dir = teacher
    rng = np.random.default_rng(0)
    lines = []
    for _ in range(64):
        a, b = (int(x) for x in rng.integers(0, 50, 2))
        conv = [
            {"role": "user", "content": f"{a}+{b}="},
            {"role": "assistant", "content": str(a + b)},
        ]
        lines.append(json.dumps({"conversations": conv}))
    (tmp_path / "chat.jsonl").write_text("\n".join(lines) + "\n")
    chat = [
        "data.format=chat",
        f"data.sources=jsonl:{tmp_path / 'chat.jsonl'}",
        "data.val_fraction=0.2",
    ]
    extra = [
        *STUDENT,
        *chat,
        f"distill.teacher={teacher_dir}",  # a text LM with the same tokenizer will do
        "distill.on_policy=0.5",
        "distill.max_response_tokens=6",
        "distill.loss=jsd",
        "train.log_every=1",
    ]
    cfg = _run_cfg(tok, 6, extra)
    train(cfg, tmp_path / "gkd")
    recs = [json.loads(x) for x in (tmp_path / "gkd" / "metrics.jsonl").read_text().splitlines()]
    steps = [r for r in recs if r["split"] == "train"]
    # Which steps were the student's own: λ's draws, as the stream makes them.
    draws = MixedStream([], [], 0.5, cfg.data.seed)
    assert [r["on_policy"] for r in steps] == [int(draws.choose(n)) for n in range(6)]
    assert {r["on_policy"] for r in steps} == {0, 1}
    B = cfg.data.batch_size
    for r in steps:
        assert np.isfinite(r["divergence"]) and r["divergence"] > 0
        if r["on_policy"]:  # the loss reads exactly the sampled response tokens
            assert 1 <= r["response_tokens"] <= 6
            assert r["num_tokens"] == pytest.approx(r["response_tokens"] * B)

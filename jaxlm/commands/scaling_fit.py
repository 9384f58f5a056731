"""`jaxlm scaling-fit`: fit scaling laws to finished runs and size a model for a budget.

    jaxlm scaling-fit runs/sweep-* --out scaling/sweep --budget 1e18

Per RUN_DIR it takes N = non-embedding parameters (jaxlm.models.count_params with
include_embedding=False: every parameter but the token embedding; an untied output
head counts, norms count), the run's final eval loss (--loss train: the final train
loss), its model FLOPs C (logged, or derived from config.json; jaxlm.analysis.compare) and its
tokens D. It fits, with bootstrap uncertainty (jaxlm.analysis.scaling_law):

    L(N) = E + A / N^alpha     to the lowest loss of each model size
    L(C) = E + B / C^beta      to the compute frontier (runs with a lower loss than
                               every run that used less compute)
    L(N, D) = E + A / N^alpha + B / D^beta   to all runs, when they vary N and D
                               independently (>= 6 runs)

by least squares on log losses (--huber DELTA: the Huber loss of Hoffmann et al.), and
derives the compute-optimal size N_opt(C) = G (C / k)^a from L(N, D) with C = k N D,
k measured from the runs (their FLOPs over N D). The IsoFLOP estimate (parabola per
compute level) is added when the runs form such levels. Writes to --out:
scaling_fit.json, scaling_fit.md, scaling_fit.png/.svg (data, fit, bootstrap 95% band,
dashed extrapolation), and prints N_opt for --budget.

Runs that went NaN are left out; runs without a summary yet ("in progress") too,
unless --include-unfinished (their last loss is not a final one).
"""

from __future__ import annotations

import argparse
import json
import math
from pathlib import Path

from jaxlm.errors import InputError

HELP = "fit L(N), L(C) and L(N, D) scaling laws to runs; compute-optimal size for a budget"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("runs", nargs="+", metavar="RUN_DIR", help="finished run workdirs")
    parser.add_argument("--out", required=True, help="directory for the fit, tables and plots")
    parser.add_argument("--budget", type=float, default=None, help="compute budget in FLOPs")
    parser.add_argument("--loss", choices=["eval", "train"], default="eval")
    parser.add_argument("--bootstrap", type=int, default=1000, help="bootstrap resamples")
    parser.add_argument("--seed", type=int, default=0, help="bootstrap seed")
    parser.add_argument(
        "--huber", type=float, default=None, metavar="DELTA", help="Huber loss (e.g. 1e-3)"
    )
    parser.add_argument("--include-unfinished", action="store_true")


def run(args: argparse.Namespace) -> int:
    if args.bootstrap < 0:
        raise InputError(f"--bootstrap must be >= 0, got {args.bootstrap}")
    if args.budget is not None and not args.budget > 0:
        raise InputError(f"--budget must be a positive number of FLOPs, got {args.budget}")
    points, notes = _points([Path(p) for p in args.runs], args.loss, args.include_unfinished)
    report = _fit(points, args, notes)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "scaling_fit.json").write_text(json.dumps(report["json"], indent=2) + "\n")
    (out / "scaling_fit.md").write_text(report["markdown"], encoding="utf-8")
    figures = _plot(points, report, out / "scaling_fit")
    print(report["markdown"])
    for path in (out / "scaling_fit.json", out / "scaling_fit.md", *figures):
        print(f"wrote {path}")
    return 0


def _points(paths, which: str, include_unfinished: bool):
    """(runs as dicts with name, N, C, D, loss) and notes on the runs left out."""

    from jaxlm.analysis.compare import load_run, model_config
    from jaxlm.models import count_params

    points, notes, formats, sources = [], [], {}, {}
    for path in paths:
        run = load_run(path)
        f = run.final
        loss = f["final_eval_loss"] if which == "eval" else f["final_train_loss"]
        why = None
        if run.nan_step is not None:
            why = run.status
        elif run.status == "in progress" and not include_unfinished:
            why = "in progress (pass --include-unfinished to use its last loss)"
        elif loss is None:
            why = f"no {which} loss logged"
        elif f["flops"] is None or f["tokens"] is None:
            why = "FLOPs/tokens unknown (no config.json?)"
        if why:
            notes.append(f"{run.path}: left out: {why}")
            continue
        cfg_path = run.path / "config.json"
        if not cfg_path.is_file():
            raise FileNotFoundError(f"{cfg_path}: needed for the model size")
        config = json.loads(cfg_path.read_text(encoding="utf-8"))
        data = config.get("data") or {}
        formats.setdefault(data.get("format", "text"), []).append(str(run.path))
        sources.setdefault(data.get("eval_sources") or data.get("sources"), []).append(run.label)
        N = count_params(model_config(config, cfg_path), include_embedding=False)
        points.append(
            {
                "run": run.label,
                "path": str(run.path),
                "N": int(N),
                "D": float(f["tokens"]),
                "C": float(f["flops"]),
                "loss": float(loss),
                "status": run.status,
            }
        )
    points.sort(key=lambda p: (p["N"], p["D"]))
    if len(formats) > 1:
        raise InputError(f"the runs train different objectives (data.format): {formats}")
    if len(sources) > 1:
        notes.append(f"the runs evaluate on different data: {sources}")
    if len({p["N"] for p in points}) < 3 and len({p["C"] for p in points}) < 3:
        detail = "; ".join(notes) or "runs: " + ", ".join(str(p) for p in paths)
        raise InputError(
            f"a scaling fit needs at least 3 usable runs of distinct size or compute, "
            f"got {len(points)} ({detail})"
        )
    return points, notes


def _fit(points, args, notes):
    import numpy as np  # when the command runs: `jaxlm --help` imports every command

    from jaxlm.analysis import scaling_law as sl

    loss_kw = {"loss": "huber", "huber_delta": args.huber} if args.huber else {}
    N = np.array([p["N"] for p in points], dtype=float)
    C = np.array([p["C"] for p in points])
    D = np.array([p["D"] for p in points])
    y = np.array([p["loss"] for p in points])
    fits, boots, js = {}, {}, {}

    def one(name, fn, *cols, min_distinct=3):
        try:
            fit = fn(*cols, **loss_kw)
        except InputError as e:
            notes.append(f"{name} not fitted: {e}")
            return
        boot = None
        if fit.n_points <= len(fit.params()):
            notes.append(
                f"{name}: {fit.n_points} runs for {len(fit.params())} parameters: the curve "
                "passes through them and says nothing about its uncertainty (no bootstrap)"
            )
        elif args.bootstrap:
            kw = loss_kw
            boot = sl.bootstrap(
                lambda *c: fn(*c, **kw),
                *cols,
                n=args.bootstrap,
                seed=args.seed,
                min_distinct=min_distinct,
            )
        fits[name], boots[name] = fit, boot
        est = boot.estimates(fit) if boot else {}
        rename = {"A": "B", "alpha": "beta"} if name == "L(C)" else {}
        js[name] = {
            "params": {
                rename.get(k, k): est[k].as_dict() if k in est else {"value": v}
                for k, v in fit.params().items()
            },
            "rmse_log": fit.rmse_log,
            "n_points": fit.n_points,
            "bootstrap": {"n": args.bootstrap, "failed": boot.n_failed} if boot else None,
        }

    by_size, by_compute = _size_envelope(N, y), _compute_frontier(C, y)
    for i, p in enumerate(points):
        p["in_L(N)"], p["in_L(C)"] = bool(i in by_size), bool(i in by_compute)
    if len(by_size) >= 3:
        one("L(N)", sl.fit_power_law, N[by_size], y[by_size])
    else:
        notes.append("L(N) not fitted: fewer than 3 distinct model sizes")
    if len(by_compute) >= 3:
        one("L(C)", sl.fit_power_law, C[by_compute], y[by_compute])
    else:
        notes.append("L(C) not fitted: fewer than 3 runs on the compute frontier")
    X = np.stack([np.ones_like(N), np.log(N), np.log(D)], axis=1)
    if len(points) >= 6 and np.linalg.matrix_rank(X, tol=1e-6 * len(points)) == 3:
        one("L(N, D)", sl.fit_loss_nd, N, D, y, min_distinct=2)
    else:
        notes.append(
            "L(N, D) not fitted: it needs >= 6 runs whose sizes N and token counts D vary "
            "independently; without it there is no compute-optimal size"
        )

    k = C / (N * D)
    optimal = {"flops_per_param_token": float(np.median(k)), "k_range": [k.min(), k.max()]}
    if "L(N, D)" in fits:
        nd = fits["L(N, D)"]
        optimal["size_exponent"] = nd.size_exponent
        boot = boots["L(N, D)"]
        if boot:
            a = boot.samples["beta"] / (boot.samples["alpha"] + boot.samples["beta"])
            optimal["size_exponent_95"] = np.percentile(a, [2.5, 97.5]).tolist()
    try:
        iso = sl.isoflop_optimum(N, C, y)
        optimal["isoflop"] = {"a": iso.a, "G": iso.G, "levels": iso.levels}
    except InputError as e:
        iso = None
        optimal["isoflop"] = None
        notes.append(f"IsoFLOP estimate not made: {e}")
    if args.budget:
        optimal["budget"] = _at_budget(args.budget, fits, boots, optimal, iso)
    js_all = {
        "method": (
            "least squares on log losses"
            if not args.huber
            else f"Huber loss (delta={args.huber}) on log losses"
        )
        + "; grid over exponents + non-negative linear least squares, refined by "
        "Levenberg-Marquardt; bootstrap over runs (jaxlm.analysis.scaling_law)",
        "N": "non-embedding parameters: count_params(model, include_embedding=False)",
        "loss": f"final {args.loss} loss (nats/token)",
        "C": "model FLOPs, 6N' + 12·L·T·d per token (jaxlm.models.flops; N' = matmul params)",
        "runs": points,
        "fits": js,
        "compute_optimal": optimal,
        "notes": notes,
    }
    md = _markdown(js_all)
    return {"json": _jsonable(js_all), "markdown": md, "fits": fits, "boots": boots, "iso": iso}


def _size_envelope(N, y):
    """Per model size, the run with the lowest loss (its longest training)."""
    best: dict[float, int] = {}
    for i, n in enumerate(N):
        if n not in best or y[i] < y[best[n]]:
            best[n] = i
    return sorted(best.values(), key=lambda i: N[i])


def _compute_frontier(C, y):
    """Runs with a lower loss than every run that used less compute (the Pareto front)."""
    front, lowest = [], float("inf")
    for i in sorted(range(len(C)), key=lambda i: (C[i], y[i])):
        if y[i] < lowest:
            front.append(i)
            lowest = y[i]
    return front


def _at_budget(budget, fits, boots, optimal, iso):
    import numpy as np  # when the command runs: `jaxlm --help` imports every command

    out: dict = {"flops": budget}
    k = optimal["flops_per_param_token"]
    if "L(N, D)" in fits:
        nd = fits["L(N, D)"]
        n_opt, d_opt = nd.optimal_allocation(budget, k)
        out.update(n_opt=float(n_opt), d_opt=float(d_opt), loss=float(nd.predict(n_opt, d_opt)))
        boot = boots["L(N, D)"]
        if boot:
            s = boot.samples
            a, b = s["alpha"], s["beta"]
            G = (a * s["A"] / (b * s["B"])) ** (1 / (a + b))
            n_samples = G * (budget / k) ** (b / (a + b))
            out["n_opt_95"] = np.percentile(n_samples, [2.5, 97.5]).tolist()
    if "L(C)" in fits:
        out["loss_from_L(C)"] = float(fits["L(C)"].predict(budget))
    if iso is not None:
        out["n_opt_isoflop"] = float(iso.n_opt(budget))
    return out


def _markdown(js) -> str:
    def g(v):
        return "–" if v is None or (isinstance(v, float) and math.isnan(v)) else f"{v:.4g}"

    lines = ["# Scaling-law fit", ""]
    lines += [f"- N: {js['N']}", f"- loss: {js['loss']}", f"- C: {js['C']}"]
    lines += [f"- fit: {js['method']}", ""]
    lines += [
        "L(N) is fitted to the lowest loss of each model size, L(C) to the compute frontier "
        "(runs with a lower loss than every run using less compute), L(N, D) to all runs.",
        "",
        "| run | N | D (tokens) | C (FLOPs) | loss | in L(N) | in L(C) |",
        "|---|---|---|---|---|---|---|",
    ]
    for p in js["runs"]:
        lines.append(
            f"| {p['run']} | {p['N']:,} | {g(p['D'])} | {g(p['C'])} | {p['loss']:.4f} | "
            f"{'✓' if p['in_L(N)'] else ''} | {'✓' if p['in_L(C)'] else ''} |"
        )
    for name, fit in js["fits"].items():
        law = {
            "L(N)": "E + A / N^alpha",
            "L(C)": "E + B / C^beta",
            "L(N, D)": "E + A / N^alpha + B / D^beta",
        }[name]
        lines += ["", f"## {name} = {law}", ""]
        lines += ["| parameter | value | bootstrap std | 95% interval |", "|---|---|---|---|"]
        for pname, est in fit["params"].items():
            interval = f"[{g(est['lo'])}, {g(est['hi'])}]" if "lo" in est else "–"
            lines.append(f"| {pname} | {g(est['value'])} | {g(est.get('std'))} | {interval} |")
        lines.append("")
        boot = fit["bootstrap"]
        lines.append(
            f"RMS log residual {fit['rmse_log']:.4f} over {fit['n_points']} runs"
            + (f"; {boot['n']} bootstrap resamples ({boot['failed']} failed)." if boot else ".")
        )
    opt = js["compute_optimal"]
    lines += ["", "## Compute-optimal size", ""]
    lo, hi = opt["k_range"]
    lines.append(
        f"C = k N D with k = {opt['flops_per_param_token']:.3g} FLOPs per parameter and token "
        f"(median over the runs, range {lo:.3g}–{hi:.3g}; 6 for the matmuls of N alone)."
    )
    if "size_exponent" in opt:
        ci = opt.get("size_exponent_95")
        ci_text = f" (95% interval {ci[0]:.3f}–{ci[1]:.3f})" if ci else ""
        lines.append(
            f"From L(N, D): N_opt ∝ C^a with a = beta / (alpha + beta) = "
            f"{opt['size_exponent']:.3f}{ci_text}."
        )
    if opt.get("isoflop"):
        iso = opt["isoflop"]
        lines.append(f"IsoFLOP estimate: N_opt = {iso['G']:.3g} · C^{iso['a']:.3f}.")
    budget = opt.get("budget")
    if budget:
        lines += ["", f"At a budget of {budget['flops']:.3g} FLOPs:"]
        if "n_opt" in budget:
            ci = budget.get("n_opt_95")
            ci_text = f" (95% interval {ci[0]:.3g}–{ci[1]:.3g})" if ci else ""
            lines.append(f"- N_opt = {budget['n_opt']:.3g} non-embedding parameters{ci_text}")
            lines.append(f"- D_opt = {budget['d_opt']:.3g} tokens")
            lines.append(f"- predicted loss {budget['loss']:.4f} (L(N, D) at the optimum)")
        if "n_opt_isoflop" in budget:
            lines.append(f"- N_opt (IsoFLOP) = {budget['n_opt_isoflop']:.3g}")
        if "loss_from_L(C)" in budget:
            lines.append(f"- loss from L(C): {budget['loss_from_L(C)']:.4f}")
        if "n_opt" not in budget and "n_opt_isoflop" not in budget:
            lines.append("- no compute-optimal size: see the notes")
    if js["notes"]:
        lines += ["", "## Notes", ""] + [f"- {n}" for n in js["notes"]]
    return "\n".join(lines) + "\n"


def _jsonable(value):
    import numpy as np  # when the command runs: `jaxlm --help` imports every command

    if isinstance(value, dict):
        return {k: _jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_jsonable(v) for v in value]
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def _plot(points, report, stem):
    import numpy as np  # when the command runs: `jaxlm --help` imports every command

    from jaxlm.analysis.compare_plots import plot_scaling_fit

    fits, boots = report["fits"], report["boots"]
    names = [p["run"] for p in points]
    y = [p["loss"] for p in points]
    panels = []
    laws = (("L(N)", "N", "non-embedding parameters N", "α"), ("L(C)", "C", "FLOPs C", "β"))
    for name, key, label, exponent in laws:
        if name not in fits:
            continue
        boot = boots[name]
        used = [p[f"in_{name}"] for p in points]
        panels.append(
            {
                "x": [p[key] for p, u in zip(points, used, strict=True) if u],
                "y": [v for v, u in zip(y, used, strict=True) if u],
                "names": [v for v, u in zip(names, used, strict=True) if u],
                "x_other": [p[key] for p, u in zip(points, used, strict=True) if not u],
                "y_other": [v for v, u in zip(y, used, strict=True) if not u],
                "predict": fits[name].predict,
                "band_samples": _band(boot, fits[name]),
                "xlabel": label,
                "title": f"{name}: {exponent}={fits[name].alpha:.3f}, E={fits[name].E:.3f}",
            }
        )
    if "L(N, D)" in fits:
        nd = fits["L(N, D)"]
        k = report["json"]["compute_optimal"]["flops_per_param_token"]
        boot = boots["L(N, D)"]
        bands = []
        if boot:
            s = boot.samples
            for i in range(min(len(s["alpha"]), 300)):
                f = type(nd)(**{p: s[p][i] for p in nd.params()}, rmse_log=0.0, n_points=0)
                bands.append(lambda c, f=f: f.optimal_allocation(c, k)[0])
        panels.append(
            {
                "x": [p["C"] for p in points],
                "y": [p["N"] for p in points],
                "names": names,
                "predict": lambda c: nd.optimal_allocation(np.asarray(c), k)[0],
                "band_samples": bands,
                "xlabel": "FLOPs C",
                "ylabel": "non-embedding parameters N",
                "title": f"N_opt(C) ∝ C^{nd.size_exponent:.3f} (from L(N, D))",
                "fit_label": "N_opt(C)",
            }
        )
    if not panels:
        return []
    return plot_scaling_fit(panels, stem)


def _band(boot, fit):
    if not boot:
        return []
    s = boot.samples
    n = min(len(s["alpha"]), 300)
    return [
        type(fit)(E=s["E"][i], A=s["A"][i], alpha=s["alpha"][i], rmse_log=0.0, n_points=0).predict
        for i in range(n)
    ]

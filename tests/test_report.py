"""The study report: every file it names exists, summary.json has the contract's keys, the CLI verb."""
import argparse
import dataclasses
import json
import re

import numpy as np
import pytest

from vitreduce.cli import report_cmd
from vitreduce.errors import VitreduceError
from vitreduce.report.records import KindSummary, Spread, VariantEntry, VsBaseline
from vitreduce.report.summary_file import read_summary, summary_text
from vitreduce.report.write import format_results_table
from vitreduce.statistics.family import Family, SeedResult
from vitreduce.statistics.paired import TTest
from vitreduce.statistics.power import Detectable
from vitreduce.study.reporting import write_report

REQUIRED_KIND_KEYS = {"top1_final_mean", "top1_final_std", "top1_peak_mean", "peak_epoch_mean", "p2f_mean",
                      "p2f_std"}
ARCH = {"base": (86_567_656, 56_669_184, 12, 3072, 16.85), "grouped": (58_233_064, 28_334_592, 6, 3072, 16.85),
        "shallow": (58_237_672, 28_339_200, 12, 1536, 11.27)}


def _write_run(run_dir, variant, seed, *, epochs=6, ema=True, finished=True, n_images=300):
    """A run as the engine writes it, with accuracy and loss curves that differ by variant and seed."""
    run_dir.mkdir(parents=True)
    rng = np.random.default_rng(seed + 10 * len(variant))
    params, mlp_params, unique, hidden, macs = ARCH[variant]
    (run_dir / "config.yaml").write_text(f"seed: {seed}\n")
    (run_dir / "run.json").write_text(json.dumps({
        "model": "vit_base_patch16_224", "reduction": variant, "seed": seed, "params": params,
        "mlp_params": mlp_params, "unique_mlps": unique, "mlp_hidden": hidden, "embed_dim": 768,
        "macs_linear": round(macs * 1e9), "macs_total": round((macs + 0.72) * 1e9), "num_classes": 10,
        "epochs": epochs}))
    lines = []
    for e in range(1, epochs + 1):
        top1 = 40 + 30 * (1 - 0.6**e) + rng.normal(0, 0.5)
        loss = 2.0 * 0.85**e * (1.3 if (variant == "base" and e == 4) else 1.0)  # one loss spike in base
        lines.append({"epoch": e, "step": 10 * e, "lr": 1e-3, "train_loss": loss, "img_s": 100.0,
                      "raw": {"top1": top1, "top5": top1 + 20, "loss": 1.0},
                      "ema": {"top1": top1 - 1, "top5": top1 + 19, "loss": 1.1} if ema else None})
    (run_dir / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in lines))
    if finished:
        labels = np.arange(n_images) % 10
        acc = {"base": 0.6, "grouped": 0.7, "shallow": 0.62}[variant]
        raw = np.where(rng.random(n_images) < acc, labels, (labels + 1) % 10)
        ema_col = np.where(rng.random(n_images) < acc, labels, (labels + 1) % 10)
        rows = ["index,label,raw,ema"] + [f"{i},{labels[i]},{raw[i]},{ema_col[i] if ema else ''}"
                                          for i in range(n_images)]
        (run_dir / "predictions.csv").write_text("\n".join(rows) + "\n")
        (run_dir / "done.json").write_text(json.dumps({"epochs": epochs, "wall_s": 1.0, "final": {}}))


@pytest.fixture
def study(tmp_path):
    root = tmp_path / "study"
    for variant in ("base", "grouped"):
        for seed in (0, 1):
            _write_run(root / "runs" / variant / f"seed{seed}", variant, seed)
    _write_run(root / "runs" / "grouped" / "seed2", "grouped", 2, finished=False)
    _write_run(root / "runs" / "shallow" / "seed0", "shallow", 0, ema=False)  # n=1, no EMA
    (root / "study.yaml").write_text("name: paper\nvariants:\n  - {name: base}\n  - {name: grouped}\n"
                                     "  - {name: shallow}\n")
    (root / "throughput.json").write_text(json.dumps({"base": {"infer_img_s": 1020.0}}))
    return root


def test_report_files_summary_and_links(study):
    paths = write_report(study, n_resamples=200)
    md, page = paths.markdown.read_text(), paths.html.read_text()
    images = re.findall(r"!\[[^\]]*\]\(([^)\s]+)\)", md)
    assert len(images) == len(set(images)) == len(paths.figures) >= 3  # each figure once (the headline's too)
    assert all((study / src).is_file() for src in images)
    # report.html is one file to send: every figure inlined, its path kept as the image's title
    assert sorted(re.findall(r"<img src='data:image/png;base64,[A-Za-z0-9+/=]+' alt='[^']*' title='([^']+)'", page)) \
        == sorted(images)
    assert {study / src for src in images} == set(paths.figures)
    assert not list(study.rglob("*.tmp"))

    document = json.loads(paths.summary_json.read_text())
    # summary.json: its format, the study-level results (a `pareto`: 3 variants of different cost on one base
    # model) and the variants, apart
    assert list(document) == ["format", "study", "variants"] and document["format"] == 2
    assert document["study"]["name"] == "paper" and document["study"]["baseline"] == "base"
    assert document["study"]["pareto"]["groups"]["vit_base_patch16_224 (width 768)"]["baseline"] == "base"
    summary = document["variants"]
    assert list(summary) == ["base", "grouped", "shallow"]
    assert summary_text(read_summary(paths.summary_json)) == paths.summary_json.read_text()  # read back, as written
    for entry in summary.values():
        assert {"n", "reduction", "params", "raw", "ema"} <= set(entry)
        assert set(entry["raw"]) >= REQUIRED_KIND_KEYS and set(entry["ema"]) >= REQUIRED_KIND_KEYS
    assert summary["grouped"]["n"] == 2 and summary["grouped"]["seeds"] == [0, 1]  # seed2 unfinished: left out
    assert summary["shallow"]["raw"]["top1_final_std"] is None  # n=1
    assert all(v is None for k, v in summary["shallow"]["ema"].items() if k != "n")
    assert summary["base"]["throughput_img_s"] == 1020.0 and summary["grouped"]["throughput_img_s"] is None
    assert summary["shallow"]["expansion"] == 2.0 and summary["base"]["loss_spikes_mean"] == 1.0
    vs = summary["grouped"]["vs_baseline"]
    assert vs["baseline"] == "base" and vs["seeds"] == [0, 1] and set(vs) >= {"raw", "ema"}
    pooled = vs["raw"]["pooled"]
    assert pooled["bootstrap"]["n_images"] == 300 and pooled["bootstrap"]["n_seeds"] == 2  # images, not x seeds
    assert pooled["mcnemar"]["test"].startswith("clustered McNemar") and pooled["mcnemar"]["n_images"] == 300
    # shallow has no EMA, so the confirmatory family is raw final top-1 (the default, said in the report)
    assert vs["primary"] == "raw_top1_final" and vs["correction"] == "holm" and vs["effect"] == 0.42
    first = vs["seed_level"][0]
    assert first["family"]["name"] == "confirmatory: raw_top1_final" and first["family"]["variants"] == ["grouped",
                                                                                                       "shallow"]
    assert first["evidence"] == "confirmatory" and first["level"] == "seed" and first["p_adjusted"] >= first["p"]
    assert first["verdict"] in ("better", "worse", "no evidence of a difference")
    assert first["detectable"]["alpha"] == pytest.approx(0.05 / 2)
    assert {r["family"]["evidence"] for r in vs["seed_level"][1:]} == {"exploratory"}
    assert summary["shallow"]["vs_baseline"]["seed_level"][0]["detectable"]["reason"].startswith("n=1")

    # The statistics section leads with the family and method; verdicts only from the seed level.
    lead = md.split("## Statistics against the baseline (base)\n\n")[1].split("\n")[0]
    assert lead.startswith("Confirmatory family: the 2 comparison(s) of each variant with the baseline on final "
                           "top-1 of the raw model (primary metric raw_top1_final, the default), Holm")
    assert "- grouped: only n=2 paired seeds (df=1)" in md
    assert "grouped: runs/grouped/seed2: unfinished (epoch 6 of 6, no done.json)" in md
    assert "significant" not in md
    appendix = md.split("\n## Appendix\n")[1]
    rows = [line.strip("|").split(" | ") for line in appendix.splitlines() if line.startswith("| seed ")]
    assert rows and all("better" not in "".join(r) and "worse" not in "".join(r) for r in rows)  # about the models
    for row in rows:  # each cell a number, one reading per row from both tests
        low, high = map(float, row[6].strip("[]").split(", "))
        assert row[9].strip() == {(True, True): "differ (CI excludes 0, p < alpha)",
                                  (False, False): "no difference shown",
                                  (True, False): "CI excludes 0, McNemar does not reject",
                                  (False, True): "McNemar rejects, CI includes 0"}[(low > 0 or high < 0,
                                                                                    float(row[8]) < 0.05)]
    assert appendix.count("these trained models differ on this test set") == 1  # said once, in the method
    assert re.search(r"<td class='num'>\+?\d+\.\d+ ± \d+\.\d+</td>", page)  # numbers right-aligned
    assert "<td class='num'>grouped</td>" not in page
    assert "<table>" in page and "EMA model" in page and "1,020 img/s" in md


def test_results_table_for_the_terminal(study):
    summary = write_report(study, n_resamples=50).summary
    text = format_results_table(summary)
    assert text.index("EMA model") < text.index("raw model")
    assert "base (baseline)" in text and "1,020 img/s" in text and "n/a" in text
    assert text.splitlines()[1].startswith("variant")


def _args(study_dir, *extra):
    parser = argparse.ArgumentParser()
    report_cmd.add_arguments(parser)
    return parser.parse_args([str(study_dir), *extra])


def test_report_command(study, tmp_path, capsys):
    assert report_cmd.run(_args(study, "--baseline", "grouped", "--resamples", "50", "--include-unfinished")) == 0
    out = capsys.readouterr().out
    assert "grouped (baseline)" in out and f"report: {study / 'report.md'}" in out
    assert read_summary(study / "summary.json").variants["grouped"].n == 3
    with pytest.raises(VitreduceError, match="does not exist"):
        report_cmd.run(_args(tmp_path / "nowhere"))
    (tmp_path / "empty").mkdir()
    with pytest.raises(VitreduceError, match="no runs found"):
        report_cmd.run(_args(tmp_path / "empty"))
    with pytest.raises(VitreduceError, match="baseline variant 'typo'"):
        report_cmd.run(_args(study, "--baseline", "typo"))


def test_statistics_settings_from_the_spec_and_the_flags(study):
    (study / "study.yaml").write_text((study / "study.yaml").read_text()
                                      + "statistics: {correction: bh, effect: 1.5, alpha: 0.1}\n")
    vs = write_report(study, n_resamples=20).summary["grouped"].vs_baseline
    assert (vs.correction, vs.effect, vs.alpha) == ("bh", 1.5, 0.1)
    md = (study / "report.md").read_text()
    assert "Benjamini-Hochberg (false discovery rate) correction at alpha=0.1" in md and "seeds for +1.50 pp" in md
    args = _args(study, "--correction", "holm", "--primary", "raw_p2f", "--resamples", "20")
    assert report_cmd.run(args) == 0
    vs = read_summary(study / "summary.json").variants["grouped"].vs_baseline
    assert (vs.correction, vs.primary, vs.alpha) == ("holm", "raw_p2f", 0.1)
    assert "(primary metric raw_p2f, named by --primary)" in (study / "report.md").read_text()


def test_bad_statistics_settings_are_refused_before_any_file_is_written(study):
    with pytest.raises(VitreduceError, match="no comparison has an EMA model"):
        write_report(study, primary="ema_top1_final", baseline="shallow")  # shallow has no EMA
    with pytest.raises(VitreduceError, match="alpha"):
        write_report(study, alpha=1.5)
    (study / "study.yaml").write_text((study / "study.yaml").read_text() + "statistics: {correction: bonferroni}\n")
    with pytest.raises(VitreduceError, match="correction"):
        write_report(study)
    assert not (study / "summary.json").exists() and not (study / "report.md").exists()


def _write_steps(run_dir, seed, spike_at=None):
    """A steps.jsonl as the engine writes it: 80 logged steps of noisy loss, a falling gradient norm."""
    rng = np.random.default_rng(seed)
    lines = []
    for i in range(80):
        loss = 2.0 - 0.005 * i + rng.normal(0, 0.02) + (1.0 if i == spike_at else 0.0)
        lines.append({"step": 10 * (i + 1), "epoch": 1 + i // 20, "lr": 1e-3, "loss": loss,
                      "grad_norm": 5.0 * 0.95**i, "update_norm": 1e-3, "skipped": False,
                      "mlp_grad_norm": {"blocks.0.mlp": 1.0}})
    (run_dir / "steps.jsonl").write_text("".join(json.dumps(r) + "\n" for r in lines))


def test_report_uses_step_spikes_and_draws_the_gradient_norm_when_runs_have_steps(study):
    before = write_report(study, n_resamples=50)  # no run has steps.jsonl: the report is as before
    md = before.markdown.read_text()
    assert "Step-level" not in md and not (study / "figures" / "grad_norm.png").exists()
    assert before.summary["base"].step_spikes == Spread(None, None)
    _write_steps(study / "runs" / "base" / "seed0", 0, spike_at=60)
    _write_steps(study / "runs" / "base" / "seed1", 1)
    _write_steps(study / "runs" / "grouped" / "seed0", 2)  # grouped seed1 has none (an older run)
    paths = write_report(study, n_resamples=50)
    md = paths.markdown.read_text()
    assert "figures/grad_norm.png" in md and (study / "figures" / "grad_norm.png").is_file()
    summary = read_summary(paths.summary_json).variants
    assert summary["base"].step_spikes.mean == 0.5 and summary["grouped"].step_spikes.mean == 0.0
    assert summary["grouped"].step_spikes.std is None and summary["shallow"].step_spikes.mean is None
    assert summary["base"].loss_spikes == before.summary["base"].loss_spikes  # epochs: unchanged
    stability = md.split("## Training stability")[1].split("\n## ")[0]
    assert "Step-level loss spike" in stability and "seed 0: [610]; seed 1: none" in stability
    assert "seed 1: no steps.jsonl" in stability


def _result(evidence, kind, metric, verdict, diff, *, n=2, p_adj=None, correction="holm", size=3, testable=True,
            min_effect=None, needed=None) -> SeedResult:
    """A seed-level result as vitreduce.statistics.family.seed_level makes it."""
    family = Family(f"{evidence}: {kind}_{metric}", evidence, kind, metric, correction, 0.05,
                    tuple(f"v{i}" for i in range(size)))
    test = TTest(n, n - 1, diff, None, None, None, confidence=0.95, ci_low=diff - 1 if testable else None,
                 ci_high=diff + 1 if testable else None)
    reason = None if testable else f"n={n} paired seed(s): the seed-to-seed spread needs at least 2"
    detectable = Detectable(0.8, 0.05, n, None, min_effect, 0.42, needed, False, reason)
    return SeedResult(family, "a", test, p_adj, verdict, detectable)


def _entry(verdict=None, n=2, diff=0.1, p_adj=0.5, min_effect=64.0, needed=204, metric="top1_final",
           correction="holm", size=3, exploratory=None):
    """A variant's record as write_report makes it; verdict None: the baseline (no comparison)."""
    kind = KindSummary(n, Spread(70.0, 1.0 if n > 1 else None), *[Spread(None, None)] * 3, Spread(0.5, None))
    entry = VariantEntry(**{f.name: None for f in dataclasses.fields(VariantEntry)} | {
        "params": 58_000_000, "raw": kind, "ema": kind, "sharpness": {}, "baseline": False})
    if verdict is None:
        return entry
    testable = verdict != "not testable"
    confirmatory = _result("confirmatory", "ema", metric, verdict, diff, n=n, p_adj=p_adj if testable else None,
                           correction=correction, size=size, testable=testable,
                           min_effect=min_effect if testable else None, needed=needed if testable else None)
    exploratory = exploratory or _result("exploratory", "raw", "p2f", "better", 0.1)  # never stated in the headline
    return dataclasses.replace(entry, vs_baseline=VsBaseline("base", 0.05, (), None, correction, 0.42,
                                                             (confirmatory, exploratory), None, None))


def test_headline_without_a_verdict_states_what_the_seeds_could_detect():
    from vitreduce.report.headline import headline, headline_table

    summary = {"base": _entry(), "a": _entry("no evidence of a difference", min_effect=152.4, needed=1144),
               "b": _entry("no evidence of a difference"), "c": _entry("no evidence of a difference", needed=500)}
    lines = headline(summary, "base")
    assert lines[0] == ("With 2 paired seeds per variant, no variant differs from the baseline (base) in final top-1 "
                        "of the EMA model at the family-wise 5% level (Holm, 3 comparisons).")
    assert lines[1] == ("Weak evidence whatever the p-value: a, b, c rest on 2 paired seeds (df=1), with almost no "
                        "power and no way to check the t-test's normality.")
    assert lines[2] == ("At 80% power these seeds could only have detected differences of 64-152 pp; detecting "
                        "+0.42 pp would take 204-1,144 paired seeds per variant.")
    assert "exploratory" in lines[-1] and not any("better" in s for s in lines)
    headers, rows = headline_table(summary, "base", "ema_top1_final")
    assert headers[3] == "final top-1, EMA model (mean ± sd over n)" and rows[0][6] == "(baseline)"
    assert rows[1] == ["a", "2", "58.00M", "70.00 ± 1.00", "2", "n/a", "+0.10 [-0.90, +1.10]", "0.5",
                       "no evidence of a difference"]


def test_headline_names_the_better_variant_with_its_interval():
    from vitreduce.report.headline import headline

    summary = {"base": _entry(), "a": _entry("better", diff=0.8, p_adj=0.01, correction="bh", size=2),
               "b": _entry("no evidence of a difference", correction="bh", size=2)}
    first = headline(summary, "base")[0]
    assert first == ("With 2 paired seeds per variant, in final top-1 of the EMA model at a 5% false discovery rate "
                     "(Benjamini-Hochberg, 2 comparisons): a is better than the baseline (base) by +0.80 pp, 95% CI "
                     "[-0.20, +1.80] pp, adjusted p=0.01; the other 1 show no evidence of a difference.")


def test_headline_with_one_seed_claims_nothing():
    from vitreduce.report.headline import headline

    lines = headline({"base": _entry(n=1), "a": _entry("not testable", n=1, size=1)}, "base")
    assert lines[0] == ("Not testable against the baseline (base) in final top-1 of the EMA model, so no claim either "
                        "way: a (n=1 paired seed(s): the seed-to-seed spread needs at least 2).")
    assert len(lines) == 2 and "exploratory" in lines[1]  # no power sentence: nothing computable
    assert "supports no claim" in headline({"base": _entry()}, "base")[0]


def test_report_leads_with_the_headline_and_ends_with_the_appendix(study):
    from vitreduce.report.headline import headline

    paths = write_report(study, n_resamples=20)
    md = paths.markdown.read_text()
    headings = re.findall(r"^(#+) (.*)$", md, re.M)
    assert headings[0] == ("#", "Study report: paper") and headings[1] == ("##", "Headline")
    assert [h for level, h in headings if level == "##"][-1] == "Appendix"
    headline_section = md.split("## Headline\n\n")[1].split("\n## ")[0]
    sentences = headline(read_summary(paths.summary_json).variants, "base")
    assert " ".join(sentences) in headline_section and headline_section.count("![") == 1
    assert "| variant | n | params | final top-1, raw model (mean ± sd over n) | paired seeds |" in headline_section
    appendix = md.split("\n## Appendix\n")[1]
    assert "(image level)" in appendix and "(image level)" not in md.split("\n## Appendix\n")[0]


@pytest.mark.parametrize(("flags", "match"), [
    (["--resamples", "1000000000"], r"--resamples must be in \[1, 100,000\]"),
    (["--resamples", "0"], r"--resamples must be in"),
    (["--bootstrap-seed", "-1"], r"--bootstrap-seed must be an integer in \[0, 2\^63\)"),
])
def test_report_options_out_of_bounds_are_refused_before_any_work(study, flags, match):
    with pytest.raises(VitreduceError, match=match):
        report_cmd.run(_args(study, *flags))
    assert not (study / "summary.json").exists() and not (study / "figures").exists()


def test_a_figures_path_that_is_a_file_is_refused_and_kept(study):
    (study / "figures").write_text("mine")
    with pytest.raises(VitreduceError, match="figures is not a folder"):
        write_report(study, n_resamples=20)
    assert (study / "figures").read_text() == "mine" and not (study / "report.md").exists()


def test_a_raw_ema_reversal_is_flagged_in_one_sentence():
    from vitreduce.report.headline import headline

    reversed_ = _entry("better", diff=0.8, p_adj=0.01, size=1,
                       exploratory=_result("exploratory", "raw", "top1_final", "worse", -1.5))
    lines = headline({"base": _entry(), "a": reversed_}, "base")
    assert ("Reversal: a's EMA model is better (+0.80 pp) but its raw model is worse (-1.50 pp) than the baseline's "
            "in final top-1, so neither model's verdict stands for the variant.") in lines
    agreeing = _entry("better", diff=0.8, p_adj=0.01, size=1)
    assert not any(s.startswith("Reversal") for s in headline({"base": _entry(), "a": agreeing}, "base"))

"""The claims the study judges: each paper's statements with its figures, and what each compares; `study()` joins them
with the runs and sweeps of `claims` (the study's machinery, which imports nothing from here).

Dilated Affinity's propagation rows come in both readings of Eq. 6's self term (`affinity.SELF_TERMS`) and both
readings of what DA Tables 3-4's T counts (`claims.T_READINGS`): at "0 iterations" the ground-truth row is 81.16 /
82.33 while the predicted row is 78.96 / 78.62, so "0" cannot mean "no refinement" for the ground-truth row; either T
counts passes (T = 0: none) or passes after a first one (T = 0: one pass).
"""

from __future__ import annotations

from difnet_jax.models import affinity
from difnet_jax.studies.claims import (
    T_READINGS,
    WEIGHTINGS,
    Claim,
    Comparison,
    PropagationSweep,
    Quantity,
    Study,
    runs,
    sweeps,
)

SQRT = "deeplabv3plus18_affinity_sqrt_pretrained"
WEIGHTING_PAPER = {"none": "77.52", "signal": "77.96", "neighbor": "78.40", "sqrt": "78.74"}
PROPAGATION_PAPER = {0: "78.62", 1: "78.91", 3: "79.09", 10: "79.21"}  # DA Table 4, own affinity
# What changed in every run since the table of 2026-11-29, beside the judging rule and the seeds (3 -> 5).
RULE = "judged by a 95 % interval (was: the difference against the larger std), 5 seeds a side"


def _c(key, statement, paper, better, worse, at_least=False) -> Comparison:
    as_quantity = lambda q: q if isinstance(q, Quantity) else Quantity(*q) if isinstance(q, tuple) else Quantity(q)  # noqa: E731
    return Comparison(key, statement, paper, as_quantity(better), as_quantity(worse), at_least)


def _propagation_rows(term: str) -> list[Comparison]:
    """Own affinity T = 1 > 0, 3 > 1, 10 > 3 and ground truth > own at T = 10, under each reading of T."""
    rows = []
    for reading, passes in T_READINGS.items():
        own = lambda t, passes=passes: Quantity(SQRT, passes=passes[t], reading=term)  # noqa: E731
        tag = f"{term}, {reading}"
        for s, t in ((0, 1), (1, 3), (3, 10)):
            rows.append(Comparison(f"own_T{t}_T{s}_{term}_{reading}", f"own affinity: T = {t} > T = {s} "
                                   f"({passes[t]} vs {passes[s]} passes; self term {tag})",
                                   f"{PROPAGATION_PAPER[t]} vs {PROPAGATION_PAPER[s]}", own(t), own(s)))
        rows.append(Comparison(f"oracle_T10_{term}_{reading}", f"ground-truth affinity T = 10 > own affinity T = 10 "
                               f"({passes[10]} passes; self term {tag})", "83.59 vs 79.21",
                               Quantity(SQRT, passes=passes[10], reading=term, oracle=True), own(10)))
    return rows


def claims() -> tuple[Claim, ...]:
    return (
        Claim("difnet_vs_simdeeplab", "DifNet > Sim-DeepLab at equal depth", "DifNet Table 1", (
            _c("difnet_scratch", "DifNet-18 > Sim-DeepLab-18, from scratch", "70.17 vs 66.33 (depth 18)",
               "difnet18_scratch", "simdeeplab18_scratch"),
            _c("difnet_pretrained", "DifNet-18 > Sim-DeepLab-18, fine-tuned from the synthetic ImageNet (the "
               "protocol of the authors' released code)", "- (the paper's Table 1 trains from scratch; the released "
               "main.py fine-tunes from ImageNet)", "difnet18_pretrained", "simdeeplab18_pretrained")),
            "From scratch is the paper's protocol (Sec. 5.1); fine-tuned is the protocol of the authors' released "
            "main.py, with the lr grouping (one rate as their main.sh, or backbones x1 and new layers x10) chosen on "
            "held-out data for each model.",
            f"{RULE}; the logits upsampled as the authors' main.py (half-pixel centres, was aligned corners); "
            "fine-tuned: the lr grouping selected on held-out data (was two groups)"),
        Claim("walks", "dropping walks 2 and 4 costs about a point", "DifNet Sec. 5.3", (
            _c("walks", "DifNet-18 (walks 1-5) > DifNet-18 without walks 2 and 4 (walks 1, 3, 5), from scratch",
               "about 1 point (DifNet-50)", "difnet18_scratch", "difnet18_walks135_scratch"),),
            "The paper ablates DifNet-50; the study DifNet-18 (the CPU's budget), `model.difnet.walks=(1,3,5)`.",
            f"{RULE}; the authors' upsampling"),
        Claim("pdn", "PDN 24NB > 8NB > its DeepLab baseline; 2M >= 1M; per-layer mIoU rises layer by layer",
              "PDN Tables 2 and 4", (
                  _c("pdn_24_8", "PDN-18 24NB-1M > PDN-18 8NB-1M", "37.02 vs 36.18 (ADE20K)",
                     "pdn18_24nb_1m_pretrained", "pdn18_8nb_1m_pretrained"),
                  _c("pdn_8_sim", "PDN-18 8NB-1M > Sim-DeepLab-18 (DeepLab-v2)", "36.18 vs 35.07 (ADE20K)",
                     "pdn18_8nb_1m_pretrained", "simdeeplab18_pretrained"),
                  _c("pdn_2m_1m", "PDN-18 24NB-2M >= PDN-18 24NB-1M", "37.71 vs 37.02 (ADE20K)",
                     "pdn18_24nb_2m_pretrained", "pdn18_24nb_1m_pretrained", at_least=True),
                  *[_c(f"pdn_layer{t + 1}", f"PDN-18 24NB-1M: layer {t + 1} > layer {t}", f"{b} vs {a} (Person-Part)",
                       ("pdn18_24nb_1m_pretrained", f"val/miou_layer{t + 1}"),
                       ("pdn18_24nb_1m_pretrained", f"val/miou_layer{t}"))
                    for t, a, b in ((1, "61.6", "61.8"), (2, "61.8", "62.4"), (3, "62.4", "62.5"))]),
              "The diffusion layers' init (the two readings of 'variance 0.01') and then the layer-loss weight are "
              "selected on held-out train data with 24NB-1M and used by every PDN run. The paper's figures are "
              "ResNet-101's (Table 4, ADE20K without BN synchronisation; Table 2, PASCAL-Person-Part, its layers' own "
              "predictions). Sim-DeepLab-18 is the run of `difnet_vs_simdeeplab` (its lr grouping selected); PDN's "
              "lr grouping is selected the same way (`pdn_lr`).",
              f"{RULE}; the init selected between both readings (was std 0.01); the layer-loss weight's grid reaches "
              "0.01 (0.1 was its edge); the lr grouping selected on held-out data for PDN and for Sim-DeepLab (was "
              "backbones x1 for both); 2M has 5 seeds (was 1)"),
        Claim("da_loss", "the dilated-affinity loss improves DeepLabv3+", "DA Tables 4 and 5", (
            _c("da_loss", "DeepLabv3+-18 + dilated affinity (sqrt, selected beta) > DeepLabv3+-18, no propagation",
               "78.62 vs 77.93 (VOC): the paper's T = 0 if T counts passes", SQRT, "deeplabv3plus18_pretrained"),
            *[_c(f"da_loss_one_pass_{term}", f"DeepLabv3+-18 + dilated affinity, one propagation pass (self term "
                 f"{term}) > DeepLabv3+-18", "78.62 vs 77.93 (VOC): the paper's T = 0 if T counts passes after a "
                 "first", Quantity(SQRT, passes=1, reading=term), "deeplabv3plus18_pretrained")
              for term in affinity.SELF_TERMS]),
            "Without propagation: what the loss alone does; one pass: the paper's T = 0 under the other reading of "
            "T (the module docstring); 79.21 with 10 propagation iterations.",
            f"{RULE}; R, beta and lambda selected on held-out data (R was the pixel-scaled set)"),
        Claim("weighting", "sqrt > neighbor > signal > none weighting", "DA Table 1", tuple(
            _c(f"weighting_{better}_{worse}", f"{better} weighting > {worse} weighting",
               f"{WEIGHTING_PAPER[better]} vs {WEIGHTING_PAPER[worse]} (VOC, R = {{8, 16, 32, 64}})",
               f"deeplabv3plus18_affinity_{better}_pretrained", f"deeplabv3plus18_affinity_{worse}_pretrained")
            for better, worse in zip(WEIGHTINGS[::-1], WEIGHTINGS[-2::-1])),
            "The paper cross-validates beta per scheme (1.1 / 1.3 / 0.25 / 1.5); the study too, each on held-out "
            "train data. R is the selected set, not the table's {8, 16, 32, 64}.",
            f"{RULE}; R selected; the signal and neighbor beta grids reach lower; 5 seeds (was 1 for none, signal, "
            "neighbor)"),
        Claim("propagation", "propagation with the model's own affinity improves with T = 1, 3, 10; ground truth far "
              "more", "DA Table 4", tuple(row for term in affinity.SELF_TERMS for row in _propagation_rows(term)),
              "The dilated-affinity runs of `da_loss` (sqrt weighting), evaluated with `python -m experiments.evaluate "
              "--propagate=... --propagate_oracle=... --propagate_lambda=... --propagate_self_term=current,original` "
              "at each self term's selected lambda; both readings of Eq. 6's self term and of T.",
              f"{RULE}; lambda selected per self term on held-out data (was the paper's 6); the 'original' self term "
              "and the 'T passes after a first' reading are new rows"),
        Claim("transitions", "affinity supervision on DifNet's P_t (the project's own question)", "-", (
            _c("transitions", "DifNet-18 + affinity on its transitions > DifNet-18, from scratch",
               "- (no paper claim)", "difnet18_transitions_scratch", "difnet18_scratch"),),
            "No paper claims this: 'yes' means the supervision helps. `model.difnet.affinity_on_transitions=True`, "
            "the synthetic rate (one seed-grid cell) and beta 1.0.", f"{RULE}; the authors' upsampling"),
    )


def study() -> Study:
    """The study of issues 21 and 28: the claims, their runs and the sweeps (`claims`' module docstring)."""
    return Study({run.name: run for run in runs()}, {sweep.name: sweep for sweep in sweeps()},
                 PropagationSweep("da_propagation", "da_beta"), claims())

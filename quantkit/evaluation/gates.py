"""Quality gates: how far an artifact may drift from its source, per quant type.

Each quant type has two default gates (docs/quality.md explains the numbers):
- "standard": for 8B-class models and larger (larger models quantize better). Anchored on
  the issue's targets (8-bit: perplexity +1 %, mean KLD 0.01; Q4_K_M: +5 %, 0.06) and on
  the KLD tables llama.cpp's contributors publish for Llama-3-8B-class models.
- "tiny": models under 1B parameters, which lose much more to the same quantization (few
  weights per row to average the rounding error; a tied embedding quantized with the rest).
  Set from quantkit's own measurements on the 135M demo model with headroom.

A hardware profile's [quality] table overrides the standard gate; on a tiny model each of
its limits is loosened to the tiny default, since profiles are written for real models.

Top-1 agreement is judged on the positions where the source is confident (its top-1 leads
the second by quantkit.evaluation.report.CONFIDENCE_MARGIN): elsewhere an argmax flip is
noise. With fewer than MIN_CONFIDENT_POSITIONS such positions the gate says it cannot judge
top-1 and does not fail on it; perplexity and KL divergence are judged on every position.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, Any

from ..errors import QuantkitError
from ..planning.profiles import QualityGate
from .report import CONFIDENCE_MARGIN

if TYPE_CHECKING:
    from ..planning.profiles import HardwareProfile

TINY_PARAMETERS = 1_000_000_000  # below this, the tiny-model gates apply
# Fewer confident positions than this and top-1 agreement is not judged: over 200 positions
# the binomial standard error of a share is at most 0.035 (0.027 near the 0.82 bar).
MIN_CONFIDENT_POSITIONS = 200

# (quant names) -> (standard gate, tiny gate), as (max_ppl_increase, max_kld, min_top1).
_GATES: tuple[
    tuple[tuple[str, ...], tuple[float, float, float], tuple[float, float, float]], ...
] = (
    (("F32", "F16", "BF16", "FP16"), (0.002, 0.001, 0.99), (0.005, 0.002, 0.98)),
    (("Q8_0",), (0.01, 0.01, 0.97), (0.03, 0.02, 0.93)),
    # FP8 E4M3 keeps 3 mantissa bits and FP8_DYNAMIC also rounds the activations per token:
    # on the 135M demo the KLD is 8x Q8_0's (0.032 vs 0.004) while perplexity barely moves.
    (("FP8", "FP8_DYNAMIC"), (0.01, 0.01, 0.97), (0.05, 0.06, 0.86)),
    (("Q6_K",), (0.02, 0.02, 0.95), (0.05, 0.04, 0.91)),
    (("Q5_K_M", "Q5_K_S", "Q5_0", "Q5_1"), (0.03, 0.035, 0.93), (0.08, 0.08, 0.88)),
    (("Q4_K_M", "W4A16"), (0.05, 0.06, 0.90), (0.12, 0.15, 0.82)),
    (("Q4_K_S", "IQ4_XS", "IQ4_NL"), (0.06, 0.07, 0.89), (0.14, 0.18, 0.80)),
    (("Q4_0", "Q4_1"), (0.08, 0.10, 0.87), (0.50, 0.60, 0.60)),
    (("Q3_K_L", "Q3_K_M", "IQ3_M"), (0.12, 0.15, 0.84), (0.60, 0.80, 0.55)),
    (("Q3_K_S", "IQ3_XXS"), (0.18, 0.22, 0.80), (0.80, 1.00, 0.50)),
    (("Q2_K", "Q2_K_S", "IQ2_M", "IQ2_S"), (0.35, 0.45, 0.72), (1.50, 1.50, 0.40)),
    (("IQ2_XS", "IQ2_XXS", "IQ1_M", "IQ1_S"), (0.70, 0.90, 0.60), (3.00, 3.00, 0.30)),
    # MLX (mlx-lm's affine quants, quantkit.formats.mlx_quants; BF16 is the first row): the
    # gates of the GGUF type of the same bits, 8bit <- Q8_0, 6bit <- Q6_K, 4bit and the
    # 4/6 recipe <- Q4_K_M, the 3-bit recipes <- Q3_K_M, 2/6 <- Q2_K.
    (("8BIT",), (0.01, 0.01, 0.97), (0.03, 0.02, 0.93)),
    (("6BIT",), (0.02, 0.02, 0.95), (0.05, 0.04, 0.91)),
    (("4BIT", "MIXED_4_6"), (0.05, 0.06, 0.90), (0.12, 0.15, 0.82)),
    (("MIXED_3_4", "MIXED_3_6"), (0.12, 0.15, 0.84), (0.60, 0.80, 0.55)),
    (("MIXED_2_6",), (0.35, 0.45, 0.72), (1.50, 1.50, 0.40)),
)


def _index() -> dict[str, dict[str, QualityGate]]:
    table: dict[str, dict[str, QualityGate]] = {}
    for names, standard, tiny in _GATES:
        for name in names:
            if name in table:
                raise RuntimeError(f"duplicate quality gate for {name}")
            table[name] = {"standard": QualityGate(*standard), "tiny": QualityGate(*tiny)}
    return table


DEFAULT_GATES: dict[str, dict[str, QualityGate]] = _index()


@dataclass(frozen=True)
class GateCheck:
    metric: str  # "ppl_increase", "kld_mean", "top1_agreement"
    value: float | None  # None: nothing to judge it on
    limit: float
    passed: bool  # True when not judged: a gate does not fail on what it cannot judge
    judged: bool = True
    over: str = ""  # the positions it was judged on, or why it was not judged

    def describe(self) -> str:
        if not self.judged:
            return f"{self.metric} not judged: {self.over}"
        op = ">=" if self.metric == "top1_agreement" else "<="
        over = f" {self.over}" if self.over else ""
        return f"{self.metric} {self.value:.4g} {op} {self.limit:g}{over}" + (
            "" if self.passed else " FAILED"
        )


@dataclass(frozen=True)
class GateResult:
    passed: bool
    quant: str
    size_class: str  # "standard" or "tiny"
    thresholds: QualityGate
    origin: str  # where the thresholds came from
    checks: tuple[GateCheck, ...]

    @property
    def message(self) -> str:
        parts = [c.describe() for c in self.checks]
        verdict = "passed" if self.passed else "FAILED"
        return f"quality gate {verdict} ({self.origin}): " + ", ".join(parts)

    def to_dict(self) -> dict[str, Any]:
        return {
            "passed": self.passed,
            "quant": self.quant,
            "size_class": self.size_class,
            "thresholds": asdict(self.thresholds),
            "origin": self.origin,
            "checks": [asdict(c) for c in self.checks],
            "message": self.message,
        }

    def to_check(self) -> dict[str, Any]:
        """The gate as one record of ConvertResult.checks / manifest.json (verify.Check)."""
        return {
            "name": "quality gate",
            "passed": self.passed,
            "evidence": self.message,
            "fatal": True,
        }


def default_gate(quant: str, parameters: int | None = None) -> QualityGate:
    return DEFAULT_GATES[_known(quant)][size_class(parameters)]


def size_class(parameters: int | None) -> str:
    return "tiny" if parameters is not None and parameters < TINY_PARAMETERS else "standard"


def check_gate(
    report: Any,
    quant: str,
    profile: HardwareProfile | str | None = None,
    *,
    parameters: int | None = None,
) -> GateResult:
    """Check a QualityReport (or its to_dict()) against the gate for `quant`.

    `parameters` (the source's parameter count; default: the report's) picks the size class.
    """

    def field(name: str, default: Any = None) -> Any:
        if isinstance(report, dict):
            return report.get(name, default)
        return getattr(report, name, default)

    name = _known(quant)
    params = parameters if parameters is not None else field("parameters")
    klass = size_class(params)
    gate = DEFAULT_GATES[name][klass]
    origin = f"quantkit default for {name}, {klass} model"
    if profile is not None:
        if isinstance(profile, str):
            from ..planning.profiles import load_profile

            profile = load_profile(profile)
        gate = profile.quality
        origin = f"profile {profile.name}"
        if klass == "tiny":
            floor = DEFAULT_GATES[name]["tiny"]
            gate = QualityGate(
                max_ppl_increase=max(gate.max_ppl_increase, floor.max_ppl_increase),
                max_kld=max(gate.max_kld, floor.max_kld),
                min_top1=min(gate.min_top1, floor.min_top1),
            )
            origin += f", loosened to the tiny-model default for {name}"
    increase = float(field("ppl_ratio")) - 1.0
    kld = float(field("kld_mean"))
    checks = (
        GateCheck(
            "ppl_increase", increase, gate.max_ppl_increase, increase <= gate.max_ppl_increase
        ),
        GateCheck("kld_mean", kld, gate.max_kld, kld <= gate.max_kld),
        _top1_check(field, gate.min_top1),
    )
    return GateResult(all(c.passed for c in checks), name, klass, gate, origin, checks)


def _top1_check(field: Any, limit: float) -> GateCheck:
    """Top-1 agreement over the source's confident positions; a report made before they
    were counted (confident_positions missing) is judged on all positions, as it was."""
    plain = float(field("top1_agreement"))
    confident = field("confident_positions")
    if confident is None:
        return GateCheck("top1_agreement", plain, limit, plain >= limit)
    tokens = int(field("tokens", 0))
    margin = float(field("confidence_margin", CONFIDENCE_MARGIN))
    if confident < MIN_CONFIDENT_POSITIONS:
        why = (
            f"{confident:,} of {tokens:,} positions have a confident source (top-1 ahead of "
            f"the second by >= {margin:g}), {MIN_CONFIDENT_POSITIONS} needed; all positions "
            f"{plain:.4g}"
        )
        value = field("top1_agreement_confident")
        return GateCheck("top1_agreement", value, limit, True, judged=False, over=why)
    value = float(field("top1_agreement_confident"))
    over = f"over {confident:,} confident positions of {tokens:,}"
    return GateCheck("top1_agreement", value, limit, value >= limit, over=over)


def _known(quant: str) -> str:
    name = quant.upper()
    if name not in DEFAULT_GATES:
        raise QuantkitError(
            f"No quality gate is defined for quant {quant!r}.",
            hint=f"Known: {', '.join(DEFAULT_GATES)}.",
        )
    return name

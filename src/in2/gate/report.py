"""The gate's verdict: one `CheckResult` per expectation, gathered in a `QualityReport`.

GX results are nested dicts whose shape depends on the expectation; here they become the terms
summary.json, MLflow and the console use: the numbers behind each verdict and one line for
people (the observed value, or the ids of offending rows).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from great_expectations.core.expectation_validation_result import ExpectationValidationResult

from in2.gate.contract import ID_COLUMNS
from in2.gate.expectations import ExpectColumnValueFractionsToMatch


@dataclass(frozen=True)
class CheckResult:
    """The outcome of one expectation, in the terms summary.json and the console use."""

    check: str
    """Stable id, e.g. `gold_positions_uniform.fine_grained` (the key in summary.json)."""
    description: str
    expectation: str
    """GX expectation type, e.g. `expect_column_values_to_be_uniformly_distributed`."""
    suite: str
    column: str | None
    kind: str | None
    success: bool
    observed: dict[str, Any]
    """The numbers behind the verdict: p-values, fractions, unexpected rows, or an error."""
    brief: str
    """One line for people: the observed value or the offending example ids."""


@dataclass(frozen=True)
class QualityReport:
    """All check results of one validation run; `success` is the gate."""

    results: list[CheckResult]
    rows: dict[str, int]
    settings: dict[str, Any]
    skipped: list[str] = field(default_factory=list)
    """Suites not run because the schema was broken (their checks would only crash)."""

    @property
    def success(self) -> bool:
        return not self.skipped and all(r.success for r in self.results)

    @property
    def failed(self) -> list[CheckResult]:
        return [r for r in self.results if not r.success]

    def to_summary(self) -> dict[str, Any]:
        """JSON-ready summary (DVC metrics file); the stage adds the dataset fingerprint."""
        return {
            "success": self.success,
            "n_expectations": len(self.results),
            "n_failed": len(self.failed),
            "failed": [r.check for r in self.failed],
            "skipped_suites": list(self.skipped),
            "rows": dict(self.rows),
            "settings": dict(self.settings),
            "expectations": {
                r.check: {
                    "expectation": r.expectation,
                    "suite": r.suite,
                    "description": r.description,
                    "column": r.column,
                    "kind": r.kind,
                    "success": r.success,
                    "observed": r.observed,
                }
                for r in self.results
            },
        }

    def metrics(self) -> dict[str, float]:
        """Numbers worth a metric in MLflow: the verdict, each p-value and the observed mix."""
        out = {"dq.success": float(self.success), "dq.n_failed": float(len(self.failed))}
        for r in self.results:
            for key in ("ks_p", "chi2_p"):
                if key in r.observed:
                    out[f"dq.{r.check}.{key}"] = float(r.observed[key])
            if r.expectation == ExpectColumnValueFractionsToMatch.expectation_type:
                for value, share in r.observed["observed"].items():
                    out[f"dq.{r.check}.{value}"] = float(share)
        if power := self.settings.get("position_power"):
            out["dq.position_power.detected_first_half_share"] = power["detected_first_half_share"]
            out["dq.position_power.n"] = float(power["n"])
        return out

    def failures_text(self) -> str:
        """What failed and what was seen, for stderr; empty when the gate passes."""
        if self.success:
            return ""
        lines = [
            f"data quality gate FAILED: {len(self.failed)} of {len(self.results)} "
            "expectation(s) failed"
        ]
        lines += [f"  - {r.check}: {r.description} Observed: {r.brief}" for r in self.failed]
        if self.skipped:
            lines.append(f"  (suites {', '.join(self.skipped)} not run: fix the schema first)")
        return "\n".join(lines)


def _observed(result: dict[str, Any], column: str | None) -> tuple[dict[str, Any], str]:
    """(numbers for summary.json, one line for people) from a GX result dict."""
    if isinstance(result.get("observed_value"), str) and "details" in result:
        return result["details"], result["observed_value"]  # our own expectations
    observed = {k: result[k] for k in ("observed_value", "details") if k in result}
    observed |= {k: result[k] for k in ("element_count", "unexpected_count") if k in result}
    rows = result.get("partial_unexpected_index_list") or []
    id_column = next((c for c in ID_COLUMNS if rows and c in rows[0]), None)
    ids = [row[id_column] for row in rows] if id_column else []
    if ids:
        observed[f"{id_column}s"] = ids
    if result.get("unexpected_count"):
        observed["values"] = result.get("partial_unexpected_list", [])
    if "observed_value" in observed:
        return observed, " ".join(
            str(observed[k]) for k in ("observed_value", "details") if k in observed
        )
    brief = f"{observed.get('unexpected_count', 0)} of {observed.get('element_count', '?')} rows"
    if ids:
        brief += f", e.g. {id_column} {ids[:5]}"
    if observed.get("values"):
        brief += f" with {column} {observed['values'][:5]}"
    return observed, brief


def _exception_message(info: dict[str, Any]) -> str | None:
    """GX reports an exception flat or keyed by the metric that raised it."""
    if "raised_exception" in info:
        return info.get("exception_message") if info["raised_exception"] else None
    messages = [v.get("exception_message") for v in info.values() if isinstance(v, dict)]
    return "; ".join(dict.fromkeys(m for m in messages if m)) or None


def check_result(suite: str, evr: ExpectationValidationResult) -> CheckResult:
    """One expectation's GX result, by the check id the suite gave it."""
    config = evr.expectation_config
    data = evr.to_json_dict()
    kwargs = config.kwargs
    column = kwargs.get("column") or (
        f"{kwargs['column_A']},{kwargs['column_B']}" if "column_A" in kwargs else None
    )
    observed, brief = _observed(data.get("result") or {}, column)
    if error := _exception_message(data.get("exception_info") or {}):
        observed["error"] = error
        brief = f"error: {error}"
    return CheckResult(
        check=config.meta["check"],
        description=config.description or config.type,
        expectation=config.type,
        suite=suite,
        column=column,
        kind=config.meta.get("kind"),
        success=bool(evr.success),
        observed=observed,
        brief=brief,
    )

"""The custom Great Expectations checks of the gate, each a GX expectation over its own metric.

GX has no expectation for "this column is a sample of Uniform(0, 1)", "each value's share is
this mix", "values spread evenly over bins" or "every value is a list of integers", so each is a
metric provider (the pandas computation) and an expectation class (the verdict and the line
people read). The statistics themselves (`uniformity_tests`, `balance_test`) are plain
functions, so tests and `bench/gate_power.py` call them without GX. The statistical checks pass
and report "insufficient data" below their `min_n` rather than pretending to know.

Importing this module registers the expectations with GX (by class name).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
from great_expectations.execution_engine import PandasExecutionEngine
from great_expectations.expectations.expectation import (
    ColumnAggregateExpectation,
    ColumnMapExpectation,
)
from great_expectations.expectations.metrics import (
    ColumnAggregateMetricProvider,
    ColumnMapMetricProvider,
    column_aggregate_value,
    column_condition_partial,
)
from scipy import stats


def uniformity_tests(u: np.ndarray, bins: int) -> dict[str, Any]:
    """KS and chi-square tests of `u` against Uniform(0, 1); p-values are None when `u` is empty."""
    u = np.asarray(u, dtype=float)
    if len(u) == 0:
        return {"n": 0, "ks_statistic": None, "ks_p": None, "chi2_statistic": None, "chi2_p": None}
    ks = stats.kstest(u, "uniform")
    counts, _ = np.histogram(u, bins=bins, range=(0.0, 1.0))
    chi2 = stats.chisquare(counts)  # equal expected counts; values outside [0, 1] fail the KS
    return {
        "n": len(u),
        "ks_statistic": float(ks.statistic),
        "ks_p": float(ks.pvalue),
        "chi2_statistic": float(chi2.statistic),
        "chi2_p": float(chi2.pvalue),
        "bin_counts": [int(c) for c in counts],
    }


class ColumnUniformityTests(ColumnAggregateMetricProvider):
    """Metric `column.in2_uniformity_tests`: KS and chi-square p-values of a column vs U(0, 1)."""

    metric_name = "column.in2_uniformity_tests"
    value_keys = ("bins",)
    filter_column_isnull = True

    @column_aggregate_value(engine=PandasExecutionEngine)
    def _pandas(cls, column: pd.Series, bins: int, **kwargs: Any) -> dict[str, Any]:
        return uniformity_tests(column.to_numpy(dtype=float), bins)


class ExpectColumnValuesToBeUniformlyDistributed(ColumnAggregateExpectation):
    """Expect a column to be a sample of Uniform(0, 1): KS and chi-square p-values >= alpha.

    Below `min_n` values the tests say little; the expectation then passes and reports
    "insufficient data" with the observed n.
    """

    alpha: float = 0.001
    bins: int = 10
    min_n: int = 50

    metric_dependencies = ("column.in2_uniformity_tests",)
    success_keys = ("alpha", "bins", "min_n")
    args_keys = ("column", "alpha", "bins", "min_n")

    def _validate(
        self,
        metrics: dict,
        runtime_configuration: dict | None = None,
        execution_engine: Any = None,
    ) -> dict[str, Any]:
        tests = metrics["column.in2_uniformity_tests"]
        settings = {"alpha": self.alpha, "min_n": self.min_n}
        if tests["n"] < self.min_n:  # p-values of so few points would only look like evidence
            details = {"n": tests["n"], **settings, "status": "insufficient data"}
            observed = f"insufficient data: n={tests['n']}, fewer than {self.min_n}; not tested"
            return {"success": True, "result": {"observed_value": observed, "details": details}}
        details = {**tests, **settings, "status": "tested"}
        success = tests["ks_p"] >= self.alpha and tests["chi2_p"] >= self.alpha
        observed = (
            f"n={tests['n']}, KS p={tests['ks_p']:.3g}, chi-square p={tests['chi2_p']:.3g} "
            f"(alpha {self.alpha:g}); counts per bin {tests['bin_counts']}"
        )
        return {"success": success, "result": {"observed_value": observed, "details": details}}


class ColumnValueFractions(ColumnAggregateMetricProvider):
    """Metric `column.in2_value_fractions`: the share of rows holding each value of a column."""

    metric_name = "column.in2_value_fractions"

    @column_aggregate_value(engine=PandasExecutionEngine)
    def _pandas(cls, column: pd.Series, **kwargs: Any) -> dict[str, Any]:
        n = len(column)
        counts = column.value_counts()
        return {"n": n, "fractions": {str(k): float(c) / n for k, c in sorted(counts.items())}}


class ExpectColumnValueFractionsToMatch(ColumnAggregateExpectation):
    """Expect the share of each value to be within `tolerance` + 1/n of `expected` (absolute).

    The 1/n is rounding: n rows can only hit shares that are multiples of 1/n, and a mix
    realised by largest remainders is always within 1/n of the target. Values missing from
    `expected` count as expected share 0, missing values as observed 0.
    """

    expected: dict[str, float]
    tolerance: float = 0.02

    metric_dependencies = ("column.in2_value_fractions",)
    success_keys = ("expected", "tolerance")
    args_keys = ("column", "expected", "tolerance")

    def _validate(
        self,
        metrics: dict,
        runtime_configuration: dict | None = None,
        execution_engine: Any = None,
    ) -> dict[str, Any]:
        got = metrics["column.in2_value_fractions"]
        observed = got["fractions"]
        values = sorted(set(observed) | set(self.expected))
        diff = {v: observed.get(v, 0.0) - self.expected.get(v, 0.0) for v in values}
        worst = max(values, key=lambda v: abs(diff[v])) if values else None
        max_dev = abs(diff[worst]) if worst is not None else 0.0
        allowed = self.tolerance + 1 / got["n"] if got["n"] else 0.0
        success = got["n"] > 0 and max_dev <= allowed + 1e-12
        text = ", ".join(
            f"{v} {observed.get(v, 0.0):.3f} (expected {self.expected.get(v, 0.0):.3f})"
            for v in values
        )
        if worst is not None:
            text += (
                f"; largest difference {diff[worst]:+.3f} ({worst}), allowed ±{allowed:.3f} "
                f"(tolerance + 1/n, n={got['n']})"
            )
        details = {
            "n": got["n"],
            "observed": observed,
            "expected": dict(self.expected),
            "difference": diff,
            "max_abs_difference": max_dev,
            "tolerance": self.tolerance,
            "allowed": allowed,
        }
        return {"success": success, "result": {"observed_value": text, "details": details}}


def balance_test(values: np.ndarray, low: float, high: float, bins: int) -> dict[str, Any]:
    """Chi-square test of equal counts over `bins` equal-width bins of [low, high]."""
    counts, _ = np.histogram(np.asarray(values, dtype=float), bins=bins, range=(low, high))
    test = stats.chisquare(counts) if counts.sum() else None
    return {
        "n": int(counts.sum()),
        "bin_counts": [int(c) for c in counts],
        "chi2_statistic": float(test.statistic) if test else None,
        "chi2_p": float(test.pvalue) if test else None,
    }


class ColumnBinBalance(ColumnAggregateMetricProvider):
    """Metric `column.in2_bin_balance`: counts over equal-width bins and a chi-square p-value."""

    metric_name = "column.in2_bin_balance"
    value_keys = ("low", "high", "bins")
    filter_column_isnull = True

    @column_aggregate_value(engine=PandasExecutionEngine)
    def _pandas(cls, column: pd.Series, low: float, high: float, bins: int, **kwargs: Any) -> dict:
        return balance_test(column.to_numpy(dtype=float), low, high, bins)


class ExpectColumnValuesToBeBalancedOverBins(ColumnAggregateExpectation):
    """Expect a column's values to spread evenly over equal-width bins of [low, high]:
    chi-square p >= alpha against equal counts (from `min_n` values; below, "insufficient data").
    """

    low: float
    high: float
    bins: int
    alpha: float = 0.001
    min_n: int = 20

    metric_dependencies = ("column.in2_bin_balance",)
    success_keys = ("low", "high", "bins", "alpha", "min_n")
    args_keys = ("column", "low", "high", "bins", "alpha", "min_n")

    def _validate(
        self,
        metrics: dict,
        runtime_configuration: dict | None = None,
        execution_engine: Any = None,
    ) -> dict[str, Any]:
        got = metrics["column.in2_bin_balance"]
        details = {**got, "alpha": self.alpha, "min_n": self.min_n}
        if got["n"] < self.min_n:
            observed = f"insufficient data: n={got['n']}, fewer than {self.min_n}; not tested"
            return {"success": True, "result": {"observed_value": observed, "details": details}}
        success = got["chi2_p"] >= self.alpha
        observed = (
            f"n={got['n']}, counts per bin {got['bin_counts']}, chi-square p={got['chi2_p']:.3g} "
            f"(alpha {self.alpha:g})"
        )
        return {"success": success, "result": {"observed_value": observed, "details": details}}


def _is_integer_list(value: Any) -> bool:
    if not isinstance(value, (list, tuple, np.ndarray)):
        return False
    arr = np.asarray(value)
    return arr.ndim == 1 and (arr.size == 0 or arr.dtype.kind in "iu")


class ColumnValuesIntegerList(ColumnMapMetricProvider):
    """Map metric `column_values.in2_integer_list`: the value is a flat list of integers."""

    condition_metric_name = "column_values.in2_integer_list"

    @column_condition_partial(engine=PandasExecutionEngine)
    def _pandas(cls, column: pd.Series, **kwargs: Any) -> pd.Series:
        dtype = getattr(column.dtype, "pyarrow_dtype", None)
        if dtype is not None and pa.types.is_list(dtype) and pa.types.is_integer(dtype.value_type):
            return pd.Series(True, index=column.index)  # Arrow's type holds for every value
        return column.map(_is_integer_list)


class ExpectColumnValuesToBeIntegerLists(ColumnMapExpectation):
    """Expect every value to be a flat list of integers (segment ids, slots)."""

    map_metric = "column_values.in2_integer_list"
    success_keys = ("mostly",)
    args_keys = ("column",)

"""Score a batch export against what customers really bought afterwards (`patron scorecard`).

Independent of the rest of Patron on purpose: the truth is read from the raw order exports with
pandas, not through ingestion, features or models; only the definition of a valid purchase is the
shop's one rule (:func:`patron.rules.valid_purchase`). It is the check a shop (or an auditor) runs
on last quarter's export files.

Protocol: the population is every customer with a valid purchase before ``as_of`` (a known
customer, quantity > 0, unit price > 0, not a cancellation). Churn = no valid purchase in [as_of, as_of + horizon). Spend = the sum of
quantity x unit price of the valid purchases in that window. Recall@k = hits / min(k, items bought
in the window that existed before as_of); NDCG@k with binary relevance; discovery counts only the
items the customer had not bought before as_of.
"""

from __future__ import annotations

import datetime as dt
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
from scipy.stats import spearmanr
from sklearn.metrics import roc_auc_score

from patron.errors import PatronError
from patron.features.ingest import find_files, read_raw
from patron.rules import valid_purchase
from patron.times import utc_timestamp

EXPORT_FILES = ("churn.parquet", "ltv.parquet", "recommendations.parquet", "discovery.parquet")
TIER_ORDER = ("platinum", "gold", "silver", "bronze")


class ScorecardError(PatronError, ValueError):
    """The export or the truth cannot be scored (missing files or columns, no data in the window)."""


@dataclass
class Scorecard:
    as_of: str
    horizon_days: int
    population: int
    metrics: dict[str, float] = field(default_factory=dict)
    coverage: dict[str, int] = field(default_factory=dict)  # customers of the population missing per file
    tiers: pd.DataFrame | None = None
    problems: list[str] = field(default_factory=list)


def valid_purchases(sources: Sequence[Path]) -> pd.DataFrame:
    """customer_id, item_id, invoice_ts (naive), amount of every valid purchase in the raw files."""
    frames = []
    for path in find_files(sources):
        raw = read_raw(path).frame.to_pandas()
        frames.append(raw)
    if not frames:
        raise ScorecardError(f"no order files in {', '.join(map(str, sources))}")
    df = pd.concat(frames, ignore_index=True)
    qty = pd.to_numeric(df["Quantity"], errors="coerce")
    price = pd.to_numeric(df["UnitPrice"], errors="coerce")
    cust = pd.to_numeric(df["CustomerID"], errors="coerce")
    ts = pd.to_datetime(df["InvoiceDate"].str.strip(), errors="coerce", format="mixed")
    ok = valid_purchase(cust, qty, price, df["InvoiceNo"]) & ts.notna().to_numpy()
    out = pd.DataFrame(
        {
            "customer_id": cust[ok].astype("int64"),
            "item_id": df.loc[ok, "StockCode"].str.strip().str.upper().replace("", np.nan),
            "invoice_ts": ts[ok],
            "amount": (qty * price)[ok],
        }
    )
    return out.reset_index(drop=True)


def _read_export(folder: Path, name: str, columns: Sequence[str]) -> pd.DataFrame:
    path = Path(folder) / name
    if not path.exists():
        raise ScorecardError(f"{path}: missing; expected the four files {', '.join(EXPORT_FILES)}")
    df = pd.read_parquet(path)
    missing = [c for c in columns if c not in df.columns]
    if missing:
        raise ScorecardError(f"{path}: expected columns {list(columns)}, missing {missing}")
    return df


def _list_metrics(recs: pd.DataFrame, truth: dict[int, set], k: int) -> tuple[float, float]:
    lists = recs.sort_values(["customer_id", "rank"]).groupby("customer_id")["item_id"].agg(list).to_dict()
    recalls, ndcgs = [], []
    for c, t in truth.items():
        top = list(dict.fromkeys(lists.get(c, [])))[:k]
        hits = [x in t for x in top]
        recalls.append(sum(hits) / min(k, len(t)))
        dcg = sum(1 / math.log2(i + 2) for i, h in enumerate(hits) if h)
        ndcgs.append(dcg / sum(1 / math.log2(i + 2) for i in range(min(k, len(t)))))
    return (float(np.mean(recalls)), float(np.mean(ndcgs))) if recalls else (float("nan"), float("nan"))


def score_export(exports: Path, sources: Sequence[Path], as_of: dt.date | dt.datetime, horizon_days: int, k: int = 20) -> Scorecard:
    start = utc_timestamp(as_of).tz_localize(None)  # the raw files' times are naive UTC
    end = start + pd.Timedelta(days=horizon_days)
    lines = valid_purchases(sources)
    if lines["invoice_ts"].max() < end - pd.Timedelta(days=7):
        raise ScorecardError(f"the orders end on {lines['invoice_ts'].max().date()}; the window runs to {end.date()}")
    before = lines[lines["invoice_ts"] < start]
    window = lines[(lines["invoice_ts"] >= start) & (lines["invoice_ts"] < end)]
    population = np.sort(before["customer_id"].unique())
    card = Scorecard(str(start.date()), horizon_days, len(population))
    spend = window.groupby("customer_id")["amount"].sum().reindex(population, fill_value=0.0)
    churned = (spend == 0).astype(int).to_numpy()  # valid purchases have a positive amount

    churn = _read_export(exports, "churn.parquet", ["customer_id", "churn_probability", "risk_band"])
    p = churn.set_index("customer_id")["churn_probability"].reindex(population)
    card.coverage["churn.parquet"] = int(p.isna().sum())
    have = p.notna().to_numpy()
    card.metrics["churn_roc_auc"] = float(roc_auc_score(churned[have], p.to_numpy()[have]))

    ltv = _read_export(exports, "ltv.parquet", ["customer_id", "predicted_value", "predicted_orders", "p_alive", "tier"])
    ltv = ltv.set_index("customer_id").reindex(population)
    card.coverage["ltv.parquet"] = int(ltv["predicted_value"].isna().sum())
    have = ltv["predicted_value"].notna().to_numpy()
    pred, actual = ltv["predicted_value"].to_numpy()[have], spend.to_numpy()[have]
    card.metrics["ltv_spearman"] = float(spearmanr(pred, actual).statistic)
    top = np.argsort(-pred, kind="stable")[: max(1, int(round(len(pred) * 0.10)))]
    card.metrics["ltv_top10_revenue_share"] = float(actual[top].sum() / actual.sum()) if actual.sum() > 0 else float("nan")
    tiers = pd.DataFrame({"tier": ltv["tier"].to_numpy()[have], "actual": actual})
    card.tiers = tiers.groupby("tier")["actual"].agg(customers="size", mean_actual_spend="mean").reindex(
        [t for t in TIER_ORDER if t in set(tiers["tier"])]
    )
    means = card.tiers["mean_actual_spend"].to_numpy()
    card.metrics["ltv_tiers_strictly_falling"] = float(bool(len(means) > 1 and np.all(np.diff(means) < 0)))

    products = before.dropna(subset=["item_id"])
    existed = set(products["item_id"])
    bought = window.dropna(subset=["item_id"])
    bought = bought[bought["customer_id"].isin(set(population)) & bought["item_id"].isin(existed)]
    seen = set(zip(products["customer_id"], products["item_id"]))
    truth = {int(c): set(g) for c, g in bought.groupby("customer_id")["item_id"]}
    new = bought[[(c, i) not in seen for c, i in zip(bought["customer_id"], bought["item_id"])]]
    truth_new = {int(c): set(g) for c, g in new.groupby("customer_id")["item_id"]}
    for name, t, prefix in (("recommendations.parquet", truth, "recs"), ("discovery.parquet", truth_new, "discovery")):
        recs = _read_export(exports, name, ["customer_id", "rank", "item_id", "score", "source"])
        recs = recs[recs["rank"] <= k]
        card.coverage[name] = int(len(set(population) - set(recs["customer_id"])))
        recall, ndcg = _list_metrics(recs, t, k)
        card.metrics[f"{prefix}_recall_at_{k}"] = recall
        card.metrics[f"{prefix}_ndcg_at_{k}"] = ndcg
        if prefix == "discovery":
            repeats = sum((c, i) in seen for c, i in zip(recs["customer_id"], recs["item_id"]))
            if repeats:
                card.problems.append(f"discovery.parquet lists {repeats} items the customer had already bought")
    for name, missing in card.coverage.items():
        if missing:
            card.problems.append(f"{name} has no row for {missing} customer(s) of the population")
    return card

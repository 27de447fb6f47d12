"""The rules behind each endpoint, as plain functions of the runtime and a validated request.

Kept out of the HTTP layer so that they are tested without a server: which list a customer gets,
what is filtered out, when and why a non-personal list is used, and the words of each reason.
"""

from __future__ import annotations

import datetime as dt
import logging
import sqlite3
import time
from dataclasses import replace

import numpy as np
import pandas as pd

from patron.features.events import Fresh, apply_purchases
from patron.serving import schemas as S
from patron.serving.champions import Champions
from patron.serving.errors import EventsUnavailable, FeaturesUnavailable
from patron.serving.online import CustomerFeatures
from patron.serving.runtime import Runtime
from patron.training.customer.churn import risk_band
from patron.training.recs.sources import SOURCES

log = logging.getLogger(__name__)

KEY_FEATURES = ("recency_days", "frequency", "monetary_total", "avg_order_value", "tenure_days", "orders_90d",
                "spend_90d", "mean_interorder_days", "distinct_products", "country")


# ---------------------------------------------------------------------------------------- reasons


def reason_text(source: str, data: dict, champions: Champions) -> str:
    """A reason a shopper understands, from the plain data the recommender gives for each item."""
    if source == "buy_again":
        every = data.get("typical_interval_days")
        if every:
            return f"you buy this every ~{max(1, round(every))} days"
        n = data.get("times_bought", 1)
        return f"you bought this {'once' if n == 1 else f'{n} times'}, {round(data.get('days_since_last', 0))} days ago"
    anchor = data.get("anchor_item")
    if anchor:
        name = champions.description(anchor) or anchor
        if source in ("co_purchase", "session"):
            return f"often bought with {name}"
        return f"customers who buy {name} also buy this"
    if source == "trending":
        return f"trending: {data.get('buyers_recent', 0)} buyers in the last {round(data.get('days', 14))} days"
    if source == "popular":
        return f"popular: {data.get('buyers', 0)} buyers in the last {round(data.get('days', 30))} days"
    return "recommended for you"


def _items(champions: Champions, item_ids: list[str], scores: list[float], sources: list[str], reasons: list[dict]) -> list[S.Item]:
    return [
        S.Item(item_id=i, description=champions.description(i), score=round(float(s), 6), reason=reason_text(src, r, champions), source=src)
        for i, s, src, r in zip(item_ids, scores, sources, reasons)
    ]


# ---------------------------------------------------------------------------------- storefront


def _popular(champions: Champions, k: int, exclude: set[str], days: float | None = None) -> tuple[list[str], list[float], list[str], list[dict]]:
    days = champions.recs.params.popular_days if days is None else days
    order, buyers = champions.popular_order(days)
    ids, scores, reasons = [], [], []
    for j in order:
        item = champions.item_ids[j]
        if item in exclude:
            continue
        ids.append(item)
        scores.append(float(buyers[j]))
        reasons.append({"buyers": int(buyers[j]), "days": days})
        if len(ids) >= k:
            break
    return ids, scores, ["popular"] * len(ids), reasons


def _session(champions: Champions, basket: list[str], k: int, exclude: set[str],
             bought: frozenset[str] = frozenset()) -> tuple[list[str], list[float], list[str], list[dict]]:
    """Items most bought with the basket's items (co-purchase over all baskets, guests' included).

    Items that follow from something the customer has just bought (``bought``) are labelled
    ``co_purchase``; those that follow from what is in the basket, ``session``.
    """
    recs = champions.recs
    frame = recs.for_session(basket, k=k + len(exclude))
    frame = frame[(frame["source"] != "popular") & ~frame["item_id"].isin(exclude)].head(k)
    reasons = frame["reason_data"].tolist()
    sources = ["co_purchase" if r.get("anchor_item") in bought else "session" for r in reasons]
    return (frame["item_id"].tolist(), frame["score"].tolist(), sources, reasons)


def _iso(epoch: float | None) -> str | None:
    """An epoch as ISO text; None for none, and for one no calendar can show (whatever is stored,
    an answer never fails on a date)."""
    if not epoch:
        return None
    try:
        return dt.datetime.fromtimestamp(epoch, dt.timezone.utc).isoformat()
    except (OverflowError, ValueError, OSError):
        return None


def freshness(snapshot_ts: float | None, fresh: Fresh | None, now: float | None = None) -> S.Freshness:
    """How old the information behind an answer is: the snapshot, and the events on top of it."""
    now = time.time() if now is None else now
    received = fresh.updated_at if fresh is not None and fresh.updated_at else None
    newest = max(snapshot_ts or 0.0, received or 0.0)
    since = len(fresh.purchases_after(snapshot_ts or 0.0)) if fresh is not None else 0
    orders = len(fresh.orders_after(snapshot_ts or 0.0)[0]) if fresh is not None else 0
    return S.Freshness(
        features_as_of=_iso(snapshot_ts), events_through=_iso(fresh.last_event_ts if fresh is not None else None),
        events_received_at=_iso(received), age_seconds=round(now - newest, 3) if newest else None,
        purchases_since_snapshot=since, orders_since_snapshot=orders,
        complete=fresh is None or fresh.complete_after(snapshot_ts or 0.0),
    )


def _interleave(first: tuple, second: tuple, k: int) -> tuple[list, list, list, list]:
    """Alternate two ranked lists (first leads), dropping repeats, up to k items."""
    out: tuple[list, list, list, list] = ([], [], [], [])
    seen: set[str] = set()
    a, b = list(zip(*first)), list(zip(*second))
    for j in range(max(len(a), len(b))):
        for lst in (a, b):
            if j < len(lst) and lst[j][0] not in seen and len(out[0]) < k:
                seen.add(lst[j][0])
                for col, v in zip(out, lst[j]):
                    col.append(v)
    return out


def recommend(rt: Runtime, req: S.RecommendRequest) -> S.RecommendResponse:
    champions = rt.require()
    recs = champions.recs
    h = recs.sources.h
    exclude = set(req.exclude_items) | set(req.session_items)
    fallback: str | None = None
    features_as_of = None
    row = -1
    names = champions.item_ids
    fresh: Fresh | None = None
    snapshot_ts: float | None = None
    if req.customer_id is None:
        fallback = "no_customer"
    else:
        try:
            found, ts = rt.reader().presence(req.customer_id)
            snapshot_ts = ts if found else None
            features_as_of = _iso(snapshot_ts)
            row = champions.row_of.get(req.customer_id, -1)
            if row < 0:
                fallback = "unknown_customer"
            recent = rt.recent()
            if recent is not None:
                (fresh,) = recent.read([req.customer_id])
        except FeaturesUnavailable:
            fallback = "features_unavailable"
    # What the storefront told us since the model's data end: just-bought items are not offered
    # again, and what goes with them, or with the cart, comes first.
    bought: list[str] = fresh.items_bought_after(champions.data_end) if fresh is not None else []
    carted = fresh.basket_items if fresh is not None else []
    exclude |= set(bought) | set(carted)
    basket = [i for i in dict.fromkeys([*req.session_items, *carted, *bought]) if i in champions.item_row]
    if row >= 0:
        if req.exclude_purchased:
            lo, hi = h.indptr[row], h.indptr[row + 1]
            exclude |= {names[j] for j in h.indices[lo:hi]}
        # without repeats the discovery list is the one ranked for items new to the customer
        items, scores, codes = recs.ranked(row, new_only=req.exclude_purchased)
        keep = [q for q, j in enumerate(items) if names[j] not in exclude][: req.k]
        items, scores, codes = items[keep], scores[keep], codes[keep]
        reasons = recs.sources.reasons(row, items, codes)
        personal = ([names[j] for j in items], [float(x) for x in scores], [SOURCES[c] for c in codes], reasons)
        if basket:  # what is in the basket now counts as much as the history
            personal = _interleave(_session(champions, basket, req.k, exclude, frozenset(bought)), personal, req.k)
        ids, sc, src, rsn = (list(x)[: req.k] for x in personal)
    elif basket:
        ids, sc, src, rsn = _session(champions, basket, req.k, exclude, frozenset(bought))
    else:
        ids, sc, src, rsn = [], [], [], []
    if len(ids) < req.k:  # top up with best sellers
        more = _popular(champions, req.k - len(ids), exclude | set(ids))
        ids, sc, src, rsn = ids + more[0], sc + more[1], src + more[2], rsn + more[3]
    return S.RecommendResponse(
        customer_id=req.customer_id,
        items=_items(champions, ids, sc, src, rsn),
        fallback=fallback,
        model_versions={"recommender": champions.version_labels["recommender"]},
        features_as_of=features_as_of,
        freshness=freshness(snapshot_ts, fresh) if req.customer_id is not None else None,
    )


def similar_items(rt: Runtime, req: S.SimilarItemsRequest) -> S.SimilarItemsResponse:
    champions = rt.require()
    recs = champions.recs
    if req.item_id not in champions.item_row:
        ids, sc, src, rsn = _popular(champions, req.k, set())
        return S.SimilarItemsResponse(item_id=req.item_id, items=_items(champions, ids, sc, src, rsn), fallback="unknown_item",
                                      model_versions={"recommender": champions.version_labels["recommender"]})
    frame = recs.similar_items(req.item_id, k=req.k)
    items = _items(champions, frame["item_id"].tolist(), frame["score"].tolist(), frame["source"].tolist(), frame["reason_data"].tolist())
    return S.SimilarItemsResponse(item_id=req.item_id, items=items, model_versions={"recommender": champions.version_labels["recommender"]})


def popular(rt: Runtime, req: S.PopularRequest) -> S.PopularResponse:
    champions = rt.require()
    days = req.days or int(champions.recs.params.popular_days)
    ids, sc, src, rsn = _popular(champions, req.k, set(), float(days))
    return S.PopularResponse(items=_items(champions, ids, sc, src, rsn), days=days,
                             as_of=champions.recs.sources.h.as_of.date().isoformat(),
                             model_versions={"recommender": champions.version_labels["recommender"]})


# ----------------------------------------------------------------------------------------- CRM


def _features(rt: Runtime, ids: list[int]) -> CustomerFeatures:
    """Snapshot features of each distinct id, brought up to date with the purchases the
    storefront reported after the snapshot."""
    distinct = list(dict.fromkeys(ids))
    feats = rt.reader().customers(distinct)
    recent = rt.recent()
    if recent is None:
        return feats
    fresh = recent.read(distinct)
    usable = [f if ok else None for f, ok in zip(fresh, feats.found)]
    if not any(f is not None for f in usable):
        return replace(feats, fresh=fresh)
    frame, ref = apply_purchases(feats.frame, feats.as_of, usable)
    return replace(feats, frame=frame, ref=ref, fresh=fresh)


def _reindex(feats: CustomerFeatures, ids: list[int]) -> tuple[pd.DataFrame, np.ndarray]:
    pos = {c: i for i, c in enumerate(feats.frame["customer_id"].tolist())}
    take = [pos[c] for c in ids]
    return feats.frame.iloc[take].reset_index(drop=True), feats.found[take]


def churn_scores(champions: Champions, frame: pd.DataFrame, found: np.ndarray, reasons: bool = True) -> list[S.ChurnScore]:
    out = [S.ChurnScore(customer_id=int(c), status="unknown_customer") for c in frame["customer_id"]]
    known = np.flatnonzero(found)
    if len(known):
        sub = frame.iloc[known]
        p = champions.churn.predict_proba(sub)
        bands = risk_band(p, champions.churn.bands)
        why = champions.churn.reasons(sub, p=p) if reasons else [[] for _ in known]
        for q, i in enumerate(known):
            out[i] = S.ChurnScore(customer_id=int(sub["customer_id"].iloc[q]), status="ok", churn_probability=round(float(p[q]), 6),
                                  risk_band=str(bands[q]), reasons=[S.Reason(**r) for r in why[q]])
    return out


def ltv_scores(champions: Champions, frame: pd.DataFrame, found: np.ndarray, as_of: dt.datetime | np.ndarray) -> list[S.LTVScore]:
    out = [S.LTVScore(customer_id=int(c), status="unknown_customer") for c in frame["customer_id"]]
    known = np.flatnonzero(found)
    if len(known):
        pred = champions.ltv.predict(frame.iloc[known], as_of if isinstance(as_of, dt.datetime) else as_of[known])
        for q, i in enumerate(known):
            r = pred.iloc[q]
            out[i] = S.LTVScore(
                customer_id=int(r["customer_id"]), status="ok", predicted_value=round(float(r["predicted_value"]), 2),
                predicted_orders=round(float(r["predicted_orders"]), 3), p_alive=round(float(r["p_alive"]), 6),
                tier=r.get("tier"), expected_next_order_date=r["expected_next_order_date"], horizon_days=champions.ltv.horizon_days,
            )
    return out


def _as_of(feats: CustomerFeatures, ids: list[int]) -> dt.datetime | np.ndarray:
    """The moment each row's features describe (per row once events moved some of them on)."""
    if feats.ref is not None:
        pos = {c: i for i, c in enumerate(feats.frame["customer_id"].tolist())}
        return np.array([dt.datetime.fromtimestamp(feats.ref[pos[c]] or time.time(), dt.timezone.utc) for c in ids], dtype=object)
    text = feats.as_of_text()
    return dt.datetime.fromisoformat(text) if text else dt.datetime.now(dt.timezone.utc)


def churn(rt: Runtime, req: S.CustomersRequest) -> S.ChurnResponse:
    champions = rt.require()
    feats = _features(rt, req.customer_ids)
    frame, found = _reindex(feats, req.customer_ids)
    return S.ChurnResponse(results=churn_scores(champions, frame, found), model_versions={"churn": champions.version_labels["churn"]},
                           features_as_of=feats.as_of_text())


def ltv(rt: Runtime, req: S.CustomersRequest) -> S.LTVResponse:
    champions = rt.require()
    feats = _features(rt, req.customer_ids)
    frame, found = _reindex(feats, req.customer_ids)
    return S.LTVResponse(results=ltv_scores(champions, frame, found, _as_of(feats, req.customer_ids)),
                         model_versions={"ltv": champions.version_labels["ltv"]}, features_as_of=feats.as_of_text())


def customer(rt: Runtime, req: S.CustomerRequest) -> S.CustomerResponse:
    champions = rt.require()
    feats = _features(rt, [req.customer_id])
    frame, found = feats.frame, feats.found
    status = "ok" if found[0] else "unknown_customer"
    row = frame.iloc[0]
    features = {} if not found[0] else {k: (None if pd.isna(row[k]) else (row[k] if isinstance(row[k], str) else round(float(row[k]), 3)))
                                        for k in KEY_FEATURES}
    recs = recommend(rt, S.RecommendRequest(customer_id=req.customer_id, k=10))
    orders = [S.Order(invoice_no=i, date=d, lines=n, amount=a) for i, d, n, a in champions.recent_orders.get(req.customer_id, [])]
    return S.CustomerResponse(
        customer_id=req.customer_id, status=status, features=features,
        churn=churn_scores(champions, frame, found)[0], ltv=ltv_scores(champions, frame, found, _as_of(feats, [req.customer_id]))[0],
        recent_orders=orders, recommendations=recs.items,
        model_versions={k: v for k, v in champions.version_labels.items()}, features_as_of=feats.as_of_text(),
        freshness=freshness(float(feats.as_of[0]) if found[0] else None, feats.fresh[0] if feats.fresh else None),
    )


# -------------------------------------------------------------------------------------- events


def events(rt: Runtime, req: S.EventsRequest, key_id: str | None = None) -> S.EventsResponse:
    """Append a batch durably (the ack waits for the commit), then make it visible online. Events
    obey the order-line rules of ingestion (patron.rules.Plausibility), and none may be dated
    before the shop's first order; ``key_id`` names the key that sent them."""
    try:
        result = rt.events.append(req.events, plausible=rt.settings.plausibility(), floor=rt.data_start(), key_id=key_id)
    except sqlite3.Error as exc:  # the batch's transaction rolled back: the client may retry it whole
        log.error("event log write failed: %s", exc)
        raise EventsUnavailable(type(exc).__name__) from exc
    visible = rt.publish(result.customers) if result.customers else True
    counts = {s: result.count(s) for s in ("accepted", "duplicate", "rejected", "conflict")}
    if not visible:
        message = ("stored; the online features are not updated yet (the feature store is unavailable or lacks the "
                   "customer_recent view): they catch up automatically")
    else:
        message = f"stored {counts['accepted']} event(s)" + "".join(
            f", {counts[s]} {word}" for s, word in (("duplicate", "already known"), ("rejected", "rejected"),
                                                     ("conflict", "conflicting with known event ids")) if counts[s])
    return S.EventsResponse(
        accepted=counts["accepted"], duplicates=counts["duplicate"], rejected=counts["rejected"], conflicts=counts["conflict"],
        visible=visible, message=message,
        results=[S.EventResult(index=v.index, event_id=v.event_id, status=v.status, reasons=v.reasons) for v in result.verdicts],
    )

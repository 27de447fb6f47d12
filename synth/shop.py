"""Synthetic order exports in the exact raw schema of a real shop's daily files.

Why: the real export set is small and fixed, so tests that need a specific situation (a customer who
churned, a guest order, a dirty row) and benchmarks that need tens of millions of lines both need a
generator whose output is indistinguishable in *format* from the real files and realistic enough in
*structure* that recommenders, churn and lifetime-value models have something to learn.

Files: one CSV per calendar day that has lines, ``YYYY-MM-DD.csv`` (``.csv.gz`` with ``compress=True``),
header ``InvoiceNo,StockCode,Description,Quantity,InvoiceDate,UnitPrice,CustomerID,Country``. Output is a
pure function of the arguments: the same seed gives the same bytes (gzip headers carry no time or name).

Structure (what a model can find in the data):

- Customers arrive over the period (first order on arrival, arrivals denser at the start; ids grow with
  arrival). Each has a daily order rate drawn from a gamma distribution (most buy rarely, a few very
  often) and a dropout probability drawn from a beta distribution: after every order the customer leaves
  for good with that probability (the BG/NBD story). A weekly pattern and a pre-Christmas peak scale
  the rates.
- Products have Zipf-like popularity and belong to co-purchase clusters (categories, the noun in the
  description). A basket draws most lines from one primary and one secondary cluster; registered customers
  lean towards a home cluster and have 2-6 favourite products, each reappearing in an order with
  probability 0.4.
- Baskets of a few to tens of lines (log-normal); small quantities, except for about 7% wholesale
  customers who buy in dozens. Prices are per product (log-normal), occasionally slightly varied.
- Guests: about ``guest_share`` of orders have an empty CustomerID.
- Returns: about 3% of registered orders are partly cancelled 1-10 days later by a ``C`` invoice of the same
  customer with negative quantities for some of the order's lines (dropped if that day is past the end).
- Non-product lines: postage (``POST``, mostly for orders from abroad), rarely ``M``/``Manual``,
  ``BANK CHARGES`` and ``AMAZONFEE``.
- Dirty rows: each product line of an order is corrupted with probability ``dirty_share``: zero unit price,
  ``not-a-date`` as InvoiceDate, or an absurd quantity (80995 / 74215).

Every line belongs to exactly one class, with the precedence ``features.ingest`` uses:
``invalid`` (a dirty row) > ``non_product`` > ``guest`` (product line without customer) > ``return`` >
``sale``. Returns are only generated for registered customers.

Sizes: lines ~= customers * orders per customer * lines per order / (1 - guest_share), plus about 1.5%
returns and non-product lines. With the default calendar (365 days from 2023-01-02) a registered customer
places about 4.6 orders and an order has about 17 lines (median 12), so
``generate(customers=100_000, products=5_000, days=365)`` writes about 10 million lines (measured:
9.96 million in 365 files, 49 s with ``compress=True``, 87 MB peak RSS). Lines scale linearly with
``customers``; for a target of N lines over 365 days use ``customers = N / 100``. ``days`` changes the orders
per customer less than linearly (about 34 lines per customer for 30 days, 58 for 120, 100 for 365, 134 for
730). ``products`` barely changes the size from a few thousand on; catalogues of a few hundred give
smaller baskets (about 15 lines), as a basket holds each product once.

Identifiers keep the real shape as long as they fit: customer ids are 10000 + arrival rank (five digits up
to 90,000 customers, then six), invoice numbers start at 100000 and stay six-digit for 900,000 invoices
(about 15 million lines), stock codes are five digits with a letter suffix for variants of one family
(six digits only beyond 90,000 product families).

Memory stays flat: customer state is a few arrays of ``customers`` entries, and lines are generated,
formatted and written one day at a time; only the lines of pending returns are carried between days.
"""

from __future__ import annotations

import datetime as dt
import functools
import gzip
import math
import numbers
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from patron.features.ingest import RAW_COLUMNS
from patron.rules import LINE_CLASSES

__all__ = ["HEADER", "CLASSES", "Catalogue", "SynthSummary", "catalogue", "generate", "product_cluster"]

# the shipped data's export layout, and the classes ingestion gives its rows
HEADER = RAW_COLUMNS
CLASSES = LINE_CLASSES

# --------------------------------------------------------------------------- model parameters
# Calibrated so that 100k customers, 5k products and 365 days give about 10 million lines.

RATE_SHAPE = 0.6  # gamma shape of the daily order rate: < 1, so most customers buy rarely
RATE_MEAN = 0.042  # mean daily order rate (orders per day) of a customer before dropout
DROPOUT_A, DROPOUT_B = 1.0, 4.0  # beta prior of the per-order dropout probability (mean 0.2)
ARRIVAL_A, ARRIVAL_B = 1.0, 1.6  # beta shape of arrival time over the calendar: denser at the start
WHOLESALE_SHARE = 0.07
BASKET_MEDIAN, BASKET_SIGMA, BASKET_MAX = 15.0, 0.9, 200  # log-normal lines per order
BASKET_SCALE_SHAPE = 4.0  # gamma shape of a customer's basket-size multiplier (mean 1)
FAV_MIN, FAV_MAX, FAV_P = 2, 6, 0.4  # favourites per customer, and the chance each is in an order
HOME_P = 0.6  # chance that a registered customer's primary cluster is the home cluster
PRIMARY_P, SECONDARY_P = 0.62, 0.23  # line sources; the rest comes from the whole catalogue
ZIPF_S = 1.1  # popularity exponent: weight of the product at rank r is r ** -ZIPF_S
PRICE_MEDIAN, PRICE_SIGMA, PRICE_VARY_P = 2.5, 0.85, 0.03
RETURN_ORDER_P, RETURN_LINE_P, RETURN_PARTIAL_P, RETURN_MAX_DELAY = 0.03, 0.4, 0.3, 10
OPEN_MINUTE, CLOSE_MINUTE = 7 * 60, 20 * 60  # shop hours: invoices from 07:00 to 19:59
WEEKDAY_FACTOR = (1.1, 1.15, 1.15, 1.2, 0.95, 0.55, 0.9)  # Monday .. Sunday
PEAK_DAY_OF_YEAR, PEAK_WIDTH, PEAK_HEIGHT = 330, 22.0, 0.6  # pre-Christmas rush
CUSTOMER_ID_BASE = 10000
INVOICE_START = 100000
GZIP_LEVEL = 6  # level 9 costs twice the time for 3% smaller files

RETAIL_QTY = np.array([1, 2, 3, 4, 6, 8, 12, 24], dtype=np.int64)
RETAIL_QTY_P = np.array([0.30, 0.20, 0.10, 0.12, 0.12, 0.04, 0.10, 0.02])
WHOLESALE_QTY = np.array([6, 12, 24, 36, 48, 72, 96, 144, 288], dtype=np.int64)
WHOLESALE_QTY_P = np.array([0.08, 0.22, 0.22, 0.08, 0.14, 0.08, 0.08, 0.07, 0.03])
ABSURD_QTY = np.array([80995, 74215], dtype=np.int64)
BAD_DATE = "not-a-date"

COUNTRIES: tuple[str, ...] = (
    "United Kingdom",
    "Germany",
    "France",
    "EIRE",
    "Spain",
    "Netherlands",
    "Belgium",
    "Switzerland",
    "Portugal",
    "Australia",
    "Norway",
)
COUNTRY_P = np.array([0.89, 0.02, 0.018, 0.018, 0.01, 0.008, 0.008, 0.008, 0.007, 0.007, 0.006])

# (StockCode, Description, chance per order at home, chance per order from abroad, median price)
_NON_PRODUCT: tuple[tuple[str, str, float, float, float], ...] = (
    ("POST", "POSTAGE", 0.015, 0.45, 18.0),  # priced from _POSTAGE_CENTS, 1-3 parcels
    ("M", "Manual", 0.002, 0.002, 3.0),
    ("BANK CHARGES", "Bank Charges", 0.0005, 0.0005, 15.0),
    ("AMAZONFEE", "AMAZON FEE", 0.0002, 0.0002, 60.0),
)
_POSTAGE_CENTS = np.array([1500, 1800, 2800, 4000], dtype=np.int64)
_PARCELS, _PARCELS_P = np.array([1, 2, 3], dtype=np.int64), np.array([0.75, 0.18, 0.07])

# Word lists for descriptions: upper case, no commas or quotes, so no CSV field ever needs quoting.
_COLOURS: tuple[str, ...] = (
    "RED", "BLUE", "GREEN", "PINK", "WHITE", "BLACK", "IVORY", "CREAM", "YELLOW", "PURPLE",
    "ORANGE", "SILVER", "GOLD", "GREY", "TURQUOISE", "LILAC", "MINT", "NAVY", "ROSE", "BROWN",
)  # fmt: skip
_MATERIALS: tuple[str, ...] = (
    "CERAMIC", "GLASS", "METAL", "WOODEN", "ENAMEL", "PAPER", "FELT", "WICKER", "ZINC", "LINEN",
    "CANVAS", "PORCELAIN", "TIN", "CARDBOARD", "VELVET", "BAMBOO",
)  # fmt: skip
_NOUNS: tuple[str, ...] = (
    "MUG", "LANTERN", "T-LIGHT HOLDER", "CAKE STAND", "DOORMAT", "LUNCH BOX", "TEA TOWEL", "PHOTO FRAME",
    "CANDLE", "JAM JAR", "BUNTING", "SHOPPING BAG", "ALARM CLOCK", "HOT WATER BOTTLE", "COAT HANGER",
    "NOTEBOOK", "GIFT WRAP", "PURSE", "CUSHION COVER", "PLANTER", "BIRD ORNAMENT", "TRINKET BOX",
    "PARTY CUPS", "NAPKINS", "BAKING SET", "STORAGE TIN", "WALL SIGN", "KEY RING", "HAND WARMER",
    "CHILDRENS APRON", "PICNIC BASKET", "SNOW GLOBE", "PENCIL CASE", "DOOR STOP", "WATER BOTTLE",
    "JIGSAW", "TEAPOT", "CLOCK", "BOWL", "HEART DECORATION",
)  # fmt: skip
_THEMES: tuple[str, ...] = (
    "VINTAGE", "RETRO", "CHRISTMAS", "GARDEN", "REGENCY", "SPOTTY", "PAISLEY", "SCANDINAVIAN", "FAIRY",
    "PARISIENNE", "NAUTICAL", "WOODLAND",
)  # fmt: skip


# --------------------------------------------------------------------------- public types


@dataclass(frozen=True)
class SynthSummary:
    """What ``generate`` wrote; every count can be recomputed from the files."""

    files: int
    lines: int  # data lines, headers not counted
    customers: int  # distinct customers on at least one line (customers who bought at least once)
    products: int  # distinct catalogue products on at least one line
    first_day: dt.date
    last_day: dt.date
    classes: dict[str, int]  # lines per intended class (see the module docstring for the precedence)


@dataclass(frozen=True, eq=False)
class Catalogue:
    """The product catalogue of a seed: arrays indexed by product index, all read-only.

    Exposed so that tests and benchmarks can check co-purchase structure against the truth without
    re-deriving it from the files: ``clusters[i]`` is the category of the product with
    ``stock_codes[i]``.
    """

    stock_codes: tuple[str, ...]
    descriptions: tuple[str, ...]
    clusters: np.ndarray  # int64, cluster (category) of each product, 0 .. n_clusters - 1
    popularity: np.ndarray  # float64, Zipf weight, not normalised
    price_cents: np.ndarray  # int64, base unit price in pence
    n_clusters: int

    @functools.cached_property
    def index_of(self) -> dict[str, int]:
        """StockCode -> product index, to map lines of the files back to the catalogue."""
        return {code: i for i, code in enumerate(self.stock_codes)}


# --------------------------------------------------------------------------- argument checks


def _check_count(name: str, value: object) -> int:
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or int(value) <= 0:
        raise ValueError(f"{name} must be a positive integer, got {value!r}")
    return int(value)


def _check_share(name: str, value: object) -> float:
    if isinstance(value, bool) or not isinstance(value, numbers.Real) or not (0.0 <= float(value) < 1.0):
        raise ValueError(f"{name} must be a number in [0, 1), got {value!r}")
    return float(value)


def _check_seed(value: object) -> int:
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or int(value) < 0:
        raise ValueError(f"seed must be a non-negative integer, got {value!r}")
    return int(value)


def _seed_sequence(seed: int, stream: int) -> np.random.SeedSequence:
    """Independent random streams per purpose, so the catalogue depends on (products, seed) only."""
    return np.random.SeedSequence(entropy=seed, spawn_key=(stream,))


# --------------------------------------------------------------------------- catalogue


def _n_clusters(products: int) -> int:
    """About sqrt(products / 2) clusters: 50 for 5,000 products, 9 for 150, so clusters hold tens to
    hundreds of products, like categories of a gift shop."""
    return max(1, min(products, round(math.sqrt(products / 2))))


def catalogue(products: int, seed: int = 0) -> Catalogue:
    """The catalogue ``generate(products=products, seed=seed)`` sells from (cached, read-only)."""
    return _catalogue(_check_count("products", products), _check_seed(seed))


@functools.lru_cache(maxsize=4)
def _catalogue(products: int, seed: int) -> Catalogue:
    rng = np.random.default_rng(_seed_sequence(seed, 0))
    # Families: products sharing a base code, variants told apart by a letter suffix (85123A, 85123B).
    sizes = rng.choice(np.array([1, 2, 3, 4, 5]), p=[0.78, 0.1, 0.06, 0.04, 0.02], size=products)
    n_fam = int(np.searchsorted(np.cumsum(sizes), products) + 1)
    sizes = sizes[:n_fam].copy()
    sizes[-1] -= int(sizes.sum()) - products
    family = np.repeat(np.arange(n_fam), sizes)
    variant = np.arange(products) - np.repeat(np.cumsum(sizes) - sizes, sizes)
    has_suffix = np.repeat(sizes > 1, sizes)
    span = max(90000, n_fam)
    base = 10000 + rng.choice(span, size=n_fam, replace=False)

    k = min(_n_clusters(products), n_fam)
    fam_cluster = rng.permutation(np.arange(n_fam) % k)  # round robin: no cluster is empty
    clusters = fam_cluster[family].astype(np.int64)

    rank = rng.permutation(products)
    popularity = (rank + 1.0) ** -ZIPF_S
    price = np.exp(rng.normal(math.log(PRICE_MEDIAN), PRICE_SIGMA, size=products))
    price_cents = np.maximum(5, np.round(price * 20) * 5).astype(np.int64)  # like 0.85, 2.55, 4.95

    width = max(4, len(str(products - 1)))
    fam_mat = (family * 7 + clusters) % len(_MATERIALS)
    colour = (family * 3 + variant) % len(_COLOURS)
    codes: list[str] = []
    descs: list[str] = []
    for i in range(products):
        f = int(family[i])
        codes.append(f"{base[f]}{chr(65 + int(variant[i]))}" if has_suffix[i] else str(base[f]))
        descs.append(f"{_COLOURS[colour[i]]} {_MATERIALS[fam_mat[i]]} {_category(int(clusters[i]))} {i:0{width}d}")
    for arr in (clusters, popularity, price_cents):
        arr.flags.writeable = False
    return Catalogue(tuple(codes), tuple(descs), clusters, popularity, price_cents, k)


def _category(cluster: int) -> str:
    """Category name of a cluster: a noun, with a theme word once the nouns run out."""
    noun = _NOUNS[cluster % len(_NOUNS)]
    if cluster < len(_NOUNS):
        return noun
    return f"{_THEMES[(cluster // len(_NOUNS) - 1) % len(_THEMES)]} {noun}"


def product_cluster(i: int, products: int, seed: int = 0) -> int:
    """Co-purchase cluster of product ``i`` in the catalogue of ``generate(products=..., seed=...)``."""
    cat = catalogue(products, seed)
    if isinstance(i, bool) or not isinstance(i, numbers.Integral) or not 0 <= int(i) < products:
        raise ValueError(f"i must be a product index in [0, {products}), got {i!r}")
    return int(cat.clusters[int(i)])


class _Sampler:
    """Vectorised popularity-weighted draws, from the whole catalogue or from given clusters.

    Products are laid out sorted by cluster with one cumulative weight array, so a draw inside
    cluster k is one ``searchsorted`` at a uniform position within k's slice of the cumulative sum.
    """

    def __init__(self, cat: Catalogue) -> None:
        self.order: np.ndarray = np.argsort(cat.clusters, kind="stable")
        cum = np.cumsum(cat.popularity[self.order])
        self.cum = cum
        k = cat.n_clusters
        counts = np.bincount(cat.clusters, minlength=k)
        self.first = np.cumsum(counts) - counts
        self.last = self.first + counts - 1
        self.lo = np.where(self.first > 0, cum[np.maximum(self.first - 1, 0)], 0.0)
        self.hi = cum[self.last]
        self.cluster_p = (self.hi - self.lo) / cum[-1]

    def any(self, u: np.ndarray) -> np.ndarray:
        j = np.searchsorted(self.cum, u * self.cum[-1], side="right")
        out: np.ndarray = self.order[np.minimum(j, len(self.cum) - 1)]
        return out

    def within(self, clusters: np.ndarray, u: np.ndarray) -> np.ndarray:
        pos = self.lo[clusters] + u * (self.hi[clusters] - self.lo[clusters])
        j = np.searchsorted(self.cum, pos, side="right")
        out: np.ndarray = self.order[np.clip(j, self.first[clusters], self.last[clusters])]
        return out

    def clusters(self, rng: np.random.Generator, n: int) -> np.ndarray:
        return np.minimum(np.searchsorted(np.cumsum(self.cluster_p), rng.random(n)), len(self.cluster_p) - 1)


# --------------------------------------------------------------------------- customers


@dataclass
class _Customers:
    """Per-customer latent traits; index = arrival rank, so ids grow with arrival like a shop's."""

    arrival: np.ndarray  # day index of the first order, sorted ascending
    rate: np.ndarray  # orders per day while active
    dropout: np.ndarray  # chance to leave for good after each order
    alive: np.ndarray  # bool
    bought: np.ndarray  # bool
    wholesale: np.ndarray  # bool
    basket_scale: np.ndarray
    country: np.ndarray  # index into COUNTRIES
    home: np.ndarray  # home cluster
    favourites: np.ndarray  # (customers, FAV_MAX) product indices
    n_favourites: np.ndarray


def _customers(n: int, days: int, sampler: _Sampler, seed: int) -> _Customers:
    rng = np.random.default_rng(_seed_sequence(seed, 1))
    arrival = np.sort(np.minimum((rng.beta(ARRIVAL_A, ARRIVAL_B, size=n) * days).astype(np.int64), days - 1))
    home = sampler.clusters(rng, n)
    fav = np.empty((n, FAV_MAX), dtype=np.int64)
    for j in range(FAV_MAX):
        in_home = rng.random(n) < 0.75
        fav[:, j] = np.where(in_home, sampler.within(home, rng.random(n)), sampler.any(rng.random(n)))
    return _Customers(
        arrival=arrival,
        rate=rng.gamma(RATE_SHAPE, RATE_MEAN / RATE_SHAPE, size=n),
        dropout=rng.beta(DROPOUT_A, DROPOUT_B, size=n),
        alive=np.ones(n, dtype=bool),
        bought=np.zeros(n, dtype=bool),
        wholesale=rng.random(n) < WHOLESALE_SHARE,
        basket_scale=rng.gamma(BASKET_SCALE_SHAPE, 1.0 / BASKET_SCALE_SHAPE, size=n),
        country=rng.choice(len(COUNTRIES), p=COUNTRY_P / COUNTRY_P.sum(), size=n),
        home=home,
        favourites=fav,
        n_favourites=rng.integers(FAV_MIN, FAV_MAX + 1, size=n),
    )


def _day_factor(day: dt.date) -> float:
    """Demand multiplier of a calendar day: weekly pattern times a pre-Christmas bump."""
    doy = day.timetuple().tm_yday
    peak = PEAK_HEIGHT * math.exp(-0.5 * ((doy - PEAK_DAY_OF_YEAR) / PEAK_WIDTH) ** 2)
    return WEEKDAY_FACTOR[day.weekday()] * (1.0 + peak)


# --------------------------------------------------------------------------- one day


@dataclass
class _Lines:
    """Line arrays of one day before formatting; ``inv`` indexes the day's invoices."""

    inv: np.ndarray
    item: np.ndarray  # product index, or products + k for the k-th non-product code
    qty: np.ndarray
    cents: np.ndarray
    cls: np.ndarray  # index into CLASSES
    bad_date: np.ndarray  # bool


def _categorical(rng: np.random.Generator, values: np.ndarray, p: np.ndarray, n: int) -> np.ndarray:
    idx = np.searchsorted(np.cumsum(p / p.sum()), rng.random(n), side="right")
    return values[np.minimum(idx, len(values) - 1)]


_REDRAWS = 8


def _draw(rng: np.random.Generator, sampler: _Sampler, source: np.ndarray) -> np.ndarray:
    """One popularity-weighted product per entry of ``source`` (a cluster, or -1 for any product)."""
    u = rng.random(len(source))
    return np.where(source >= 0, sampler.within(np.maximum(source, 0), u), sampler.any(u))


def _repeats(order: np.ndarray, prod: np.ndarray, n_products: int) -> np.ndarray:
    """True for every line whose (order, product) already occurred at an earlier position."""
    key = order.astype(np.int64) * n_products + prod
    srt = np.argsort(key, kind="stable")
    dup_sorted = np.zeros(len(key), dtype=bool)
    dup_sorted[1:] = key[srt][1:] == key[srt][:-1]
    out = np.zeros(len(key), dtype=bool)
    out[srt] = dup_sorted
    return out


def _baskets(
    rng: np.random.Generator,
    sampler: _Sampler,
    cust: _Customers,
    o_cust: np.ndarray,
    n_products: int,
) -> tuple[np.ndarray, np.ndarray]:
    """Product lines of the day's orders as (order, product), grouped by order, no repeats in an order."""
    n = len(o_cust)
    reg = o_cust >= 0
    c = np.where(reg, o_cust, 0)
    scale = np.where(reg, cust.basket_scale[c], 1.0)
    size = np.clip(np.rint(np.exp(rng.normal(math.log(BASKET_MEDIAN), BASKET_SIGMA, size=n)) * scale), 1, BASKET_MAX)
    size = size.astype(np.int64)

    fav_take = (rng.random((n, FAV_MAX)) < FAV_P) & (np.arange(FAV_MAX) < cust.n_favourites[c][:, None]) & reg[:, None]
    fav_order, fav_slot = np.nonzero(fav_take)
    fav_prod = cust.favourites[c[fav_order], fav_slot]
    # Every order gets a line: without favourites all ``size`` (>= 1) lines come from the clusters.
    n_other = np.maximum(size - fav_take.sum(axis=1), 0)

    primary = np.where(reg & (rng.random(n) < HOME_P), cust.home[c], sampler.clusters(rng, n))
    secondary = sampler.clusters(rng, n)
    oth_order = np.repeat(np.arange(n), n_other)
    src = rng.random(len(oth_order))
    # Source of each line: a cluster, or -1 for the whole catalogue.
    source = np.where(
        src < PRIMARY_P, primary[oth_order], np.where(src < PRIMARY_P + SECONDARY_P, secondary[oth_order], -1)
    )
    oth_prod = _draw(rng, sampler, source)

    order = np.concatenate([fav_order, oth_order])
    prod = np.concatenate([fav_prod, oth_prod])
    source = np.concatenate([np.full(len(fav_order), -2), source])  # favourites are never redrawn
    # A basket holds a product once. Popular products collide often inside a small cluster, and
    # dropping the repeats would make baskets shrink with the catalogue, so repeats are redrawn from
    # their source a few times (sampling almost without replacement); what still collides is dropped.
    for _ in range(_REDRAWS):
        dup = _repeats(order, prod, n_products)
        dup &= source > -2
        if not dup.any():
            break
        prod[dup] = _draw(rng, sampler, source[dup])
    keep = ~_repeats(order, prod, n_products)
    order, prod = order[keep], prod[keep]
    shuffle = np.lexsort((rng.random(len(order)), order))  # random line order inside each invoice
    return order[shuffle], prod[shuffle]


def _simulate_day(
    rng: np.random.Generator,
    d: int,
    factor: float,
    cat: Catalogue,
    sampler: _Sampler,
    cust: _Customers,
    guest_share: float,
    dirty_share: float,
    n_days: int,
    pending: dict[int, list[tuple[np.ndarray, ...]]],
) -> tuple[_Lines, np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Orders, returns and their lines for day ``d``.

    Returns the lines and, per invoice, (minute of day, customer index or -1, country index, is
    cancellation). Updates customer state (dropout, bought) and schedules future returns.
    """
    n_products = len(cat.stock_codes)
    # --- who orders today
    start, stop = np.searchsorted(cust.arrival, [d, d + 1])
    cand = np.flatnonzero(cust.alive[:start])
    k = rng.poisson(cust.rate[cand] * factor)
    repeat = cand[k > 0]
    k = k[k > 0]
    new = np.arange(start, stop)
    buyers = np.concatenate([repeat, new])
    n_per = np.concatenate([k, np.ones(len(new), dtype=np.int64)])
    # BG/NBD: after each order the customer leaves with their own probability.
    survive = rng.random(len(buyers)) < (1.0 - cust.dropout[buyers]) ** n_per
    cust.alive[buyers] = survive
    cust.bought[buyers] = True
    reg_cust = np.repeat(buyers, n_per)
    n_guest = int(rng.poisson(len(reg_cust) * guest_share / (1.0 - guest_share))) if len(reg_cust) else 0
    o_cust = np.concatenate([reg_cust, np.full(n_guest, -1, dtype=np.int64)])
    n_orders = len(o_cust)
    reg = o_cust >= 0
    o_country = np.where(reg, cust.country[np.where(reg, o_cust, 0)], _categorical(rng, np.arange(len(COUNTRIES)), COUNTRY_P, n_orders))

    # --- product lines
    p_order, p_prod = _baskets(rng, sampler, cust, o_cust, n_products)
    whole = reg & cust.wholesale[np.where(reg, o_cust, 0)]
    n_pl = len(p_order)
    p_qty = np.where(
        whole[p_order],
        _categorical(rng, WHOLESALE_QTY, WHOLESALE_QTY_P, n_pl),
        _categorical(rng, RETAIL_QTY, RETAIL_QTY_P, n_pl),
    )
    p_cents = cat.price_cents[p_prod]
    vary = rng.random(n_pl) < PRICE_VARY_P
    p_cents = np.where(vary, np.maximum(1, np.rint(p_cents * rng.uniform(0.85, 1.15, n_pl))).astype(np.int64), p_cents)

    # --- returns of today's orders, cancelled later (lines carry the clean values)
    ret_order = np.flatnonzero(reg & (rng.random(n_orders) < RETURN_ORDER_P))
    if len(ret_order):
        picked = np.isin(p_order, ret_order) & (rng.random(n_pl) < RETURN_LINE_P)
        first_line = np.searchsorted(p_order, ret_order)  # every order has at least one product line
        empty = np.bincount(p_order[picked], minlength=n_orders)[ret_order] == 0
        picked[first_line[empty]] = True
        idx = np.flatnonzero(picked)
        q = p_qty[idx]
        partial = (rng.random(len(idx)) < RETURN_PARTIAL_P) & (q > 1)
        r_qty = -np.where(partial, 1 + (rng.random(len(idx)) * (q - 1)).astype(np.int64), q)
        delay = rng.integers(1, RETURN_MAX_DELAY + 1, size=n_orders)
        due = d + delay[p_order[idx]]
        for day in np.unique(due):
            if day < n_days:
                m = due == day
                pending.setdefault(int(day), []).append(
                    (p_order[idx[m]], o_cust[p_order[idx[m]]], p_prod[idx[m]], r_qty[m], p_cents[idx[m]])
                )

    # --- non-product lines
    abroad = o_country != 0
    np_order: list[np.ndarray] = []
    np_item: list[np.ndarray] = []
    np_qty: list[np.ndarray] = []
    np_cents: list[np.ndarray] = []
    for j, (code, _desc, p_home, p_abroad, median) in enumerate(_NON_PRODUCT):
        hit = np.flatnonzero(rng.random(n_orders) < np.where(abroad, p_abroad, p_home))
        np_order.append(hit)
        np_item.append(np.full(len(hit), n_products + j, dtype=np.int64))
        if code == "POST":  # a tariff per parcel
            np_qty.append(_categorical(rng, _PARCELS, _PARCELS_P, len(hit)))
            np_cents.append(_POSTAGE_CENTS[rng.integers(0, len(_POSTAGE_CENTS), size=len(hit))])
        else:  # fees and manual adjustments: one line of an odd amount
            np_qty.append(np.ones(len(hit), dtype=np.int64))
            amount = np.exp(rng.normal(math.log(median), 0.6, len(hit))) * 100
            np_cents.append(np.maximum(1, np.rint(amount)).astype(np.int64))
    n_order = np.concatenate(np_order)
    n_item = np.concatenate(np_item)
    n_qty = np.concatenate(np_qty)
    n_cents = np.concatenate(np_cents)
    # group the non-product lines by order; they follow the order's product lines
    srt = np.argsort(n_order, kind="stable")
    n_order, n_item, n_qty, n_cents = n_order[srt], n_item[srt], n_qty[srt], n_cents[srt]

    # --- returns due today: one C invoice per original order
    due_today = pending.pop(d, [])
    if due_today:
        src_order = np.concatenate([np.full(len(ch[0]), i, dtype=np.int64) * (1 << 32) + ch[0] for i, ch in enumerate(due_today)])
        _, group = np.unique(src_order, return_inverse=True)
        group = group.ravel()
        r_cust = np.concatenate([ch[1] for ch in due_today])
        r_item = np.concatenate([ch[2] for ch in due_today])
        r_qty_t = np.concatenate([ch[3] for ch in due_today])
        r_cents = np.concatenate([ch[4] for ch in due_today])
        n_ret = int(group.max()) + 1
        g_cust = np.zeros(n_ret, dtype=np.int64)
        g_cust[group] = r_cust
    else:
        group = r_cust = r_item = r_qty_t = r_cents = np.zeros(0, dtype=np.int64)
        n_ret = 0
        g_cust = np.zeros(0, dtype=np.int64)

    # --- invoices of the day: orders then cancellations
    inv_cust = np.concatenate([o_cust, g_cust])
    inv_country = np.concatenate([o_country, cust.country[g_cust]]) if n_ret else o_country
    inv_cancel = np.concatenate([np.zeros(n_orders, dtype=bool), np.ones(n_ret, dtype=bool)])
    minute = OPEN_MINUTE + (rng.beta(2.2, 2.6, size=n_orders + n_ret) * (CLOSE_MINUTE - OPEN_MINUTE)).astype(np.int64)

    # --- classes and dirty rows (product lines of orders only)
    p_cls = np.where(reg[p_order], CLASSES.index("sale"), CLASSES.index("guest"))
    bad_date = np.zeros(n_pl, dtype=bool)
    if dirty_share > 0:
        dirty = np.flatnonzero(rng.random(n_pl) < dirty_share)
        kind = rng.integers(0, 3, size=len(dirty))
        p_cents[dirty[kind == 0]] = 0
        bad_date[dirty[kind == 1]] = True
        p_qty[dirty[kind == 2]] = ABSURD_QTY[rng.integers(0, len(ABSURD_QTY), size=int((kind == 2).sum()))]
        p_cls[dirty] = CLASSES.index("invalid")

    lines = _Lines(
        inv=np.concatenate([p_order, n_order, n_orders + group]),
        item=np.concatenate([p_prod, n_item, r_item]),
        qty=np.concatenate([p_qty, n_qty, r_qty_t]),
        cents=np.concatenate([p_cents, n_cents, r_cents]),
        cls=np.concatenate(
            [
                p_cls,
                np.full(len(n_order), CLASSES.index("non_product")),
                np.full(len(group), CLASSES.index("return")),
            ]
        ),
        bad_date=np.concatenate([bad_date, np.zeros(len(n_order) + len(group), dtype=bool)]),
    )
    return lines, minute, inv_cust, inv_country, inv_cancel


# --------------------------------------------------------------------------- formatting and writing


def _strings(values: np.ndarray, fmt: Callable[[int], str]) -> np.ndarray:
    """Format an integer array through its distinct values: a day has few distinct prices and quantities,
    so this formats thousands of numbers instead of millions."""
    uniq, inv = np.unique(values, return_inverse=True)
    table = np.array([fmt(v) for v in uniq.tolist()], dtype=object)
    return table[inv.ravel()]


def _money(cents: int) -> str:
    return f"{cents // 100}.{cents % 100:02d}"


def _format_day(
    day: dt.date,
    lines: _Lines,
    inv_no: np.ndarray,
    minute: np.ndarray,
    inv_cust: np.ndarray,
    inv_country: np.ndarray,
    inv_cancel: np.ndarray,
    item_text: np.ndarray,
) -> str:
    """The day's CSV text, lines ordered by invoice number (which follows time)."""
    iso = day.isoformat()
    head = np.array([f"C{n}" if c else str(n) for n, c in zip(inv_no.tolist(), inv_cancel.tolist())], dtype=object)
    date = np.array([f"{iso} {m // 60:02d}:{m % 60:02d}:00" for m in minute.tolist()], dtype=object)
    tail = np.array(
        [(f"{CUSTOMER_ID_BASE + c}.0," if c >= 0 else ",") + COUNTRIES[k] for c, k in zip(inv_cust.tolist(), inv_country.tolist())],
        dtype=object,
    )
    order = np.argsort(inv_no[lines.inv], kind="stable")
    inv = lines.inv[order]
    d_col = date[inv]
    bad = lines.bad_date[order]
    if bad.any():
        d_col[bad] = BAD_DATE
    cols = (head[inv], item_text[lines.item[order]], _strings(lines.qty[order], str), d_col, _strings(lines.cents[order], _money), tail[inv])
    body = "\n".join([f"{a},{b},{c},{e},{f},{g}" for a, b, c, e, f, g in zip(*(x.tolist() for x in cols))])
    return ",".join(HEADER) + "\n" + body + "\n"


def _write(path: Path, text: str, compress: bool) -> None:
    """Write via a hidden temporary name and rename, so a crash never leaves a half file under a real name."""
    tmp = path.with_name(f".{path.name}.tmp")
    data = text.encode("utf-8")
    with open(tmp, "wb") as fh:
        if compress:
            # No file name and mtime 0 in the header: same input, same bytes.
            with gzip.GzipFile(filename="", mode="wb", fileobj=fh, compresslevel=GZIP_LEVEL, mtime=0) as gz:
                gz.write(data)
        else:
            fh.write(data)
    os.replace(tmp, path)


# --------------------------------------------------------------------------- entry point


def generate(
    out_dir: Path,
    *,
    customers: int,
    products: int,
    days: int,
    start: dt.date = dt.date(2023, 1, 2),
    seed: int = 0,
    guest_share: float = 0.2,
    dirty_share: float = 0.005,
    compress: bool = False,
) -> SynthSummary:
    """Write one export file per day with lines into ``out_dir`` (created if missing) and say what was written.

    Files of the same names are overwritten; other files in ``out_dir`` are left alone, so use an empty
    directory if the summary should describe the whole directory. See the module docstring for the
    structure of the data and how to choose ``customers`` for a target number of lines.
    """
    customers = _check_count("customers", customers)
    products = _check_count("products", products)
    days = _check_count("days", days)
    seed = _check_seed(seed)
    guest_share = _check_share("guest_share", guest_share)
    dirty_share = _check_share("dirty_share", dirty_share)
    if not isinstance(start, dt.date) or isinstance(start, dt.datetime):
        raise ValueError(f"start must be a datetime.date, got {start!r}")
    if (dt.date.max - start).days < days - 1:
        raise ValueError(f"start + days must stay before {dt.date.max}, got start={start} and days={days}")
    if not isinstance(compress, bool):
        raise ValueError(f"compress must be a bool, got {compress!r}")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)

    cat = _catalogue(products, seed)
    sampler = _Sampler(cat)
    cust = _customers(customers, days, sampler, seed)
    item_text = np.array(
        [f"{c},{t}" for c, t in zip(cat.stock_codes, cat.descriptions)] + [f"{c},{t}" for c, t, *_ in _NON_PRODUCT],
        dtype=object,
    )
    rng = np.random.default_rng(_seed_sequence(seed, 2))
    pending: dict[int, list[tuple[np.ndarray, ...]]] = {}
    sold = np.zeros(products, dtype=bool)
    classes = np.zeros(len(CLASSES), dtype=np.int64)
    next_invoice = INVOICE_START
    files = n_lines = 0
    written: list[dt.date] = []
    suffix = ".csv.gz" if compress else ".csv"

    for d in range(days):
        day = start + dt.timedelta(days=d)
        lines, minute, inv_cust, inv_country, inv_cancel = _simulate_day(
            rng, d, _day_factor(day), cat, sampler, cust, guest_share, dirty_share, days, pending
        )
        if len(lines.inv) == 0:
            continue
        # Invoice numbers follow time across the whole export; ties keep orders before cancellations.
        rank = np.empty(len(minute), dtype=np.int64)
        rank[np.argsort(minute, kind="stable")] = np.arange(len(minute))
        inv_no = next_invoice + rank
        next_invoice += len(minute)
        text = _format_day(day, lines, inv_no, minute, inv_cust, inv_country, inv_cancel, item_text)
        _write(out / f"{day.isoformat()}{suffix}", text, compress)
        files += 1
        n_lines += len(lines.inv)
        classes += np.bincount(lines.cls, minlength=len(CLASSES))
        sold[lines.item[lines.item < products]] = True
        written.append(day)

    return SynthSummary(
        files=files,
        lines=n_lines,
        customers=int(cust.bought.sum()),
        products=int(sold.sum()),
        first_day=written[0] if written else start,
        last_day=written[-1] if written else start,
        classes={c: int(n) for c, n in zip(CLASSES, classes)},
    )

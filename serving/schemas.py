"""Request and response models of the HTTP API: the contract the OpenAPI document publishes.

Requests refuse unknown fields and coerce nothing (a customer id given as "17850" or 17850.5 is
refused, not guessed at): a client's mistake gets a 4xx that names the field, never a 500 or a
silently different answer.
"""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, StrictBool, StrictInt, StringConstraints

from patron.validation import integral

MAX_K = 100
MAX_IDS = 1000
MAX_ITEMS = 200

# Integers within bounds: no strings, no booleans, no fractions. The bounds sit inside the
# validator so that the JSON schema states them (minimum / maximum).
CustomerId = Annotated[StrictInt, Field(ge=1, le=2**53), BeforeValidator(integral),
                       Field(description="the shop's customer id", examples=[17850])]
# At least one visible character. Spelled out rather than ``\S`` because the OpenAPI document's
# regex dialect and Python disagree on what is white space (Python strips \x1c-\x1f and \x85,
# which ``\S`` accepts; it keeps \ufeff): a string the document calls valid must not be
# stripped to nothing here.
VISIBLE = r"[^\t\n\v\f\r \xa0\u1680\u2000-\u200a\u2028\u2029\u202f\u205f\u3000\ufeff\x00-\x1f\x7f-\x9f]"
ItemId = Annotated[
    str,
    StringConstraints(strict=True, strip_whitespace=True, to_upper=True, min_length=1, max_length=64, pattern=VISIBLE),
    Field(description="a product code (stock code)", examples=["85123A"]),
]
K = Annotated[StrictInt, Field(ge=1, le=MAX_K), BeforeValidator(integral), Field(description=f"how many items, 1..{MAX_K}")]


class Request(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class Response(BaseModel):
    model_config = ConfigDict(extra="forbid")


# ---------------------------------------------------------------------------------------- storefront


class RecommendRequest(Request):
    customer_id: CustomerId | None = Field(None, description="omit for an anonymous shopper")
    session_items: Annotated[list[ItemId], Field(max_length=MAX_ITEMS)] = Field(
        default_factory=list, description="an anonymous shopper's basket: items bought with them are recommended"
    )
    k: K = 10
    exclude_purchased: StrictBool = Field(False, description="leave out everything the customer bought before")
    exclude_items: Annotated[list[ItemId], Field(max_length=MAX_IDS)] = Field(default_factory=list)


class Item(Response):
    item_id: str
    description: str
    score: float = Field(description="comparable within one source only")
    reason: str = Field(description="why, in words a shopper understands")
    source: Literal["buy_again", "co_purchase", "als", "ease", "trending", "popular", "session"]


class Freshness(Response):
    features_as_of: str | None = Field(None, description="the snapshot the customer's features come from")
    events_through: str | None = Field(None, description="time of the newest storefront event applied on top of the snapshot")
    events_received_at: str | None = Field(None, description="when that event reached the service")
    age_seconds: float | None = Field(None, description="seconds since the newest information used (snapshot or event) arrived")
    purchases_since_snapshot: int = Field(0, description="purchase lines of the storefront after the snapshot (the newest 100 at most)")
    orders_since_snapshot: int = Field(0, description="storefront orders applied on top of the snapshot")
    complete: bool = Field(True, description="false when a customer has more storefront orders than the service keeps: the oldest of "
                                             "those after the snapshot are left out")


Fallback = Literal["unknown_customer", "no_customer", "features_unavailable", "unknown_item", "no_known_items"]


class RecommendResponse(Response):
    customer_id: int | None
    items: list[Item]
    fallback: Fallback | None = Field(None, description="set when a non-personal list was used, and why")
    model_versions: dict[str, str]
    features_as_of: str | None = Field(None, description="the snapshot the customer's features come from")
    freshness: Freshness | None = Field(None, description="how old the customer's features are, storefront events included")


class SimilarItemsRequest(Request):
    item_id: ItemId
    k: K = 10


class SimilarItemsResponse(Response):
    item_id: str
    items: list[Item]
    fallback: Fallback | None = None
    model_versions: dict[str, str]


class PopularRequest(Request):
    k: K = 10
    days: Annotated[StrictInt, Field(ge=1, le=365), BeforeValidator(integral)] | None = Field(None, description="look-back window; default 30 days")


class PopularResponse(Response):
    items: list[Item]
    days: int
    as_of: str = Field(description="the end of the look-back window: the recommender's data end")
    model_versions: dict[str, str]


# ---------------------------------------------------------------------------------------------- CRM


class CustomersRequest(Request):
    customer_ids: Annotated[list[CustomerId], Field(min_length=1, max_length=MAX_IDS)]


Status = Literal["ok", "unknown_customer"]


class Reason(Response):
    feature: str
    description: str
    value: float | None
    typical: float
    effect: float = Field(description="rise in churn probability this feature alone explains")


class ChurnScore(Response):
    customer_id: int
    status: Status
    churn_probability: float | None = None
    risk_band: Literal["low", "medium", "high"] | None = None
    reasons: list[Reason] = Field(default_factory=list)


class ChurnResponse(Response):
    results: list[ChurnScore] = Field(description="one per id asked, in the order asked")
    model_versions: dict[str, str]
    features_as_of: str | None


class LTVScore(Response):
    customer_id: int
    status: Status
    predicted_value: float | None = Field(None, description="expected spend within the horizon")
    predicted_orders: float | None = None
    p_alive: float | None = None
    tier: Literal["platinum", "gold", "silver", "bronze"] | None = None
    expected_next_order_date: str | None = None
    horizon_days: int | None = None


class LTVResponse(Response):
    results: list[LTVScore]
    model_versions: dict[str, str]
    features_as_of: str | None


class CustomerRequest(Request):
    customer_id: CustomerId


class Order(Response):
    invoice_no: str
    date: str
    lines: int
    amount: float


class CustomerResponse(Response):
    customer_id: int
    status: Status
    features: dict[str, float | str | None]
    churn: ChurnScore
    ltv: LTVScore
    recent_orders: list[Order]
    recommendations: list[Item]
    model_versions: dict[str, str]
    features_as_of: str | None
    freshness: Freshness | None = None


# ------------------------------------------------------------------------------------------- events

MAX_EVENTS = 1000


class EventsRequest(Request):
    events: Annotated[list[object], Field(min_length=1, max_length=MAX_EVENTS)] = Field(
        description=(
            "1..1000 events, each validated on its own (a bad one is rejected with reasons, the others are kept): "
            "{event_id: str, type: purchase|add_to_cart|view, customer_id?: int, session_id?: str, item_id: str, "
            "quantity?: int >= 1 (default 1), price?: number > 0 (required for a purchase), "
            "timestamp: ISO 8601 with a UTC offset, order_id?: str (purchases: the order's invoice number)}; "
            "customer_id or session_id is required"
        ),
    )


class EventResult(Response):
    index: int = Field(description="position in the batch")
    event_id: str | None
    status: Literal["accepted", "duplicate", "rejected", "conflict"]
    reasons: list[str] = Field(default_factory=list, description="why it was rejected or is a conflict")


class EventsResponse(Response):
    accepted: int
    duplicates: int = Field(description="events whose event_id was already known: nothing changed")
    rejected: int = Field(description="kept with their reasons, not applied")
    conflicts: int = Field(0, description="event ids already used for other content: refused, kept with the reason")
    results: list[EventResult] = Field(description="one per event, in the order sent")
    visible: bool = Field(description="true when the online features already reflect the accepted events")
    message: str


# -------------------------------------------------------------------------------------------- admin


class ReloadRequest(Request):
    pass


class ReloadResponse(Response):
    reloaded: bool
    message: str
    model_versions: dict[str, str]
    previous_versions: dict[str, str]


class ErrorResponse(Response):
    error: str
    detail: list[str] = Field(default_factory=list)


KiB = 1024


class Endpoint(BaseModel):
    scope: Literal["storefront", "crm", "admin"]
    request: type[Request]
    response: type[Response]
    summary: str
    # the largest body the contract allows, with room for pretty-printing; refused before parsing
    max_body: int = 16 * KiB


ENDPOINTS: dict[str, Endpoint] = {
    "/recommend": Endpoint(scope="storefront", request=RecommendRequest, response=RecommendResponse,
                           summary="Ranked items for a customer, an anonymous basket, or nobody (best sellers)",
                           max_body=128 * KiB),  # 200 basket items and 1,000 exclusions of 64 characters
    "/similar_items": Endpoint(scope="storefront", request=SimilarItemsRequest, response=SimilarItemsResponse,
                               summary="Items most often bought with the given item"),
    "/popular": Endpoint(scope="storefront", request=PopularRequest, response=PopularResponse,
                         summary="Best sellers: most distinct buyers over the last days"),
    "/churn": Endpoint(scope="crm", request=CustomersRequest, response=ChurnResponse,
                       summary="Churn probability, risk band and reasons for 1..1000 customers, in the order asked",
                       max_body=64 * KiB),  # 1,000 ids
    "/ltv": Endpoint(scope="crm", request=CustomersRequest, response=LTVResponse,
                     summary="Predicted spend and orders, P(alive), tier and next order date for 1..1000 customers",
                     max_body=64 * KiB),
    "/customer": Endpoint(scope="crm", request=CustomerRequest, response=CustomerResponse,
                          summary="One customer's profile: key features, churn, LTV, recent orders, recommendations"),
    "/events": Endpoint(scope="storefront", request=EventsRequest, response=EventsResponse,
                        summary="Storefront events (purchase, add_to_cart, view): validated, deduplicated, stored durably, applied at once",
                        max_body=1024 * KiB),  # 1,000 events of up to about 700 bytes
    "/admin/reload": Endpoint(scope="admin", request=ReloadRequest, response=ReloadResponse,
                              summary="Load the current @champion models; on failure the models in use keep serving"),
}
SCOPES = {path: e.scope for path, e in ENDPOINTS.items()}

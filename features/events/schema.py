"""One storefront event, as the service takes it: the model every event is validated against, and
the verdict it gets."""

from __future__ import annotations

import datetime as dt
import hashlib
from dataclasses import dataclass, field
from typing import Annotated, Literal

from pydantic import (
    AwareDatetime,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    StrictInt,
    StringConstraints,
    ValidationError,
    model_validator,
)

from patron.rules import Plausibility, is_non_product
from patron.validation import finite, integral

PUSH_SOURCE = "customer_events_push"
RECENT_VIEW = "customer_recent"
MAX_BATCH = 1000
MAX_PURCHASES = 100  # purchase lines kept in a customer's online state (for their items), newest first
MAX_ORDERS = 5000  # orders kept in a customer's online state (for counts and spend), newest first
MAX_BASKET = 30
REJECTED_BODY_BYTES = 4096  # a rejected event is kept whole up to this size, cut beyond


Text = Annotated[str, StringConstraints(strict=True, strip_whitespace=True, min_length=1, max_length=128, pattern=r"^[^\x00-\x1f]+$")]


class Event(BaseModel):
    """One storefront event. Unknown fields are refused, nothing is coerced from a string."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    event_id: Text = Field(description="unique per event: a repeat of a known id changes nothing")
    type: Literal["purchase", "add_to_cart", "view"]
    customer_id: Annotated[StrictInt, Field(ge=1, le=2**53), BeforeValidator(integral)] | None = None
    session_id: Text | None = Field(None, description="a shopper's session; attached to the customer of the first event carrying both")
    item_id: Annotated[str, StringConstraints(strict=True, strip_whitespace=True, to_upper=True, min_length=1, max_length=64, pattern=r"^[^\x00-\x1f]+$")]
    # the bounds of a believable line are patron.rules.Plausibility's, checked in validate()
    quantity: Annotated[StrictInt, Field(ge=1, le=2**31), BeforeValidator(integral)] | None = Field(None, description="default 1")
    price: Annotated[float, BeforeValidator(finite), Field(gt=0)] | None = Field(None, description="unit price; required for a purchase")
    timestamp: AwareDatetime = Field(description="when it happened, ISO 8601 with a UTC offset")
    order_id: Annotated[str, StringConstraints(strict=True, strip_whitespace=True, to_upper=True, min_length=1, max_length=64,
                                               pattern=r"^[^C\x00-\x1f][^\x00-\x1f]*$")] | None = Field(
        None, description="the order (invoice) a purchase belongs to, as the shop's order export will name it")

    @model_validator(mode="after")
    def _rules(self) -> Event:
        problems = []
        if self.customer_id is None and self.session_id is None:
            problems.append("needs customer_id or session_id")
        if self.type == "purchase" and self.price is None:
            problems.append("a purchase needs its unit price")
        if self.type != "purchase" and self.order_id is not None:
            problems.append("order_id belongs to purchases only")
        if problems:
            raise ValueError("; ".join(problems))
        return self

    @property
    def epoch(self) -> float:
        return self.timestamp.timestamp()

    def digest(self) -> str:
        """The event's content: a repeat of its id with other content is a conflict, not a duplicate."""
        return hashlib.sha256(self.model_dump_json(exclude={"event_id"}).encode()).hexdigest()[:32]


def _reasons(exc: ValidationError) -> list[str]:
    out = []
    for e in exc.errors(include_input=False, include_url=False, include_context=False):
        where = ".".join(str(p) for p in e["loc"])
        msg = e["msg"].removeprefix("Value error, ")
        if e["type"] == "string_pattern_mismatch" and where == "order_id":
            msg = "must not start with C (a cancellation in order exports) nor hold control characters"
        out.append(f"{where}: {msg}" if where else msg)
    return out


@dataclass(frozen=True)
class Verdict:
    """What became of one event of a batch, in the batch's order."""

    index: int
    event_id: str | None
    status: Literal["accepted", "duplicate", "rejected", "conflict"]
    reasons: list[str] = field(default_factory=list)


def validate(raw: object, now: float, plausible: Plausibility = Plausibility(), floor: dt.datetime | None = None) -> Event | list[str]:
    """An event, or why it is refused: its form, then the rules every order line obeys (quantity,
    price, time window: not before ``floor``, the shop's first order, nor ahead of the clock)."""
    if not isinstance(raw, dict):
        return [f"an event is a JSON object, got a JSON {type(raw).__name__}"]
    try:
        event = Event.model_validate(raw)
    except ValidationError as exc:
        return _reasons(exc)
    try:
        when = event.timestamp.astimezone(dt.timezone.utc)
        event.epoch  # noqa: B018 - a time that exists only in another zone (year 0, year 10000) fails here
    except (OverflowError, ValueError, OSError):
        return ["timestamp: is outside the range of dates this service can represent"]
    problems = plausible.problems(quantity=event.quantity or 1, unit_price=event.price, item_id=event.item_id, when=when,
                                  now=dt.datetime.fromtimestamp(now, dt.timezone.utc), floor=floor)
    if event.type != "purchase" and is_non_product(event.item_id):
        problems.append(f"item_id: {event.item_id!r} is a service line (postage, fees), not a product one can view or add to a cart")
    return problems or event


def order_key(order_id: str | None, customer: int | None, session: str | None, ts: float, event_id: str) -> str:
    """The invoice a purchase line belongs to: its order id, or one shared by the lines of a checkout
    (same shopper, same second). Never starts with C (a cancellation in order exports)."""
    if order_id:
        return order_id
    who = f"c{customer}" if customer is not None else f"s{session}" if session else f"e{event_id}"
    return "EV" + hashlib.sha1(f"{who}@{int(ts)}".encode()).hexdigest()[:12].upper()

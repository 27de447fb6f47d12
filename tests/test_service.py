"""The HTTP service end to end: a real `bentoml serve` over models trained by the real pipeline
(Feast, MLflow) on a small synthetic shop, called over HTTP."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.conftest import AS_OF, KEYS, Server
from training.data import load_lines

@pytest.fixture(scope="module")
def server(trained_home: Path):
    s = Server(trained_home)
    yield s
    s.stop()


@pytest.fixture(scope="module")
def bought(trained_home: Path) -> dict[int, set[str]]:
    lines = load_lines(trained_home / "data", end=AS_OF)
    return {int(c): set(g) for c, g in lines.groupby("customer_id")["item_id"]}


def a_regular(bought: dict[int, set[str]]) -> int:
    return max(bought, key=lambda c: (len(bought[c]), -c))


# ------------------------------------------------------------------------------------------ auth


def test_keys_and_scopes(server: Server, bought) -> None:
    c = a_regular(bought)
    assert server.post("/recommend", {"customer_id": c}, key=None)[0] == 401
    assert server.post("/recommend", {"customer_id": c}, key="not-a-key")[0] == 401
    status, body = server.post("/churn", {"customer_ids": [c]}, key="storefront")
    assert status == 403 and "crm scope" in body["error"]
    assert server.post("/admin/reload", {}, key="crm")[0] == 403
    assert server.post("/churn", {"customer_ids": [c]}, key="crm")[0] == 200
    assert server.get("/livez") == 200 and server.get("/readyz") == 200 and server.get("/metrics") == 200


# ------------------------------------------------------------------------------------ storefront


def test_recommend_honours_k_and_exclusions(server: Server, bought) -> None:
    c = a_regular(bought)
    status, body = server.post("/recommend", {"customer_id": c, "k": 7})
    assert status == 200 and len(body["items"]) == 7 and body["fallback"] is None
    assert body["model_versions"]["recommender"].startswith("recommender/") and body["features_as_of"]
    assert all(i["reason"] and i["description"] is not None for i in body["items"])
    first = [i["item_id"] for i in body["items"]][:3]
    status, body = server.post("/recommend", {"customer_id": c, "k": 7, "exclude_items": first})
    assert status == 200 and not set(first) & {i["item_id"] for i in body["items"]} and len(body["items"]) == 7
    catalogue = set().union(*bought.values())
    new = len(catalogue - bought[c])  # this regular has bought most of the small shop's range
    status, body = server.post("/recommend", {"customer_id": c, "k": 50, "exclude_purchased": True})
    assert status == 200 and len(body["items"]) == min(50, new)
    assert not {i["item_id"] for i in body["items"]} & bought[c]  # discovery: never bought before


def test_buy_again_reason_speaks_of_the_rhythm(server: Server, bought) -> None:
    status, body = server.post("/recommend", {"customer_id": a_regular(bought), "k": 20})
    reasons = [i["reason"] for i in body["items"] if i["source"] == "buy_again"]
    assert reasons and all(r.startswith(("you buy this every ~", "you bought this")) for r in reasons)


def test_unknown_or_missing_customer_gets_a_non_personal_list(server: Server, bought) -> None:
    status, body = server.post("/recommend", {"customer_id": 999_999_999, "k": 5})
    assert status == 200 and body["fallback"] == "unknown_customer" and len(body["items"]) == 5
    assert {i["source"] for i in body["items"]} == {"popular"}
    basket = sorted(bought[a_regular(bought)])[:2]
    status, body = server.post("/recommend", {"session_items": basket, "k": 5})
    assert status == 200 and body["fallback"] == "no_customer"
    assert body["items"][0]["source"] == "session" and not set(basket) & {i["item_id"] for i in body["items"]}


def test_similar_and_popular(server: Server, bought) -> None:
    item = sorted(bought[a_regular(bought)])[0]
    status, body = server.post("/similar_items", {"item_id": item, "k": 4})
    assert status == 200 and len(body["items"]) == 4 and item not in {i["item_id"] for i in body["items"]}
    assert server.post("/similar_items", {"item_id": "NO-SUCH-ITEM"})[1]["fallback"] == "unknown_item"
    status, body = server.post("/popular", {"k": 3, "days": 14})
    assert status == 200 and body["days"] == 14 and len(body["items"]) == 3
    assert [i["score"] for i in body["items"]] == sorted((i["score"] for i in body["items"]), reverse=True)


# ------------------------------------------------------------------------------------------- CRM


def test_churn_and_ltv_answer_in_order_with_a_status_for_unknown_ids(server: Server, bought) -> None:
    known = sorted(bought)[:3]
    ids = [known[0], 424242, known[1], known[0], known[2]]
    status, body = server.post("/churn", {"customer_ids": ids}, key="crm")
    assert status == 200 and [r["customer_id"] for r in body["results"]] == ids
    assert [r["status"] for r in body["results"]] == ["ok", "unknown_customer", "ok", "ok", "ok"]
    assert body["results"][0] == body["results"][3]
    assert all(0 <= r["churn_probability"] <= 1 and r["risk_band"] in ("low", "medium", "high") for r in body["results"] if r["status"] == "ok")
    assert body["model_versions"]["churn"].startswith("churn/") and body["features_as_of"]
    status, body = server.post("/ltv", {"customer_ids": ids}, key="crm")
    assert status == 200 and [r["status"] for r in body["results"]] == ["ok", "unknown_customer", "ok", "ok", "ok"]
    ok = [r for r in body["results"] if r["status"] == "ok"]
    assert all(r["predicted_value"] >= 0 and r["tier"] in ("platinum", "gold", "silver", "bronze") for r in ok)


def test_customer_profile(server: Server, bought) -> None:
    c = a_regular(bought)
    status, body = server.post("/customer", {"customer_id": c}, key="crm")
    assert status == 200 and body["status"] == "ok" and body["features"]["frequency"] >= 1
    assert body["churn"]["status"] == "ok" and body["ltv"]["status"] == "ok"
    assert body["recent_orders"] and len(body["recommendations"]) == 10
    assert set(body["model_versions"]) == {"churn", "ltv", "recommender"}


def test_reload_keeps_serving(server: Server, bought) -> None:
    status, body = server.post("/admin/reload", {}, key="admin")
    assert status == 200 and body["reloaded"] and body["model_versions"] == body["previous_versions"]


# ------------------------------------------------------------------------------------- bad input


@pytest.mark.parametrize(
    ("path", "payload", "status", "says"),
    [
        ("/recommend", b"{not json", 400, "not valid JSON"),
        ("/recommend", b"[1, 2]", 422, "JSON object"),
        ("/recommend", json.dumps({"customer_id": "17850"}).encode(), 422, "customer_id"),
        ("/recommend", json.dumps({"customer_id": 17850.5}).encode(), 422, "customer_id"),
        ("/recommend", json.dumps({"customer_id": True}).encode(), 422, "customer_id"),
        ("/recommend", json.dumps({"k": 0}).encode(), 422, "k"),
        ("/recommend", json.dumps({"k": 10_000}).encode(), 422, "k"),
        ("/recommend", json.dumps({"colour": "red"}).encode(), 422, "colour"),
        ("/recommend", json.dumps({"exclude_items": "85123A"}).encode(), 422, "exclude_items"),
        ("/recommend", b"[" * 5000 + b"]" * 5000, 400, "nested"),
        ("/similar_items", json.dumps({"item_id": ""}).encode(), 422, "item_id"),
        ("/churn", json.dumps({"customer_ids": []}).encode(), 422, "customer_ids"),
        ("/churn", json.dumps({"customer_ids": list(range(1, 1002))}).encode(), 422, "customer_ids"),
        ("/churn", json.dumps({"customer_ids": ["abc"]}).encode(), 422, "customer_ids.0"),
        ("/churn", b"", 422, "customer_ids"),
    ],
)
def test_bad_input_gets_a_4xx_that_names_the_problem(server: Server, path, payload, status, says) -> None:
    key = "crm" if path == "/churn" else "storefront"
    got, body = server.post(path, raw=payload, key=key)
    assert got == status, body
    assert says in body["error"] + " ".join(body.get("detail", []))


def test_oversized_bodies_are_refused(server: Server) -> None:
    got, body = server.post("/churn", raw=b'{"customer_ids": [' + b"1," * 200_000 + b"1]}", key="crm")
    assert got == 413 and "over" in body["error"]


# ------------------------------------------------------------------------------------------ fuzzing


@pytest.mark.parametrize("mode", ["positive", "negative"])
def test_fuzzing_the_openapi_document_finds_no_server_error(server: Server, mode: str) -> None:
    """Schema-driven inputs against every endpoint of the service's own OpenAPI document: valid ones
    (positive) and ones that break the schema (negative). Never a 5xx; and every answer conforms to
    the document: its status codes, content types and response schemas."""
    import schemathesis
    from hypothesis import HealthCheck, given, settings
    from schemathesis import GenerationMode

    from serving.schemas import SCOPES

    schema = schemathesis.openapi.from_url(f"{server.base}/docs.json")
    operations = [r.ok() for r in schema.get_all_operations()]
    # a reload per example would take minutes; its inputs are covered by the edge's own tests
    operations = [op for op in operations if op.path != "/admin/reload"]
    if mode == "negative":  # the probes take no input, so there is nothing invalid to send them
        operations = [op for op in operations if op.path in SCOPES]
    assert {op.path for op in operations} >= {"/recommend", "/similar_items", "/popular", "/churn", "/ltv", "/customer"}
    for op in operations:
        key = KEYS[SCOPES[op.path]] if op.path in SCOPES else None

        @given(case=op.as_strategy(generation_mode=GenerationMode(mode)))
        @settings(max_examples=40, deadline=None, database=None, suppress_health_check=list(HealthCheck))
        def check(case) -> None:
            response = case.call(base_url=server.base, headers={"X-API-Key": key} if key else {})
            assert response.status_code < 500, f"{op.method.upper()} {op.path} {case.body!r}: {response.status_code} {response.text[:300]}"
            case.validate_response(response)

        check()

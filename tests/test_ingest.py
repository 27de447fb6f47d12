"""Ingestion: every row classified, nothing silently dropped, files committed whole or not at all."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pandas as pd
import pyarrow.parquet as pq
import pytest
from typer.testing import CliRunner

from patron.features import ingest as ing
from patron.features.ingest import OrderStore, SchemaError, UnreadableFileError, ingest, ledger, read_quarantine
from tests.conftest import SHIPPED, line, write_raw

DAY1 = [
    line("536365", "85123a ", 6, "2010-12-01 08:26:00", 2.55),  # sale; code trimmed + upper-cased
    line("536365", "71053", 6, "2010-12-01 08:26:00", 3.39),  # sale
    line("C536379", "71053", -1, "2010-12-01 09:41:00", 3.39),  # return
    line("536366", "22633", 6, "2010-12-01 08:28:00", 1.85, cust=""),  # guest
    line("536367", "POST", 1, "2010-12-01 08:34:00", 18.0, desc="POSTAGE"),  # non-product
    line("536368", "22960", 3, "2010-12-01 08:34:00", 0.0),  # invalid: zero price
    line("536369", "22960", 74215, "2010-12-01 08:35:00", 1.04),  # invalid: absurd quantity
    line("536370", "22960", 2, "not-a-date", 1.0),  # invalid: date
    line("536371", "22960", 2, "9999-12-01 08:35:00", 1.0),  # invalid: year 9999
    line("536372", "22960", 2, "2010-12-01 08:35:00", 1.0, desc="=cmd|' /C calc'!A0"),  # invalid: formula
]


def canonical(home_data: Path) -> pd.DataFrame:
    parts = OrderStore(home_data).committed_parts()
    if not parts:
        return pd.DataFrame(columns=ing.CANONICAL_SCHEMA.names)
    return pd.concat([pq.read_table(p).to_pandas() for p in parts], ignore_index=True)


def test_every_row_gets_exactly_one_class(tmp_path: Path, home: Path) -> None:
    f = write_raw(tmp_path / "2010-12-01.csv", DAY1)
    report = ingest([f], home / "data")
    assert report.classes == {"sale": 2, "return": 1, "guest": 1, "non_product": 1, "invalid": 5}
    assert report.rows_in == sum(report.classes.values()) == len(DAY1)
    assert report.rows_written == 5 and report.quarantined == 5
    df = canonical(home / "data").sort_values("source_line")
    assert df["item_id"].tolist() == ["85123A", "71053", "71053", "22633", "POST"]
    assert df["customer_id"].tolist()[:3] == [17850, 17850, 17850]
    assert pd.isna(df["customer_id"].iloc[3])
    assert df["line_class"].tolist() == ["sale", "sale", "return", "guest", "non_product"]
    assert df["amount"].iloc[0] == pytest.approx(6 * 2.55)
    assert str(df["invoice_ts"].iloc[0]) == "2010-12-01 08:26:00+00:00"


def test_rejected_rows_are_kept_with_their_reason(tmp_path: Path, home: Path) -> None:
    f = write_raw(tmp_path / "2010-12-01.csv", DAY1)
    ingest([f], home / "data")
    q = read_quarantine(home / "data").sort_values("source_line")
    assert q["source_line"].tolist() == [7, 8, 9, 10, 11]
    reasons = q["reason"].tolist()
    assert "UnitPrice '0.0' is not positive" in reasons[0]
    assert "implausible" in reasons[1] and "74215" in reasons[1]
    assert "not a timestamp" in reasons[2]
    assert "outside the plausible range" in reasons[3]
    assert "spreadsheet formula" in reasons[4]
    assert q["Description"].iloc[4].startswith("=cmd")  # the raw text itself is kept


def test_reingesting_is_a_noop_and_a_new_day_appends(tmp_path: Path, home: Path) -> None:
    f1 = write_raw(tmp_path / "d1.csv", DAY1)
    first = ingest([f1], home / "data")
    again = ingest([f1], home / "data")
    assert again.rows_written == 0 and again.rows_in == first.rows_in
    assert again.classes == first.classes
    assert [f.status for f in again.files] == ["already_ingested"]
    f2 = write_raw(tmp_path / "d2.csv", [line("536400", "71053", 2, "2010-12-02 10:00:00", 3.39)])
    third = ingest([f1, f2], home / "data")
    assert third.rows_written == 1
    assert len(canonical(home / "data")) == 6


def test_same_lines_in_another_file_are_not_stored_twice(tmp_path: Path, home: Path) -> None:
    plain = write_raw(tmp_path / "a" / "2010-12-01.csv", DAY1)
    zipped = write_raw(tmp_path / "b" / "export-again.csv.gz", DAY1)
    ingest([plain], home / "data")
    second = ingest([zipped], home / "data")
    assert second.rows_in == len(DAY1) and second.rows_written == 0
    assert len(canonical(home / "data")) == 5


@pytest.mark.parametrize("held", [None, 1])
def test_a_day_in_many_small_files_stores_each_line_once(tmp_path: Path, home: Path, monkeypatch, held) -> None:
    from patron.features.ingest import run

    if held is not None:  # the run forgets every day it is not asked about at once, and reads it again
        monkeypatch.setattr(run, "HELD_LINE_IDS", held)
    sales = [line(f"5400{k:02d}", "71053", k + 1, f"2010-12-0{1 + k // 12} {8 + k % 12:02d}:00:00", 1.0) for k in range(24)]
    # each file repeats the last line of the one before it; the days' files come in two runs
    files = [write_raw(tmp_path / f"export-{j:02d}.csv", sales[max(2 * j - 1, 0):2 * j + 2]) for j in range(12)]
    first = ingest(files[:7], home / "data", batch_rows=1)
    second = ingest(files[7:], home / "data", batch_rows=3)
    assert first.rows_written + second.rows_written == 24
    stored = canonical(home / "data")
    assert sorted(stored["invoice_no"]) == sorted(f"5400{k:02d}" for k in range(24))


def test_a_line_is_the_same_line_whatever_the_text_of_its_numbers(tmp_path: Path, home: Path) -> None:
    ingest([write_raw(tmp_path / "a.csv", [line("536365", "71053", 6, "2010-12-01 08:26:00", 3.39, cust="17850.0")])], home / "data")
    # another system's export of the same order: other number formats, minutes only, an hour later
    other = write_raw(tmp_path / "b.csv", [line("536365", "71053", "6.0", "2010-12-01 09:26", "3.390", cust="17850"),
                                          line("536365", "71053", 7, "2010-12-01 09:26", 3.39, cust="17850")])
    assert ingest([other], home / "data").rows_written == 1  # only the line with another quantity is new


def test_a_store_with_older_line_ids_is_migrated_on_the_next_ingest(tmp_path: Path, home: Path) -> None:
    import pyarrow as pa

    from patron.features.ingest import LINE_IDENTITY, OrderStore

    ingest([write_raw(tmp_path / "a.csv", DAY1)], home / "data")
    store = OrderStore(home / "data")
    expected = sorted(canonical(home / "data")["line_id"])
    for part in store.committed_parts():  # what a store written under the old identity holds
        t = pq.read_table(part)
        t = t.set_column(0, "line_id", pa.array(range(len(t)), pa.int64()))
        pq.write_table(t, part)
    with store._connect() as con:
        con.execute("delete from meta")
    again = ingest([write_raw(tmp_path / "b" / "export-again.csv", DAY1)], home / "data")
    assert again.rows_written == 0  # migrated first, so the re-export is recognised
    assert sorted(canonical(home / "data")["line_id"]) == expected
    with store._connect() as con:
        assert con.execute("select value from meta where key = 'line_identity'").fetchone() == (str(LINE_IDENTITY),)
    assert store.migrate_line_ids() == 0  # done once


def test_identical_lines_within_an_invoice_are_both_kept(tmp_path: Path, home: Path) -> None:
    row = line("536500", "71053", 2, "2010-12-03 10:00:00", 3.39)
    f = write_raw(tmp_path / "d.csv", [row, row])
    assert ingest([f], home / "data").rows_written == 2


@pytest.mark.parametrize(
    ("header", "named"),
    [
        (["InvoiceNo", "StockCode", "Description", "Quantity", "InvoiceDate", "UnitPrice", "Country"], "missing column(s) CustomerID"),
        (["InvoiceNo", "StockCode", "Description", "Quantity", "InvoiceDate", "UnitPrice", "CustomerID", "Country", "Tax"], "unexpected column(s) 'Tax'"),
        (["InvoiceNo", "StockCode", "StockCode", "Quantity", "InvoiceDate", "UnitPrice", "CustomerID", "Country"], "duplicated column(s) StockCode"),
    ],
)
def test_bad_schema_is_refused_naming_the_columns_and_nothing_is_written(
    tmp_path: Path, home: Path, header: list[str], named: str
) -> None:
    good = write_raw(tmp_path / "good.csv", DAY1)
    rows = [r[: len(header)] + [""] * (len(header) - len(r)) for r in DAY1]
    bad = write_raw(tmp_path / "bad.csv", rows, header=header)
    with pytest.raises(SchemaError, match=r"bad\.csv") as exc:
        ingest([good, bad], home / "data")  # the good file comes first and is still not written
    assert named in str(exc.value)
    assert canonical(home / "data").empty
    assert not OrderStore(home / "data").committed_parts("quarantine")


def test_truncated_csv_is_refused_whole(tmp_path: Path, home: Path) -> None:
    full = write_raw(tmp_path / "full.csv", DAY1[:3])
    data = full.read_bytes()
    cut = tmp_path / "2010-12-01.csv"
    cut.write_bytes(data[: data.rindex(b"2010-12-01 09:41")])  # dies inside the last line
    with pytest.raises(UnreadableFileError, match="truncated"):
        ingest([cut], home / "data")
    assert canonical(home / "data").empty


def test_truncated_gzip_is_refused_whole(tmp_path: Path, home: Path) -> None:
    src = SHIPPED / "2010-12-01.csv.gz"
    cut = tmp_path / "2010-12-01.csv.gz"
    cut.write_bytes(src.read_bytes()[: src.stat().st_size // 2])
    with pytest.raises(UnreadableFileError, match="truncated or corrupt"):
        ingest([cut], home / "data")
    assert canonical(home / "data").empty


def test_files_read_ahead_are_committed_in_order_up_to_one_that_cannot_be_read(tmp_path: Path, home: Path) -> None:
    days = [write_raw(tmp_path / f"2010-12-0{d}.csv", [line(f"5364{d}0", "71053", d, f"2010-12-0{d} 10:00:00", 3.39)]) for d in (1, 2, 3)]
    cut = tmp_path / "2010-12-04.csv"
    data = days[0].read_bytes()
    cut.write_bytes(data[: data.rindex(b"2010-12-01 10")])  # dies inside its only line
    later = write_raw(tmp_path / "2010-12-05.csv", [line("536450", "71053", 5, "2010-12-05 10:00:00", 3.39)])
    with pytest.raises(UnreadableFileError, match="2010-12-04.csv"):
        ingest([*days, cut, later], home / "data", batch_rows=1)
    assert sorted(canonical(home / "data")["quantity"]) == [1, 2, 3]  # the files before it, not the one after


def test_the_same_bytes_again_later_in_one_run_are_recognised_after_their_first_copy_is_committed(
    tmp_path: Path, home: Path
) -> None:
    first = write_raw(tmp_path / "a" / "2010-12-01.csv", DAY1)
    other = write_raw(tmp_path / "a" / "2010-12-02.csv", [line("536400", "71053", 2, "2010-12-02 10:00:00", 3.39)])
    copy = tmp_path / "b" / "resent.csv"
    copy.parent.mkdir()
    copy.write_bytes(first.read_bytes())
    # the first file fills a batch and is committed while the next two are being read ahead
    report = ingest([first, other, copy], home / "data", batch_rows=len(DAY1))
    assert [f.status for f in report.files] == ["ingested", "ingested", "already_ingested"]
    assert report.rows_written == 6 and len(canonical(home / "data")) == 6


def test_a_crash_while_committing_leaves_no_partial_day(tmp_path: Path, home: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    rows = DAY1[:2] + [line("536600", "71053", 1, "2010-12-02 09:00:00", 3.39)]  # two days in one file
    f = write_raw(tmp_path / "two-days.csv", rows)
    real_replace = os.replace
    calls = {"n": 0}

    def dying_replace(src, dst):  # the process "dies" after the first day's part is in place
        calls["n"] += 1
        if calls["n"] == 2:
            raise OSError("simulated crash")
        real_replace(src, dst)

    monkeypatch.setattr(ledger.os, "replace", dying_replace)
    with pytest.raises(OSError, match="simulated crash"):
        ingest([f], home / "data")
    monkeypatch.setattr(ledger.os, "replace", real_replace)
    assert canonical(home / "data").empty  # the moved part is not committed, readers ignore it
    leftovers = list((home / "data" / "order_lines").rglob("*.parquet"))
    assert leftovers, "the simulated crash should have left a moved part behind"
    again = ingest([f], home / "data")  # the next run cleans up and ingests the file whole
    assert again.rows_written == 3
    assert len(canonical(home / "data")) == 3
    assert len(list((home / "data" / "order_lines").rglob("*.parquet"))) == 2


def test_hostile_cells_and_broken_rows_are_quarantined(tmp_path: Path, home: Path) -> None:
    f = tmp_path / "mess.csv"
    text = (
        "\ufeffInvoiceNo,StockCode,Description,Quantity,InvoiceDate,UnitPrice,CustomerID,Country\n"
        "536365,85123A,CAF\u00c9 MUG,6,2010-12-01 08:26:00,2.55,17850.0,United Kingdom\n"
        "536365,85123A,ONLY FOUR,6\n"
        "536366,22633,NAN QTY,NaN,2010-12-01 08:28:00,1.85,17850.0,United Kingdom\n"
        "536367,22633,NEG PRICE,1,2010-12-01 08:28:00,-1.85,17850.0,United Kingdom\n"
        "InvoiceNo,StockCode,Description,Quantity,InvoiceDate,UnitPrice,CustomerID,Country\n"
        "536368,22633,BAD ID,1,2010-12-01 08:28:00,1.85,abc,United Kingdom\n"
    )
    f.write_bytes(text.encode("utf-8"))
    report = ingest([f], home / "data")
    assert report.rows_in == 6 and report.classes["sale"] == 1 and report.classes["invalid"] == 5
    reasons = sorted(read_quarantine(home / "data")["reason"])
    assert any("expected 8 fields" in r and "got 4" in r for r in reasons)
    assert any("Quantity 'NaN' is not a whole number" in r or "Quantity 'NaN' is not a number" in r for r in reasons)
    assert any("repeated header line" in r for r in reasons)
    assert any("CustomerID 'abc'" in r for r in reasons)
    assert canonical(home / "data")["description"].tolist() == ["CAF\u00c9 MUG"]


def test_windows_1252_export_is_decoded(tmp_path: Path, home: Path) -> None:
    f = tmp_path / "cp1252.csv"
    text = ",".join(["InvoiceNo", "StockCode", "Description", "Quantity", "InvoiceDate", "UnitPrice", "CustomerID", "Country"])
    text += "\n536365,85123A,CAF\u00c9 \u20ac MUG,6,2010-12-01 08:26:00,2.55,17850.0,United Kingdom\n"
    f.write_bytes(text.encode("cp1252"))
    report = ingest([f], home / "data")
    assert report.files[0].encoding == "cp1252"
    assert canonical(home / "data")["description"].tolist() == ["CAF\u00c9 \u20ac MUG"]


def test_cli_ingest_json_on_the_shipped_data(home: Path) -> None:
    from patron.pipelines.cli import app

    runner = CliRunner()
    env = {"PATRON_HOME": str(home)}
    first = runner.invoke(app, ["ingest", "--source", str(SHIPPED), "--json"], env=env)
    assert first.exit_code == 0, first.output
    out = json.loads(first.stdout.strip().splitlines()[-1])
    assert out["rows_in"] == 370_931 == sum(out["classes"].values())
    assert out["classes"]["invalid"] == out["quarantined"] > 0
    assert out["rows_written"] == out["rows_in"] - out["quarantined"]
    second = runner.invoke(app, ["ingest", "--source", str(SHIPPED), "--json"], env=env)
    again = json.loads(second.stdout.strip().splitlines()[-1])
    assert again["rows_written"] == 0 and again["rows_in"] == 370_931


def test_cli_reports_a_bad_file_without_a_traceback(tmp_path: Path, home: Path) -> None:
    from patron.pipelines.cli import app

    bad = write_raw(tmp_path / "bad.csv", [r[:7] for r in DAY1], header=["InvoiceNo", "StockCode", "Description", "Quantity", "InvoiceDate", "UnitPrice", "Country"])
    res = CliRunner().invoke(app, ["ingest", "--source", str(bad)], env={"PATRON_HOME": str(home)})
    assert res.exit_code == 2
    assert "missing column(s) CustomerID" in res.stderr
    assert "Traceback" not in res.output


def test_exports_without_product_columns_are_read_as_unknown_products(tmp_path: Path, home: Path) -> None:
    header = ["InvoiceNo", "Quantity", "InvoiceDate", "UnitPrice", "CustomerID"]
    f = write_raw(tmp_path / "bare.csv", [["1", "2", "2011-01-03 10:00:00", "9.5", "42"],
                                         ["2", "1", "2011-01-04 10:00:00", "3.0", "42"]], header=header)
    report = ingest([f], home / "data")
    assert report.classes["sale"] == 2 and report.quarantined == 0
    df = canonical(home / "data")
    assert df["item_id"].isna().all() and df["customer_id"].tolist() == [42, 42]
    assert df["amount"].tolist() == pytest.approx([19.0, 3.0])


def test_known_customers_include_those_whose_only_order_was_quarantined(tmp_path: Path, home: Path) -> None:
    import datetime as dt

    from patron.training.data import known_customers

    ingest([write_raw(tmp_path / "2010-12-01.csv", DAY1 + [line("536400", "22960", 74215, "2010-12-01 09:00:00", 1.04, cust="12346.0")])],
           home / "data")
    ids = known_customers(home / "data", dt.date(2010, 12, 2)).tolist()
    assert ids == [12346, 17850]
    assert known_customers(home / "data", dt.date(2010, 12, 1)).tolist() == []


HOSTILE_OK = "536365,85123A,WHITE HANGING HEART,6,2010-12-01 08:26:00,2.55,17850,United Kingdom\n"
HEADER_LINE = "InvoiceNo,StockCode,Description,Quantity,InvoiceDate,UnitPrice,CustomerID,Country\n"


@pytest.mark.parametrize(
    ("name", "content", "sales", "quarantined"),
    [
        # one 100 MB field: quarantined, the rows around it kept, memory bounded by the field cap
        ("long.csv", HEADER_LINE + HOSTILE_OK + "536366,X," + "A" * 100_000_000 + ",1,2010-12-01 08:26:00,1.0,17850,UK\n"
         + HOSTILE_OK.replace("536365", "536367"), 2, 1),
        ("mixed.csv", HEADER_LINE + HOSTILE_OK + "536368;85123A;X;1;2010-12-01 08:26:00;1.0;17850;UK\n"
         + "536369|85123A|X|1|2010-12-01 08:26:00|1.0|17850|UK\n", 1, 2),
        ("numbers.csv", HEADER_LINE + HOSTILE_OK + "".join(
            f"5364{i},85123A,X,{q},2010-12-01 08:26:00,{p},17850,UK\n"
            for i, (q, p) in enumerate([("NaN", "2.0"), ("2", "nan"), ("-5", "-2.0"), ("inf", "1"), ("1e400", "1"), ("2", "Infinity")])), 1, 6),
        ("utf16.csv", (HEADER_LINE + HOSTILE_OK).encode("utf-16"), 1, 0),
    ],
)
def test_hostile_files_are_quarantined_row_by_row(tmp_path: Path, home: Path, name, content, sales, quarantined) -> None:
    path = tmp_path / name
    path.write_bytes(content if isinstance(content, bytes) else content.encode())
    report = ingest([path], home / "data")
    assert report.classes["sale"] == sales and report.quarantined == quarantined
    assert report.rows_in == sum(report.classes.values())
    if quarantined:
        assert read_quarantine(home / "data")["reason"].str.len().min() > 0  # every row keeps its reason


def test_a_binary_file_is_refused_and_changes_nothing(tmp_path: Path, home: Path) -> None:
    good = write_raw(tmp_path / "good.csv", DAY1)
    ingest([good], home / "data")
    before = canonical(home / "data")
    junk = tmp_path / "junk.csv"
    junk.write_bytes(b"\x00\x01garbage\xff\xfe" * 1000)
    with pytest.raises(UnreadableFileError, match="NUL bytes"):
        ingest([junk], home / "data")
    pd.testing.assert_frame_equal(canonical(home / "data"), before)


def test_the_state_directory_is_private(tmp_path: Path, home: Path) -> None:
    """Customer data: what `patron` writes is readable by its user only."""
    f = write_raw(tmp_path / "2010-12-01.csv", DAY1)
    res = CliRunner().invoke(__import__("patron.pipelines.cli", fromlist=["app"]).app, ["ingest", "--source", str(f), "--home", str(home)])
    assert res.exit_code == 0, res.output
    created = [p for p in home.rglob("*")]
    assert created and all(p.stat().st_mode & 0o077 == 0 for p in created), [oct(p.stat().st_mode) for p in created][:5]


def test_a_regular_export_is_split_by_the_fast_parser_with_the_row_by_row_answer() -> None:
    from patron.features.ingest.read import split_regular, split_rows

    text = 'InvoiceNo,Description,Quantity\r\n536365,"HEART, WHITE",6\r\n536366,"SAY ""HI""",2\r\n\r\n'
    fast, slow = split_regular(text, ","), split_rows(text, ",")
    assert fast is not None, "a regular file must take the fast path"
    for s in (fast, slow):
        assert s.header == ["InvoiceNo", "Description", "Quantity"]
        assert [c.to_pylist() for c in s.columns] == [["536365", "536366"], ["HEART, WHITE", 'SAY "HI"'], ["6", "2"]]
        assert s.lines.tolist() == [2, 3] and s.broken == []


@pytest.mark.parametrize("text", [
    'a,b\n1,"two\nlines"\n3,4\n',  # a record over two lines: line numbers the fast parser cannot count
    "a,b\n1,2\n\n3,4\n",  # a blank line before the last row shifts the line numbers
    "a,b\n1,2\n3\n",  # a row of another width is kept aside with its reason
    'a,b\n1,"open\n\n',  # a quote left open at the end takes the blank lines after it
    "a\n1\n  \n2\n",  # one column: a line of blanks is no row
])
def test_texts_the_fast_parser_cannot_vouch_for_are_split_row_by_row(text: str) -> None:
    from patron.features.ingest.read import split_regular

    assert split_regular(text, ",") is None


def test_the_fast_parser_agrees_with_the_row_by_row_reader_on_any_text() -> None:
    """Whatever the quotes, delimiters and line ends: where the fast parser answers, its header,
    fields and line numbers are the row-by-row reader's, and that reader found nothing broken."""
    from hypothesis import HealthCheck, given, settings
    from hypothesis import strategies as st

    from patron.features.ingest.read import split_regular, split_rows

    piece = st.sampled_from(["a", "1", " ", "é", '"', '""', ",", ";", "\n", "\r", "\r\n", "x y"])
    field = st.one_of(st.text(st.sampled_from("a1 é,;\"\n"), max_size=4).map(lambda v: '"' + v.replace('"', '""') + '"'),
                      st.text(st.sampled_from("a1 é;\""), max_size=4))
    regular = st.lists(st.lists(field, min_size=3, max_size=3).map(",".join), max_size=6).map("\n".join)
    text = st.tuples(st.sampled_from(["A,B,C\n", "A,B,C\r\n", '"A",B,C\r']),
                     st.one_of(regular, st.lists(piece, max_size=40).map("".join)),
                     st.sampled_from(["", "\n", "\r\n", "\n\n"])).map("".join)
    answered = []

    @settings(max_examples=600, deadline=None, suppress_health_check=list(HealthCheck))
    @given(text)
    def check(t: str) -> None:
        fast = split_regular(t, ",")
        if fast is None:
            return
        answered.append(t)
        slow = split_rows(t, ",")
        assert slow.broken == [] and not slow.truncated
        assert fast.header == slow.header
        assert [c.to_pylist() for c in fast.columns] == [c.to_pylist() for c in slow.columns]
        assert fast.lines.tolist() == slow.lines.tolist()

    check()
    assert len(answered) > 50, "the fast parser should answer for most regular texts"

"""CSV bulk provisioning on both backends: what an operator importing a file sees.

Every test runs on SQLite and PostgreSQL (the `store` fixture).
"""

from __future__ import annotations

import time

import pytest

from ocs import passwords
from ocs.errors import Conflict, ValidationError
from ocs.model import Kind
from ocs.provisioning import MAX_ERRORS, ImportRejected, import_csv, validate_csv
from ocs.store.sql import fetchval

EUR = 1_000_000


async def count(store, table: str) -> int:
    def program():
        return (yield fetchval(f"SELECT count(*) FROM {table}"))
    return int(await store.driver.run(program, write=False))


async def snapshot(store) -> dict[str, int]:
    return {t: await count(store, t) for t in ("accounts", "subscribers", "buckets", "ledger")}


@pytest.fixture
async def plans(store):
    await store.create_plan(name="fiber-100", currency="EUR",
                            allowances=[{"kind": "octets", "units": 10 * 2**30,
                                         "validity_days": 30}])
    await store.create_plan(name="voice-chf", currency="CHF")


def errors_of(exc: ImportRejected) -> set[tuple[int, str | None]]:
    return {(e.line, e.column) for e in exc.errors}


async def test_import_creates_accounts_subscribers_balances_and_allowances(store, plans):
    existing = await store.create_account(name="acme", currency="EUR", billing="postpaid",
                                          credit_limit=50 * EUR)
    csv_text = (
        "Account,currency,billing,credit_limit,plan,username,msisdn,imsi,sip_user,password,"
        "framed_ip,max_sessions,opening_balance\n"
        "alice,eur,prepaid,,fiber-100,alice@isp,41791234567,228011234567890,,s3cret,"
        "10.0.0.7,2,12.50\n"
        "alice,,,,,,,,alice-sip,,,,\n"          # second subscriber of the new account
        "acme,EUR,postpaid,50.00,,bob,,,,,2001:db8::0001,,\n"  # attaches to an existing one
        "\n"                                    # blank lines are ignored
        "bigcorp,CHF,postpaid,1000,voice-chf,,,,9001,,,,\n"
    )
    report = await import_csv(store, csv_text, actor="tester")
    assert report.imported == 4 and report.accounts_created == 2

    alice = await store.find_subscriber(username="alice@isp")
    assert alice.msisdn == "41791234567" and alice.imsi == "228011234567890"
    assert alice.framed_ip == "10.0.0.7" and alice.max_sessions == 2
    assert passwords.verify_password("s3cret", alice.password_hash)
    account = await store.get_account(alice.account_id)
    assert account.name == "alice" and account.currency == "EUR"
    assert account.billing.value == "prepaid"
    bal = await store.balance(account.id)
    assert bal["balance"] == 12_500_000  # the opening balance, credited once
    assert [(b.kind, b.balance) for b in bal["buckets"] if not b.main] == \
        [(Kind.OCTETS, 10 * 2**30)]
    sums = await store.ledger_sums(account.id)
    assert sorted(sums.values()) == sorted(b.balance for b in bal["buckets"])

    sip = await store.find_subscriber(sip_user="alice-sip")
    assert sip.account_id == account.id and sip.plan_id is None

    bob = await store.find_subscriber(username="bob")
    assert bob.account_id == existing.id and bob.framed_ip == "2001:db8::1"
    assert (await store.balance(existing.id))["balance"] == 0

    corp = await store.find_account("bigcorp")
    assert corp.billing.value == "postpaid" and corp.credit_limit == 1000 * EUR
    assert (await store.find_subscriber(sip_user="9001")).account_id == corp.id


async def test_every_error_is_reported_with_its_line_and_nothing_is_imported(store, plans):
    await store.create_account(name="acme", currency="EUR", billing="prepaid")
    taken = await store.create_account(name="taken", currency="EUR", billing="prepaid")
    await store.create_subscriber(account_id=taken.id, username="already", msisdn="41790000000")
    before = await snapshot(store)
    csv_text = "\n".join([
        "account,currency,plan,username,msisdn,imsi,framed_ip,max_sessions,opening_balance",
        "ok1,EUR,fiber-100,u1,41790000001,,,,",                     # 2 fine
        "bad,EUR,,u2,4179x,12345,10.0.0.300,0,-1",                  # 3 five bad cells
        "new,,,u3,,,,,",                                            # 4 new account, no currency
        "acme,CHF,,u4,,,,,",                                        # 5 currency mismatch
        "ok1,EUR,nope,u5,,,,,",                                     # 6 unknown plan
        "ok1,EUR,,u1,,,,,",                                         # 7 duplicate username
        "ok1,EUR,,already,41790000000,,,,",                         # 8 both taken in store
        "two,EUR,,u8,,,,,5.00",                                     # 9
        "two,EUR,,u9,,,,,6.00",                                     # 10 conflicting opening
        "ok1,EUR,,,,,,,",                                           # 11 no identity
        ",EUR,,u11,,,,,",                                           # 12 no account
        "ok1,EUR,,u12",                                             # 13 wrong field count
        "acme,,,u13,,,,,3.00",                                      # 14 opening on existing
        "chf,EUR,voice-chf,u14,,,,,",                               # 15 plan currency
    ]) + "\n"
    with pytest.raises(ImportRejected) as info:
        await import_csv(store, csv_text)
    exc = info.value
    assert isinstance(exc, ValidationError)
    assert errors_of(exc) == {
        (3, "msisdn"), (3, "imsi"), (3, "framed_ip"), (3, "max_sessions"),
        (3, "opening_balance"), (4, "currency"), (5, "currency"), (6, "plan"),
        (7, "username"), (8, "username"), (8, "msisdn"), (10, "opening_balance"),
        (11, None), (12, "account"), (13, None), (14, "opening_balance"), (15, "plan"),
    }
    assert [e.line for e in exc.errors] == sorted(e.line for e in exc.errors)
    messages = {(e.line, e.column): e.message for e in exc.errors}
    assert "E.164" in messages[(3, "msisdn")]
    assert "also on line 2" in messages[(7, "username")]
    assert "already belongs" in messages[(8, "msisdn")]
    assert "exists with currency EUR" in messages[(5, "currency")]
    assert "plan 'nope' does not exist" == messages[(6, "plan")]
    assert "conflicts with 5.00 on line 9" in messages[(10, "opening_balance")]
    assert "expected 9 fields" in messages[(13, None)]
    assert exc.total == 17 and exc.more == 0
    assert "17 errors" in str(exc)
    assert await snapshot(store) == before


@pytest.mark.parametrize("header, column, words", [
    ("account,username,colour", "colour", "unknown column 'colour'"),
    ("username,msisdn", "account", "no 'account' column"),
    ("account,username,USERNAME", "username", "appears twice"),
    ("account,currency", None, "no identity column"),
])
async def test_header_problems_are_line_one(store, header, column, words):
    with pytest.raises(ImportRejected) as info:
        await import_csv(store, header + "\nx,y,z\n")
    (first, *_) = [e for e in info.value.errors if e.column == column]
    assert first.line == 1 and words in first.message


async def test_empty_file_header_only_and_broken_quoting(store):
    for text, words in (("", "empty"), ("account,username\n", "no rows"),
                        ('account,username\na,"unterminated\n', "malformed CSV")):
        with pytest.raises(ImportRejected) as info:
            await import_csv(store, text)
        assert words in info.value.errors[0].message, text
    assert await count(store, "accounts") == 0


async def test_error_list_is_capped_and_says_how_many_more(store):
    rows = [f"a{i},EUR,bad-msisdn-{i}" for i in range(MAX_ERRORS + 500)]
    with pytest.raises(ImportRejected) as info:
        await import_csv(store, "account,currency,msisdn\n" + "\n".join(rows))
    exc = info.value
    assert len(exc.errors) == MAX_ERRORS and exc.more == 500 and exc.total == MAX_ERRORS + 500
    assert exc.errors[0].line == 2 and exc.errors[-1].line == MAX_ERRORS + 1
    assert "500 more not shown" in str(exc)


async def test_one_bad_row_in_a_thousand_leaves_the_store_unchanged(store, plans):
    await store.create_account(name="keep", currency="EUR", billing="prepaid",
                               opening_balance=EUR)
    before = await snapshot(store)
    rows = [f"acct{i % 300},EUR,fiber-100,user{i},4179{i:07d},pw,1.00" for i in range(1000)]
    rows[637] = "acct1,EUR,fiber-100,user637,0041-79,pw,1.00"  # line 639
    text = "account,currency,plan,username,msisdn,password,opening_balance\n" + "\n".join(rows)
    with pytest.raises(ImportRejected) as info:
        await import_csv(store, text)
    assert [(e.line, e.column) for e in info.value.errors] == [(639, "msisdn")]
    assert await snapshot(store) == before
    # The same file, fixed, goes in whole.
    rows[637] = "acct1,EUR,fiber-100,user637,41790000637,pw,1.00"
    report = await import_csv(store, "account,currency,plan,username,msisdn,password,"
                                     "opening_balance\n" + "\n".join(rows))
    assert report.imported == 1000 and report.accounts_created == 300
    assert await count(store, "subscribers") == 1000


async def test_identity_taken_between_validation_and_commit_imports_nothing(store):
    text = "account,currency,username\nx,EUR,first\nx,EUR,second\n"
    rows, _ = await validate_csv(store, text)
    other = await store.create_account(name="other", currency="EUR", billing="prepaid")
    await store.create_subscriber(account_id=other.id, username="second")
    before = await snapshot(store)
    with pytest.raises(Conflict):
        await store.import_subscribers(rows)
    assert await snapshot(store) == before


@pytest.mark.slow
async def test_hundred_thousand_rows(store, plans, capsys):
    n = 100_000
    lines = ["account,currency,billing,plan,username,msisdn,imsi,password,opening_balance"]
    lines += [f"acct{i // 2},EUR,prepaid,fiber-100,user{i},4179{i:08d},22801{i:010d},pw{i},5.00"
              for i in range(n)]
    text = "\n".join(lines) + "\n"
    started = time.perf_counter()
    report = await import_csv(store, text, actor="bulk")
    elapsed = time.perf_counter() - started
    with capsys.disabled():
        print(f"\n[{store.dialect}] imported {n} rows in {elapsed:.1f}s")
    assert report.imported == n and report.accounts_created == n // 2
    assert await count(store, "subscribers") == n
    assert await count(store, "accounts") == n // 2
    last = await store.find_subscriber(imsi=f"22801{n - 1:010d}")
    assert (await store.balance(last.account_id))["balance"] == 5 * EUR


async def test_line_numbers_are_physical_lines_with_crlf_bom_and_multiline_cells(store):
    text = ("\ufeffaccount,currency,username,msisdn\r\n"
            'a,EUR,"two\r\nlines",41790000001\r\n'   # lines 2-3: a cell spanning two lines
            "a,EUR,ok,bad\r\n")                      # line 4
    with pytest.raises(ImportRejected) as info:
        await import_csv(store, text)
    assert [(e.line, e.column) for e in info.value.errors] == [(2, "username"), (4, "msisdn")]
    assert "control characters" in info.value.errors[0].message

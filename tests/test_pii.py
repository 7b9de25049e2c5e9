"""The offline personal-information detector: every validator with hand-made positives and near misses."""
import pandas as pd
import pytest

from factory.pii import (CATEGORIES, RESIDUAL_COLUMN, categories_for, cn_id_check_char, detect, luhn_ok, redact,
                         redact_items, residual_check, residual_scan, scan_items, valid_bank_card, valid_cn_id)

ID = "11010519491231002X"  # the GB 11643 standard's own example number


def cats(text: str) -> list[str]:
    return [f.category for f in detect(text)]


def test_cn_id_check_digit_and_birth_date():
    assert cn_id_check_char("11010519491231002") == "X" and valid_cn_id(ID) and valid_cn_id(ID.lower())
    assert not valid_cn_id("110105194912310021")  # wrong check digit
    assert not valid_cn_id("110105194902300028")  # 30 February
    assert not valid_cn_id("91010519491231002X")  # region digit 9 does not exist
    assert cats(f"身份证号 {ID}。") == ["cn_id"]
    assert cats("order 110105194912310021 shipped") == []


def test_bank_cards_need_luhn():
    assert luhn_ok("4111111111111111") and not luhn_ok("4111111111111112")
    assert valid_bank_card("4111 1111 1111 1111") and valid_bank_card("5500-0000-0000-0004")
    assert valid_bank_card("6212260200053555591")  # a 19-digit UnionPay number
    assert not valid_bank_card("1234567812345678") and not valid_bank_card("4111111111111112")
    assert cats("pay with 4111 1111 1111 1111 today") == ["bank_card"]
    assert cats("tracking 4111111111111112") == []


@pytest.mark.parametrize("text", ["13812345678", "+86 138 1234 5678", "+86-138-1234-5678", "8613812345678",
                                  "+44 20 7946 0958", "+1 (415) 555-2671"])
def test_phone_numbers(text):
    assert cats(f"call {text} now") == ["phone"]


@pytest.mark.parametrize("text", ["12812345678", "1381234567", "138123456789", "2024 12 31"])
def test_not_phone_numbers(text):
    assert "phone" not in cats(f"value {text} here")


def test_email_url_ip():
    assert cats("mail li.lei+news@mail.example.com.cn please") == ["email"]
    assert cats("see https://example.org/path?q=1, then") == ["url"]
    assert redact("see https://example.org/path?q=1, then")[0] == "see [URL], then"
    assert cats("www.example.cn/about") == ["url"]
    assert cats("host 10.0.0.255 up") == ["ip_address"]
    assert cats("v6 2001:db8:85a3::8a2e:370:7334 and ::1") == ["ip_address", "ip_address"]
    assert cats("version 1.2.3.4.5, 300.1.1.1, 12:30:45") == []


@pytest.mark.parametrize("text", ["Born on 1985-03-12", "DOB: 12/03/1985", "date of birth 12 March 1985",
                                  "born March 12, 1985", "出生日期：1990年5月6日", "生日 1990-05-06"])
def test_dates_of_birth_need_a_cue(text):
    assert cats(text) == ["date_of_birth"]


def test_plain_dates_and_impossible_dates_are_not_birth_dates():
    assert cats("the meeting on 2024-01-01") == []
    assert cats("born 1985-02-30") == []


def test_redact_replaces_and_findings_hold_no_raw_value():
    text = f"Zhang San, {ID}, 13812345678, zhang@example.com"
    red, found = redact(text)
    assert red == "Zhang San, [CN_ID], [PHONE], [EMAIL]"
    assert [f["category"] for f in found] == ["cn_id", "phone", "email"]
    assert all(text[f["start"]:f["end"]] not in str(f) for f in found)
    assert found[1]["masked"] == "138****5678"
    assert redact(red)[1] == []  # nothing left


def test_categories_follow_the_grade():
    assert categories_for("general", ["email"]) == ("email",)
    assert categories_for("general") == CATEGORIES
    assert categories_for("important", ["email"]) == CATEGORIES  # above general: everything is scanned
    with pytest.raises(ValueError, match="unknown category.*'passport'"):
        categories_for("core", ["passport"])
    assert cats("x@y.org 13812345678") == ["email", "phone"]
    assert [f.category for f in detect("x@y.org 13812345678", ["phone"])] == ["phone"]


def test_scan_redact_and_residual_over_items():
    df = pd.DataFrame({"item_id": ["a", "b", "c"],
                       "text": ["clean text", f"id {ID}", "mail x@example.org or 13912345678"]})
    found = scan_items(df)
    assert list(found["item_id"]) == ["b", "c", "c"] and list(found.columns) == ["item_id", "category", "start",
                                                                               "end", "masked"]
    assert scan_items(df.iloc[:1]).empty
    before = residual_check(df)
    assert not before["success"] and before["unexpected_items"] == ["b", "c"]
    red, redacted = redact_items(df)
    assert len(redacted) == 3 and residual_check(red)["success"]
    assert residual_scan(red)[RESIDUAL_COLUMN].tolist() == [0, 0, 0]


def test_residual_expectation_runs_in_great_expectations():
    import great_expectations as gx

    from factory.pii import residual_expectation

    df = residual_scan(pd.DataFrame({"item_id": ["a", "b"], "text": ["ok", "call 13812345678"]}))
    ctx = gx.get_context(mode="ephemeral")
    batch_def = ctx.data_sources.add_pandas("pii").add_dataframe_asset("items").add_batch_definition_whole_dataframe("all")
    batch = batch_def.get_batch(batch_parameters={"dataframe": df})
    res = batch.validate(residual_expectation())
    assert not res.success and res.result["unexpected_count"] == 1
    ok = batch_def.get_batch(batch_parameters={"dataframe": residual_scan(df.iloc[:1])}).validate(residual_expectation())
    assert ok.success

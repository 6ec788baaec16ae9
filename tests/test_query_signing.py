"""Order-query signing and reply reading, pure: the published vectors, keys, queryability."""

from __future__ import annotations

import base64
import hashlib
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.rsa import RSAPrivateKey, RSAPublicKey

from receiver.config import BaofooMerchant, GoPayConfig, GoPayMerchant
from receiver.core.notification import Outcome, Status
from receiver.errors import ConfigError
from receiver.gateways import OrderRef, QueryAnswer, QueryResult
from receiver.gateways.asking import HttpReply
from receiver.gateways.baofoo.query import BaofooQuerier, Terminal
from receiver.gateways.baofoo.query import read_reply as read_baofoo_reply
from receiver.gateways.baofoo.signing import query_request_signature
from receiver.gateways.gopay.query import GoPayQuerier, query_body
from receiver.gateways.gopay.query import read_reply as read_gopay_reply
from receiver.gateways.gopay.signing import (
    load_private_key,
    load_private_key_file,
    load_public_key,
    sign_charge,
)
from tests.support.gopay_signer import new_rsa_key, public_key_text
from tests.support.queries import (
    VECTOR_CHARGE,
    VECTOR_MCHID,
    VECTOR_ORDER,
    VECTOR_REPLY_BODY,
    VECTOR_REPLY_HEADERS,
    VECTOR_REQUEST_BODY,
    VECTOR_REQUEST_SIGNATURE,
    _order,
    _querier,
    _vector_key,
)


def _vector_reply(**header_overrides: str) -> HttpReply:
    return HttpReply(
        status=200,
        headers=VECTOR_REPLY_HEADERS | header_overrides,
        body=VECTOR_REPLY_BODY,
        content_type="application/json",
        charset=None,
    )


def _platform_keys() -> tuple[RSAPublicKey, ...]:
    return (load_public_key(_vector_key("gopay-test-platform-public.pem")),)


# --- GoPay request -------------------------------------------------------------------------------


def test_gopay_request_signature_equals_the_vector_byte_for_byte() -> None:
    request = _querier().build_request(_order())
    assert request.body == VECTOR_REQUEST_BODY
    assert request.url == "https://pay.example.com/pay/orderquery"
    assert request.headers == {
        "Content-Type": "application/json; charset=UTF-8",
        "Accept": "application/json",
        "x-ca-resturl": "https://pay.example.com/pay/orderquery",
        "x-ca-timestamp": "1586007620038",
        "x-ca-noncestr": "C8E1D385785625AFD64A484B58F91882",
        "x-ca-auth": "the-api-key",
        "x-ca-signature": VECTOR_REQUEST_SIGNATURE,
    }


def test_an_api_url_keeps_its_path_prefix_without_its_trailing_slashes() -> None:
    querier = GoPayQuerier(api_url="https://gw.example/v2/PAYBOX//", accounts={})
    assert querier.url == "https://gw.example/v2/PAYBOX/pay/orderquery"


def test_gopay_request_body_is_ascii_only_json() -> None:
    body = query_body(_order(out_trade_no="订单-1/2"), channel="gopay_bankupi")
    assert (
        body == b'{"mchid":"100001","out_trade_no":"\\u8ba2\\u5355-1/2","channel":"gopay_bankupi"}'
    )


def test_an_order_without_channel_uses_the_merchants_default_channel() -> None:
    querier = _querier(default_channel="gopay_banktransfer")
    assert querier.not_queryable(_order(channel=None)) is None
    assert querier.build_request(_order(channel=None)).body == VECTOR_REQUEST_BODY


def test_an_order_without_channel_or_default_is_not_queryable() -> None:
    assert _querier().not_queryable(_order(channel=None)) == (
        "the order has no channel and the merchant no default_channel"
    )


def test_a_merchant_without_api_key_or_unknown_is_not_queryable() -> None:
    assert _querier(api_key="").not_queryable(_order()) == (
        "GoPay merchant 100001 has no api_key (x-ca-auth)"
    )
    assert _querier().not_queryable(_order(merchant_id="999")) == (
        "GoPay merchant 999 is not configured"
    )


# --- GoPay reply ---------------------------------------------------------------------------------


def test_the_reply_vector_verifies_with_its_exponent_timestamp_and_no_freshness_check() -> None:
    answer = read_gopay_reply(_vector_reply(), order=_order(), platform_keys=_platform_keys())
    assert answer.result is QueryResult.PAID
    n = answer.notification
    assert n is not None
    assert (n.merchant_id, n.out_trade_no, n.target) == (VECTOR_MCHID, VECTOR_ORDER, Status.PAID)
    assert (n.order_amount_minor, n.paid_amount_minor, n.currency) == (166, 166, "CNY")
    assert n.provider_trade_no == "C2020040701181440794"
    assert n.nonce is None
    assert n.detail == "signature=base64"
    assert answer.inbound is not None and answer.inbound.body == VECTOR_REPLY_BODY
    assert answer.inbound.headers == {
        k: v for k, v in VECTOR_REPLY_HEADERS.items() if k.startswith("x-ca-")
    }


def test_a_reply_with_a_changed_timestamp_is_refused_as_bad_signature() -> None:
    reply = _vector_reply(**{"x-ca-timestamp": "1586009951490"})
    answer = read_gopay_reply(reply, order=_order(), platform_keys=_platform_keys())
    assert answer.result is QueryResult.REFUSED
    assert answer.rejected is not None and answer.rejected.outcome is Outcome.BAD_SIGNATURE
    assert (answer.rejected.merchant_id, answer.rejected.out_trade_no) == (
        VECTOR_MCHID,
        VECTOR_ORDER,
    )
    assert answer.inbound is not None and answer.notification is None


def test_a_genuine_reply_about_another_order_is_refused() -> None:
    answer = read_gopay_reply(
        _vector_reply(), order=_order(out_trade_no="other"), platform_keys=_platform_keys()
    )
    assert answer.result is QueryResult.REFUSED
    assert answer.rejected is not None
    assert answer.rejected.reason == "reply is about another out_trade_no"


@pytest.mark.parametrize(
    ("status", "body", "result", "reason"),
    [
        (400, b'{"error_msg":"Order does not exist.","error_code":200000}', "not_found", "200000"),
        (400, b'{"error_msg":"Error .[x]","error_code":999999}', "error", "999999"),
        (400, b'{"error_code":400003,"error_msg":"Auth Key"}', "misconfigured", "400003"),
        (403, b'{"error_code":400003,"error_msg":"Sign Verify"}', "misconfigured", "400003"),
        (400, b'{"error_code":400006,"error_msg":"channels"}', "misconfigured", "400006"),
        (400, b'{"error_code":400008,"error_msg":"account"}', "misconfigured", "400008"),
        (404, b'{"error_code":600000,"error_msg":"User"}', "misconfigured", "600000"),
        (403, b'{"error_code":100003,"error_msg":"Flow Control"}', "limited", "100003"),
        (400, b'{"error_code":400004,"error_msg":"other"}', "error", "400004"),
        (400, b'{"error_code":"400003","error_msg":"text code"}', "error", "400003"),
        (502, b"<html>bad gateway</html>", "error", "not a JSON object"),
        (200, b'{"result_code":"FAIL","result_msg":"x"}', "error", "not a successful"),
        (200, b"[1,2]", "error", "not a JSON object"),
    ],
)
def test_unsigned_and_unusable_replies_are_answers_without_a_notification(
    status: int, body: bytes, result: str, reason: str
) -> None:
    reply = HttpReply(status=status, headers={}, body=body, content_type="x", charset=None)
    answer = read_gopay_reply(reply, order=_order(), platform_keys=_platform_keys())
    assert answer.result == result
    assert reason in answer.reason
    assert answer.notification is None and answer.inbound is None


def _signed_reply(
    charge: bytes, *, status: int = 200, result_code: str = "OK", result_msg: str = "SUCCESS"
) -> HttpReply:
    """A reply whose charge is signed by `PLATFORM_KEY`, the signature over its raw bytes."""
    nonce, timestamp = "1" * 32, "1795591510237"
    signature = sign_charge(PLATFORM_KEY, nonce=nonce, timestamp=timestamp, charge=charge)
    headers = {"x-ca-noncestr": nonce, "x-ca-timestamp": timestamp, "x-ca-signature": signature}
    protocol = f'{{"result_code":"{result_code}","result_msg":"{result_msg}","charge":'.encode()
    body = protocol + charge + b"}"
    return HttpReply(
        status=status, headers=headers, body=body, content_type="application/json", charset=None
    )


PLATFORM_KEY = new_rsa_key()
CHARGE_NAMING = VECTOR_CHARGE[:-1] + b',"mchid":"%s"}'


def _read_signed(reply: HttpReply, order: OrderRef | None = None) -> QueryAnswer:
    keys = (PLATFORM_KEY.public_key(),)
    return read_gopay_reply(reply, order=order or _order(), platform_keys=keys)


def test_a_verified_reply_is_kept_as_a_gopay_inbound() -> None:
    answer = _read_signed(_signed_reply(CHARGE_NAMING % VECTOR_MCHID.encode()))
    assert answer.result is QueryResult.PAID
    assert answer.inbound is not None and answer.inbound.provider == "gopay"


def test_a_genuine_reply_naming_another_merchant_is_refused_as_unknown_merchant() -> None:
    answer = _read_signed(_signed_reply(CHARGE_NAMING % b"100002"))
    assert answer.result is QueryResult.REFUSED and answer.rejected is not None
    assert (answer.rejected.outcome, answer.rejected.reason) == (
        Outcome.UNKNOWN_MERCHANT,
        "reply names another merchant",
    )


def test_a_reply_that_verifies_with_no_platform_key_is_refused_with_that_reason() -> None:
    answer = read_gopay_reply(
        _signed_reply(VECTOR_CHARGE), order=_order(), platform_keys=_platform_keys()
    )
    assert answer.rejected is not None and answer.rejected.reason == (
        "reply signature does not verify with any of the merchant's platform keys"
    )


def test_a_signed_charge_is_applied_only_from_a_successful_query_result() -> None:
    answer = _read_signed(_signed_reply(VECTOR_CHARGE, status=500))
    assert answer == QueryAnswer(
        result=QueryResult.ERROR, reason="reply is not a successful query result (HTTP 500)"
    )


@pytest.mark.parametrize(
    ("result_code", "result_msg", "reason"),
    [
        ("FAIL", "SUCCESS", "result_code is not OK"),
        ("OK", "FAIL", "result_msg is not SUCCESS"),
        ("OK", "success", "result_msg is not SUCCESS"),
    ],
)
def test_a_signed_charge_without_ok_and_success_is_a_malformed_reply(
    result_code: str, result_msg: str, reason: str
) -> None:
    # The seed: only result_code OK with result_msg SUCCESS carries a charge; stored, not applied.
    reply = _signed_reply(VECTOR_CHARGE, result_code=result_code, result_msg=result_msg)
    answer = _read_signed(reply)
    assert answer.result is QueryResult.REFUSED and answer.rejected is not None
    assert (answer.rejected.outcome, answer.rejected.reason) == (Outcome.MALFORMED, reason)
    assert answer.notification is None


@pytest.mark.parametrize(
    ("body", "reason"),
    [
        (
            b'{"error_msg":"Order does not exist.","error_code":200000}',
            "gateway error_code 200000: Order does not exist.",
        ),
        (b'{"error_code":999999}', "gateway error_code 999999"),
        (b'{"error_code":999999,"error_msg":["not text"]}', "gateway error_code 999999"),
        (
            b'{"error_code":999999,"error_msg":"' + b"X" * 200 + b'"}',
            "gateway error_code 999999: " + "X" * 120,
        ),
    ],
    ids=["with-message", "without-message", "message-not-text", "long-message-cut"],
)
def test_an_error_code_reply_gives_the_code_and_at_most_120_characters_of_its_message(
    body: bytes, reason: str
) -> None:
    reply = HttpReply(status=400, headers={}, body=body, content_type="x", charset=None)
    answer = read_gopay_reply(reply, order=_order(), platform_keys=_platform_keys())
    assert answer.reason == reason


# --- keys -----------------------------------------------------------------------------------------


def _pem(key: RSAPrivateKey, fmt: serialization.PrivateFormat) -> str:
    raw = key.private_bytes(serialization.Encoding.PEM, fmt, serialization.NoEncryption())
    return raw.decode("ascii")


@pytest.mark.parametrize("form", ["pkcs8_pem", "pkcs1_pem", "base64_pkcs8", "base64_pkcs1"])
def test_a_private_key_loads_from_pem_or_bare_base64(form: str) -> None:
    key = new_rsa_key()
    fmt = (
        serialization.PrivateFormat.PKCS8
        if "pkcs8" in form
        else serialization.PrivateFormat.TraditionalOpenSSL
    )
    if form.endswith("_pem"):
        text = _pem(key, fmt)
    else:
        der = key.private_bytes(serialization.Encoding.DER, fmt, serialization.NoEncryption())
        text = base64.b64encode(der).decode("ascii") + "\n"
    loaded = load_private_key(text)
    assert loaded.private_numbers() == key.private_numbers()


def test_a_file_that_is_not_a_private_key_is_a_config_error_naming_the_path_not_the_key(
    tmp_path: Path,
) -> None:
    public = public_key_text(new_rsa_key(), "spki_pem")
    path = tmp_path / "merchant.pem"
    path.write_text(public)
    with pytest.raises(ConfigError) as caught:
        load_private_key_file(path, source="r.toml", key="gopay.merchants[0].private_key")
    message = str(caught.value)
    assert "gopay.merchants[0].private_key" in message and str(path) in message
    assert public.splitlines()[1] not in message


def test_from_config_reads_the_merchants_private_key(tmp_path: Path, gopay_key_file: Path) -> None:
    key = new_rsa_key()
    path = tmp_path / "merchant.pem"
    path.write_text(_pem(key, serialization.PrivateFormat.TraditionalOpenSSL))
    merchant = GoPayMerchant(
        mchid="7",
        platform_public_keys=(gopay_key_file,),
        private_key=path,
        api_key="secret-api-key",
    )
    cfg = GoPayConfig(merchants=(merchant,), api_url="http://gw.example")
    querier = GoPayQuerier.from_config(cfg, source="tests")
    assert querier.not_queryable(_order(merchant_id="7")) is None
    assert "secret-api-key" not in repr(querier) + repr(querier.accounts)


def test_from_config_builds_each_merchants_account_from_its_files(
    tmp_path: Path, gopay_key: RSAPrivateKey, gopay_key_file: Path
) -> None:
    key = new_rsa_key()
    path = tmp_path / "merchant.pem"
    path.write_text(_pem(key, serialization.PrivateFormat.PKCS8))
    unsigned = GoPayMerchant(mchid="7", platform_public_keys=(gopay_key_file,), api_key="k7")
    signing = GoPayMerchant(
        mchid="8",
        platform_public_keys=(gopay_key_file,),
        private_key=path,
        api_key="k8",
        default_channel="gopay_bankupi",
    )
    cfg = GoPayConfig(merchants=(unsigned, signing), api_url="http://gw.example")
    querier = GoPayQuerier.from_config(cfg, source="tests")
    assert querier.not_queryable(_order(merchant_id="7")) == (
        "GoPay merchant 7 has no private_key to sign queries"
    )
    account = querier.accounts["8"]
    assert (account.mchid, account.api_key, account.default_channel) == ("8", "k8", "gopay_bankupi")
    assert account.private_key is not None
    assert account.private_key.private_numbers() == key.private_numbers()
    assert [k.public_numbers() for k in account.platform_keys] == [
        gopay_key.public_key().public_numbers()
    ]


@pytest.mark.parametrize("which", ["private_key", "platform_public_keys[0]"])
def test_a_bad_key_file_is_a_config_error_naming_the_file_the_merchant_and_the_key(
    tmp_path: Path, gopay_key_file: Path, which: str
) -> None:
    bad = tmp_path / "bad.pem"
    bad.write_text("not a key")
    good_private = tmp_path / "merchant.pem"
    good_private.write_text(_pem(new_rsa_key(), serialization.PrivateFormat.PKCS8))
    second = GoPayMerchant(
        mchid="8",
        platform_public_keys=(bad if which != "private_key" else gopay_key_file,),
        private_key=bad if which == "private_key" else good_private,
    )
    first = GoPayMerchant(mchid="7", platform_public_keys=(gopay_key_file,))
    cfg = GoPayConfig(merchants=(first, second), api_url="http://gw.example")
    with pytest.raises(ConfigError) as caught:
        GoPayQuerier.from_config(cfg, source="r.toml")
    assert str(caught.value).startswith(f"r.toml: gopay.merchants[1].{which}: {bad}")


# --- Baofoo --------------------------------------------------------------------------------------

SEED_KEY = "abcdefg"
SEED_REPLY = (
    b"100000178|10000001|2014010101010101|N|0|20141029184503|b4d6a91f6af4ce07c87420762d73d0e0"
)


def _baofoo_order(trans_id: str = "2014010101010101") -> OrderRef:
    return _order(provider="baofoo", merchant_id="100000178", out_trade_no=trans_id, channel=None)


def _baofoo_reply(body: bytes, status: int = 200) -> HttpReply:
    return HttpReply(status=status, headers={}, body=body, content_type="text/plain", charset=None)


def test_the_seeds_query_reply_vector_verifies_as_not_found() -> None:
    terminal = Terminal("10000001", SEED_KEY)
    answer = read_baofoo_reply(_baofoo_reply(SEED_REPLY), order=_baofoo_order(), terminal=terminal)
    assert answer.result is QueryResult.NOT_FOUND
    assert answer.notification is None


def test_the_seed_reply_with_another_key_is_refused() -> None:
    terminal = Terminal("10000001", "another")
    answer = read_baofoo_reply(_baofoo_reply(SEED_REPLY), order=_baofoo_order(), terminal=terminal)
    assert answer.result is QueryResult.REFUSED
    assert answer.rejected is not None and answer.rejected.outcome is Outcome.BAD_SIGNATURE
    assert answer.inbound is not None and answer.inbound.body == SEED_REPLY


def test_baofoo_request_is_signed_over_member_terminal_trans_and_key() -> None:
    querier = BaofooQuerier(
        query_url="http://x", merchants=[BaofooMerchant("100000178", "10000001", SEED_KEY)]
    )
    body = querier.build_request(_baofoo_order())
    expected = query_request_signature(
        member_id="100000178", terminal_id="10000001", trans_id="2014010101010101", md5_key=SEED_KEY
    )
    assert body == (
        b"MemberID=100000178&TerminalID=10000001&TransID=2014010101010101&MD5Sign="
        + expected.encode()
    )
    assert expected == hashlib.md5(b"100000178|10000001|2014010101010101|abcdefg").hexdigest()


def test_a_member_with_several_terminals_is_not_queryable() -> None:
    querier = BaofooQuerier(
        query_url="http://x",
        merchants=[BaofooMerchant("1", "a", "k1"), BaofooMerchant("1", "b", "k2")],
    )
    order = _order(provider="baofoo", merchant_id="1", out_trade_no="t", channel=None)
    assert "several terminals" in str(querier.not_queryable(order))


def test_a_reply_signed_without_the_base64_step_verifies_as_the_plain_variant() -> None:
    platform = new_rsa_key()
    nonce, timestamp = "0" * 32, "1795591510237.1"
    signature = sign_charge(
        platform, nonce=nonce, timestamp=timestamp, charge=VECTOR_CHARGE, base64_step=False
    )
    headers = {"x-ca-noncestr": nonce, "x-ca-timestamp": timestamp, "x-ca-signature": signature}
    reply = HttpReply(
        status=200, headers=headers, body=VECTOR_REPLY_BODY, content_type="text/html", charset=None
    )
    answer = read_gopay_reply(reply, order=_order(), platform_keys=(platform.public_key(),))
    assert answer.result is QueryResult.PAID
    assert answer.notification is not None and answer.notification.detail == "signature=plain"


def test_the_baofoo_queriers_repr_holds_no_md5_key() -> None:
    querier = BaofooQuerier(
        query_url="http://x", merchants=[BaofooMerchant("1", "a", "secret-md5-key")]
    )
    assert "secret-md5-key" not in repr(querier)
    assert "secret-md5-key" not in repr(querier._terminals)


def test_query_results_are_spec_labels() -> None:
    assert [r.value for r in QueryResult] == [
        "paid",
        "failed",
        "closed",
        "pending",
        "not_found",
        "held",
        "refused",
        "misconfigured",
        "limited",
        "error",
    ]

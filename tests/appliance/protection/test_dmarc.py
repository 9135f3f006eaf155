"""DMARC (appliance.protection.dmarc): records, organizational domains, alignment, policy."""

from __future__ import annotations

import threading
import time

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from appliance.protection import dmarc
from appliance.protection.dmarc import AuthenticatedId, Discovered, DmarcPolicy
from appliance.protection.resolver import DnsTemporaryError

# --- the record ---------------------------------------------------------------------------


def test_a_record_with_defaults() -> None:
    assert dmarc.parse_record("v=DMARC1; p=reject") == DmarcPolicy("reject", "reject")
    assert dmarc.parse_record("v=DMARC1;p=Quarantine;sp=none;adkim=s;aspf=S;pct=20;") == (
        DmarcPolicy("quarantine", "none", adkim="s", aspf="s", pct=20)
    )
    # Unknown tags are ignored (§6.3); bad values of the others fall back to defaults.
    assert dmarc.parse_record("v=DMARC1; p=none; rua=mailto:x@a.go.th; np=reject; fo=1") == (
        DmarcPolicy("none", "none")
    )
    assert dmarc.parse_record("v=DMARC1; p=reject; sp=bogus; adkim=x; pct=250") == (
        DmarcPolicy("reject", "reject", pct=100)
    )
    assert dmarc.parse_record("v=DMARC1; p=reject; pct=-5").pct == 100


@pytest.mark.parametrize(
    "text",
    [
        "p=reject; v=DMARC1",  # v= must come first (§6.4)
        "v=dmarc1; p=reject",  # and its value is case-sensitive
        "v=DMARC1",  # no policy and no report address
        "v=DMARC1; p=maybe",
        "v=DMARC1; p=reject; garbage",
        "v=spf1 -all",
    ],
)
def test_unusable_records(text: str) -> None:
    with pytest.raises(dmarc.DmarcRecordError):
        dmarc.parse_record(text)


def test_an_invalid_policy_with_a_report_address_is_p_none() -> None:
    # RFC 7489 §6.6.3 step 6.
    assert dmarc.parse_record("v=DMARC1; p=bogus; rua=mailto:d@a.go.th").p == "none"


TAG_NAMES = st.sampled_from(["v", "p", "sp", "adkim", "aspf", "pct", "rua", "fo", "x", "P", ""])
TAG_VALUES = st.one_of(
    st.sampled_from(["DMARC1", "reject", "quarantine", "none", "r", "s", "100", "0", "mailto:a"]),
    st.text(max_size=12),
)


@settings(max_examples=300, deadline=None)
@given(
    st.lists(st.tuples(TAG_NAMES, st.sampled_from(["=", " = ", "", "=="]), TAG_VALUES), max_size=8),
    st.sampled_from([";", "; ", " ;", ";;"]),
)
def test_any_record_parses_to_a_valid_policy_or_a_record_error(
    tags: list[tuple[str, str, str]], separator: str
) -> None:
    text = separator.join(f"{name}{equals}{value}" for name, equals, value in tags)
    try:
        policy = dmarc.parse_record(text)
    except dmarc.DmarcRecordError:
        return
    assert text.startswith("v=DMARC1") or text.lstrip().lower().startswith("v")
    assert policy.p in dmarc.POLICIES
    assert policy.sp in dmarc.POLICIES
    assert policy.adkim in ("r", "s")
    assert policy.aspf in ("r", "s")
    assert 0 <= policy.pct <= 100


@settings(max_examples=200, deadline=None)
@given(st.text(max_size=80))
def test_any_text_as_a_domain_is_a_name_or_none(text: str) -> None:
    domain = dmarc.ascii_domain(text)
    if domain is not None:
        assert domain == domain.lower()
        assert domain.isascii()
        assert all(0 < len(label) <= 63 for label in domain.split("."))
        assert dmarc.organizational_domain(domain)


# --- organizational domains and alignment -------------------------------------------------


@pytest.mark.parametrize(
    ("domain", "organization"),
    [
        ("a.go.th", "a.go.th"),
        ("mail.a.go.th", "a.go.th"),
        ("x.y.moe.go.th", "moe.go.th"),
        ("go.th", "go.th"),  # a public suffix is its own
        ("news.example.co.uk", "example.co.uk"),
        # Thai names: A-labels, as ascii_domain gives them.
        (dmarc.ascii_domain("สำนักงาน.รัฐบาล.ไทย"), dmarc.ascii_domain("สำนักงาน.รัฐบาล.ไทย")),
    ],
)
def test_organizational_domains_from_the_bundled_list(domain: str, organization: str) -> None:
    assert dmarc.organizational_domain(domain) == organization


def test_alignment_modes() -> None:
    assert dmarc.aligned("a.go.th", "a.go.th", "s")
    assert not dmarc.aligned("a.go.th", "mail.a.go.th", "s")
    assert dmarc.aligned("a.go.th", "mail.a.go.th", "r")
    assert dmarc.aligned("x.a.go.th", "y.a.go.th", "r")
    # Two agencies under the same public suffix are never aligned.
    assert not dmarc.aligned("a.go.th", "b.go.th", "r")
    assert not dmarc.aligned("a.go.th", "go.th", "r")


# --- discovery ----------------------------------------------------------------------------


def lookup(records: dict[str, list[bytes]], failing: tuple[str, ...] = ()) -> dmarc.TxtLookup:
    def txt(name: str) -> list[bytes]:
        if name in failing:
            raise DnsTemporaryError(name)
        return records.get(name, [])

    return txt


def test_discovery_falls_back_to_the_organizational_domain() -> None:
    records = {"_dmarc.a.go.th": [b"v=DMARC1; p=reject; sp=quarantine"]}
    own = dmarc.discover("a.go.th", lookup(records))
    assert own == Discovered("found", DmarcPolicy("reject", "quarantine"))
    sub = dmarc.discover("mail.a.go.th", lookup(records))
    assert sub == Discovered("found", DmarcPolicy("reject", "quarantine"), from_organization=True)
    assert dmarc.discover("b.go.th", lookup(records)).status == "none"


def test_discovery_discards_other_txt_and_ignores_two_dmarc_records() -> None:
    records = {
        "_dmarc.a.go.th": [b"google-site-verification=x", b"v=DMARC1; p=reject"],
        "_dmarc.b.go.th": [b"v=DMARC1; p=reject", b"v=DMARC1; p=none"],
        "_dmarc.c.go.th": [b"v=DMARC1; p=sometimes"],
    }
    assert dmarc.discover("a.go.th", lookup(records)).status == "found"
    assert dmarc.discover("b.go.th", lookup(records)).status == "none"
    assert dmarc.discover("c.go.th", lookup(records)).status == "permerror"


def test_a_failed_lookup_is_a_temporary_error_never_no_policy() -> None:
    assert dmarc.discover("a.go.th", lookup({}, ("_dmarc.a.go.th",))).status == "temperror"
    assert dmarc.discover("m.a.go.th", lookup({}, ("_dmarc.a.go.th",))).status == "temperror"


# --- evaluation ---------------------------------------------------------------------------

REJECT = Discovered("found", DmarcPolicy("reject", "reject"))


def ids(*pairs: tuple[str, str, str]) -> list[AuthenticatedId]:
    return [AuthenticatedId(*pair) for pair in pairs]


def test_an_aligned_spf_or_dkim_pass_passes() -> None:
    spf_pass = ids(("spf", "pass", "bounce.b.go.th"), ("dkim", "none", ""))
    assert dmarc.evaluate("b.go.th", REJECT, spf_pass).result == "pass"
    dkim_pass = ids(("spf", "fail", "b.go.th"), ("dkim", "pass", "b.go.th"))
    verdict = dmarc.evaluate("b.go.th", REJECT, dkim_pass)
    assert (verdict.result, verdict.disposition, verdict.aligned) == ("pass", "none", True)


def test_unaligned_passes_fail_with_the_policy() -> None:
    other = ids(
        ("spf", "pass", "c.go.th"), ("dkim", "pass", "c.go.th"), ("dkim", "fail", "b.go.th")
    )
    verdict = dmarc.evaluate("b.go.th", REJECT, other)
    assert (verdict.result, verdict.policy, verdict.disposition) == ("fail", "reject", "reject")
    strict = Discovered("found", DmarcPolicy("reject", "reject", adkim="s", aspf="s"))
    sub = ids(("spf", "pass", "mail.b.go.th"), ("dkim", "pass", "mail.b.go.th"))
    assert dmarc.evaluate("b.go.th", strict, sub).result == "fail"
    assert dmarc.evaluate("b.go.th", REJECT, sub).result == "pass"


def test_a_subdomain_gets_sp_and_pct_samples_to_the_next_milder_policy() -> None:
    found = Discovered("found", DmarcPolicy("reject", "quarantine", pct=50), from_organization=True)
    failing = ids(("spf", "fail", "x.go.th"))
    inside = dmarc.evaluate("m.b.go.th", found, failing, sample=lambda: 0.49)
    outside = dmarc.evaluate("m.b.go.th", found, failing, sample=lambda: 0.5)
    assert (inside.policy, inside.disposition) == ("quarantine", "quarantine")
    assert (outside.policy, outside.disposition) == ("quarantine", "none")
    none_policy = Discovered("found", DmarcPolicy("none", "none", pct=0))
    assert dmarc.evaluate("b.go.th", none_policy, failing).disposition == "none"


def test_no_record_is_none_but_alignment_is_still_told() -> None:
    verdict = dmarc.evaluate("a.go.th", Discovered("none"), ids(("dkim", "pass", "a.go.th")))
    assert (verdict.result, verdict.aligned, verdict.disposition) == ("none", True, "none")
    unproven = dmarc.evaluate("a.go.th", Discovered("none"), ids(("spf", "softfail", "a.go.th")))
    assert (unproven.result, unproven.aligned) == ("none", False)
    late = Discovered("temperror", reason="timeout")
    assert dmarc.evaluate("a.go.th", late, []).result == "temperror"
    assert dmarc.evaluate("a.go.th", late, ids(("spf", "pass", "a.go.th"))).result == "pass"


def test_the_public_suffix_list_is_loaded_once_by_concurrent_threads(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The MX's first burst asks from many worker threads at once (issue 21)."""
    built: list[int] = []
    started = threading.Barrier(8)

    class SlowList:
        def __init__(self) -> None:
            built.append(1)
            time.sleep(0.05)  # long enough that the other threads arrive meanwhile

        def privatesuffix(self, domain: str) -> str:
            return domain

    monkeypatch.setattr(dmarc, "PublicSuffixList", SlowList)
    dmarc._load_suffixes.cache_clear()
    try:

        def ask() -> None:
            started.wait(timeout=10)
            dmarc.organizational_domain("mail.example.go.th")

        threads = [threading.Thread(target=ask) for _ in range(8)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(timeout=10)
        assert built == [1]
    finally:
        dmarc._load_suffixes.cache_clear()

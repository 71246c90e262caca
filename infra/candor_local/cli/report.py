"""The accountability report: what the audit log says happened in a period, with nothing biometric in it.

`build_report` turns audit entries into counts (who searched, for what purpose, how often a search matched,
what was refused and why, what was enrolled, deleted and erased, per collection) and states whether the
hash chains verified; `render_html` draws that as one self-contained page (inline CSS bars, no scripts,
fonts or images), so it can be mailed or archived as it is. Only named fields are read from an entry:
probe hashes, face ids, subjects and consent references never reach the report, and case references only
as a count of distinct ones.
"""

from __future__ import annotations

import html
import json
import statistics
from collections import Counter
from collections.abc import Iterable, Mapping
from datetime import UTC, date, datetime, time, timedelta
from typing import Any

from candor.accountability.audit import AuditEvent, AuditRecord, ChainVerification

UNKNOWN = "(unknown)"
NO_PURPOSE = "(none stated)"


def parse_when(text: str, end_of_day: bool = False) -> datetime:
    """An ISO date or time, UTC unless it says otherwise. A bare date is its midnight, or with `end_of_day`
    the next midnight, so `--until 2026-11-30` takes in the whole of the 30th."""
    try:
        day = date.fromisoformat(text)
    except ValueError:
        try:
            moment = datetime.fromisoformat(text)
        except ValueError as error:
            raise ValueError(f"{text!r} is not an ISO date or time (e.g. 2026-11-30 or 2026-11-30T12:00Z)") from error
        return moment.replace(tzinfo=UTC) if moment.tzinfo is None else moment.astimezone(UTC)
    start = datetime.combine(day, time(), tzinfo=UTC)
    return start + timedelta(days=1) if end_of_day else start


def entry_time(fields: Mapping[str, Any]) -> datetime | None:
    """When an entry was appended (its `time` field); None when it has none that parses."""
    try:
        return parse_when(str(fields["time"]))
    except (KeyError, ValueError):
        return None


def readable_fields(record: AuditRecord) -> dict[str, Any] | None:
    """The entry's fields; None when its body is not a JSON object (verification names such an entry)."""
    try:
        fields = record.fields
    except json.JSONDecodeError:
        return None
    return fields if isinstance(fields, dict) else None


def build_report(
    records: Iterable[AuditRecord], since: datetime, until: datetime, verification: list[ChainVerification]
) -> dict[str, Any]:
    """Counts of the entries appended in [since, until), and the verification of the chains they came from."""
    events: Counter[str] = Counter()
    searches_by_purpose: Counter[str] = Counter()
    matched_by_purpose: Counter[str] = Counter()
    searches_by_caller: Counter[str] = Counter()
    refusals_by_reason: Counter[str] = Counter()
    refusals_by_caller: Counter[str] = Counter()
    risk_buckets: Counter[str] = Counter()
    risks: list[float] = []
    collections: dict[str, Counter[str]] = {}
    case_references: set[str] = set()
    enrolled: dict[str, set[str]] = {}  # chain -> face ids enrolled and not deleted since, as the log says
    repeated = 0
    in_period = 0
    unreadable = 0
    policy_changes: list[dict[str, Any]] = []
    for record in records:
        fields = readable_fields(record)
        when = entry_time(fields) if fields is not None else None
        if fields is None or when is None:
            unreadable += 1
            continue
        if not since <= when < until:
            continue
        in_period += 1
        event = str(fields.get("event") or UNKNOWN)
        caller = str(fields.get("caller") or UNKNOWN)
        purpose = str(fields.get("purpose") or NO_PURPOSE)
        face_ids = fields.get("face_ids")
        face_ids = {str(face_id) for face_id in face_ids} if isinstance(face_ids, list) else set()
        chain_enrolled = enrolled.setdefault(record.chain, set())
        if event == AuditEvent.ENROLMENT and face_ids and face_ids <= chain_enrolled:
            # The same faces enrolled again with nothing deleted between: a redelivered upload that the
            # pipeline processed twice. The log keeps both entries; the report counts the enrolment once.
            repeated += 1
            continue
        row = collections.setdefault(record.chain, Counter())
        events[event] += 1
        row[event] += 1
        if fields.get("case_reference"):
            case_references.add(str(fields["case_reference"]))
        if event == AuditEvent.SEARCH:
            searches_by_purpose[purpose] += 1
            searches_by_caller[caller] += 1
            if _count(fields.get("faces_matched")) > 0:
                matched_by_purpose[purpose] += 1
                row["matched"] += 1
            risk = fields.get("false_match_risk")
            if isinstance(risk, int | float) and not isinstance(risk, bool):
                risks.append(float(risk))
            risk_buckets[risk_bucket(risk)] += 1
        elif event == AuditEvent.REFUSAL:
            refusals_by_reason[str(fields.get("reason") or UNKNOWN)] += 1
            refusals_by_caller[caller] += 1
        elif event == AuditEvent.ENROLMENT:
            # How many faces, never which: the ids themselves stay in the log.
            row["faces_enrolled"] += len(face_ids - chain_enrolled)
            chain_enrolled |= face_ids
        elif event == AuditEvent.COLLECTION and isinstance(fields.get("policy"), dict):
            policy_changes.append(_policy_change(record.chain, fields, until))
        elif event == AuditEvent.DELETION:
            chain_enrolled -= face_ids
        elif event == AuditEvent.ERASURE:
            chain_enrolled.clear()  # an erasure names a person, not faces: whatever comes after is new

    searches = events[AuditEvent.SEARCH]
    matched = sum(matched_by_purpose.values())
    return {
        "period": {"since": _iso(since), "until": _iso(until)},
        "log": _log_status(verification),
        "totals": {
            "entries": in_period,
            "searches": searches,
            "matched_searches": matched,
            "refusals": events[AuditEvent.REFUSAL],
            "enrolments": events[AuditEvent.ENROLMENT],
            "faces_enrolled": sum(row["faces_enrolled"] for row in collections.values()),
            "deletions": events[AuditEvent.DELETION],
            "erasures": events[AuditEvent.ERASURE],
            "collection_changes": events[AuditEvent.COLLECTION],
            "distinct_case_references": len(case_references),
            "repeated_enrolments": repeated,
            "unreadable_entries": unreadable,
        },
        "match_rate": {
            "overall": _rate(matched, searches),
            "by_purpose": {
                purpose: _rate(matched_by_purpose[purpose], n) for purpose, n in _ranked(searches_by_purpose)
            },
        },
        "false_match_risk": {
            # Per searched face: the chance that it matched a stranger among the collection's faces.
            "searches": {bucket: risk_buckets[bucket] for bucket in RISK_BUCKETS if risk_buckets[bucket]},
            "median": float(statistics.median(risks)) if risks else None,
            "highest": max(risks) if risks else None,
        },
        "searches_by_purpose": dict(_ranked(searches_by_purpose)),
        "searches_by_caller": dict(_ranked(searches_by_caller)),
        "refusals_by_reason": dict(_ranked(refusals_by_reason)),
        "refusals_by_caller": dict(_ranked(refusals_by_caller)),
        # Every policy set or changed in the period; a loosening says what it loosens and when it takes effect.
        "policy_changes": sorted(policy_changes, key=lambda change: (change["time"], change["collection"])),
        "collections": [
            {
                "collection": chain,
                "searches": row[AuditEvent.SEARCH],
                "matched_searches": row["matched"],
                "match_rate": _rate(row["matched"], row[AuditEvent.SEARCH]),
                "refusals": row[AuditEvent.REFUSAL],
                "enrolments": row[AuditEvent.ENROLMENT],
                "faces_enrolled": row["faces_enrolled"],
                "deletions": row[AuditEvent.DELETION],
                "erasures": row[AuditEvent.ERASURE],
                "collection_changes": row[AuditEvent.COLLECTION],
            }
            for chain, row in sorted(collections.items())
        ],
    }


def _policy_change(chain: str, fields: Mapping[str, Any], until: datetime) -> dict[str, Any]:
    pending = fields["policy"].get("pending") if isinstance(fields["policy"].get("pending"), dict) else None
    effective_at = str(pending.get("effective_at")) if pending else None
    try:
        waiting = effective_at is not None and datetime.fromisoformat(effective_at) > until
    except ValueError:
        waiting = False
    loosens = fields.get("loosens")
    return {
        "collection": chain,
        "time": str(fields.get("time")),
        "operation": str(fields.get("operation") or UNKNOWN),
        "caller": str(fields.get("caller") or UNKNOWN),
        "loosens": [str(item) for item in loosens] if isinstance(loosens, list) else [],
        "effective_at": effective_at,
        "pending_at_end_of_period": waiting,
    }


def _log_status(verification: list[ChainVerification]) -> dict[str, Any]:
    return {
        "intact": all(chain.intact for chain in verification),
        "chains": [
            {
                "chain": chain.chain,
                "entries": chain.entries,
                "head_seq": chain.head_seq,
                "head_hash": chain.head_hash,
                "intact": chain.intact,
                "problems": list(chain.problems),
            }
            for chain in verification
        ],
    }


def _count(value: Any) -> int:
    return value if isinstance(value, int) and not isinstance(value, bool) else 0


def _rate(part: int, whole: int) -> float | None:
    return round(part / whole, 4) if whole else None


def _ranked(counter: Counter[str]) -> list[tuple[str, int]]:
    return sorted(counter.items(), key=lambda item: (-item[1], item[0]))


def _iso(moment: datetime) -> str:
    return moment.astimezone(UTC).isoformat(timespec="seconds")


# ------------------------------------------------------------------------------------------------- summary


def summarize(report: Mapping[str, Any]) -> str:
    """One paragraph: the period, the headline counts, and whether the log verified."""
    totals, log = report["totals"], report["log"]
    rate = report["match_rate"]["overall"]
    parts = [
        f"{totals['searches']} search{'es' if totals['searches'] != 1 else ''}"
        + (f" ({totals['matched_searches']} matched at least one face, {_percent(rate)})" if rate is not None else ""),
        f"{totals['refusals']} refused"
        + (f" (most often {_top(report['refusals_by_reason'])})" if report["refusals_by_reason"] else ""),
        f"{totals['enrolments']} enrolment{'s' if totals['enrolments'] != 1 else ''}",
        f"{totals['deletions']} deletion{'s' if totals['deletions'] != 1 else ''}",
        f"{totals['erasures']} erasure{'s' if totals['erasures'] != 1 else ''}",
        f"{totals['distinct_case_references']} distinct case reference"
        + ("s" if totals["distinct_case_references"] != 1 else ""),
    ]
    risk = report["false_match_risk"]
    if risk["highest"] is not None:
        parts.append(
            f"false-match risk per searched face median {_small_percent(risk['median'])}, "
            f"highest {_small_percent(risk['highest'])}"
        )
    return f"From {period_text(report['period'])}: {', '.join(parts)}. {_verdict(log)}"


def _small_percent(probability: float) -> str:
    return f"{probability:.1%}" if probability >= 0.001 else f"{probability * 100:.2g}%"


def _verdict(log: Mapping[str, Any]) -> str:
    entries = sum(chain["entries"] for chain in log["chains"])
    chains = len(log["chains"])
    if log["intact"]:
        return f"The audit log is intact ({chains} chain{'s' if chains != 1 else ''}, {entries} entries verified)."
    broken = [chain for chain in log["chains"] if not chain["intact"]]
    problems = sum(len(chain["problems"]) for chain in broken)
    names = ", ".join(chain["chain"] for chain in broken)
    return (
        f"The audit log FAILED verification: {problems} problem{'s' if problems != 1 else ''} in {names}; "
        "the figures may not be what happened."
    )


def _top(counts: Mapping[str, int]) -> str:
    name, count = next(iter(counts.items()))
    return f"{name}: {count}"


def _percent(rate: float | None) -> str:
    return "n/a" if rate is None else f"{rate * 100:.1f}%"


def period_text(period: Mapping[str, str]) -> str:
    """ "2026-11-01 to 2026-11-30" for whole days (the end is exclusive: its midnight closes the day before),
    otherwise the times themselves."""
    since, until = datetime.fromisoformat(period["since"]), datetime.fromisoformat(period["until"])
    start = f"{since:%Y-%m-%d}" if since.time() == time() else f"{since:%Y-%m-%d %H:%M:%S} UTC"
    end = f"{until - timedelta(days=1):%Y-%m-%d}" if until.time() == time() else f"{until:%Y-%m-%d %H:%M:%S} UTC"
    return f"{start} to {end}"


# ---------------------------------------------------------------------------------------------------- HTML

_CSS = """
body { font: 15px/1.45 system-ui, -apple-system, "Segoe UI", sans-serif; color: #1d2330; margin: 2rem auto;
       max-width: 60rem; padding: 0 1rem; }
h1 { font-size: 1.6rem; margin-bottom: .2rem; }
h2 { font-size: 1.15rem; margin: 2rem 0 .6rem; border-bottom: 1px solid #d8dce4; padding-bottom: .2rem; }
.period { color: #5a6272; margin-top: 0; }
.verdict { padding: .8rem 1rem; border-radius: 6px; font-weight: 600; }
.verdict.ok { background: #e5f5ea; color: #14532d; border: 1px solid #9fd8b0; }
.verdict.bad { background: #fde8e8; color: #7f1d1d; border: 1px solid #f3a5a5; }
.verdict ul { font-weight: normal; margin: .4rem 0 0; }
.cards { display: flex; flex-wrap: wrap; gap: .6rem; margin-top: 1rem; }
.card { flex: 1 1 8rem; border: 1px solid #d8dce4; border-radius: 6px; padding: .6rem .8rem; }
.card .n { font-size: 1.6rem; font-weight: 700; }
.card .label { color: #5a6272; font-size: .85rem; }
table { border-collapse: collapse; width: 100%; }
th, td { text-align: left; padding: .3rem .5rem; border-bottom: 1px solid #eceef2; vertical-align: middle; }
th { font-size: .8rem; text-transform: uppercase; letter-spacing: .03em; color: #5a6272; }
td.num, th.num { text-align: right; font-variant-numeric: tabular-nums; white-space: nowrap; }
td.label { width: 30%; word-break: break-word; }
td.bar { width: 50%; }
.bar span { display: block; height: .9rem; border-radius: 3px; background: #3b6fd8; min-width: 2px; }
.bar.refusal span { background: #d9822b; }
.bar.rate span { background: #2f9e5b; }
.empty { color: #5a6272; font-style: italic; }
code { font-size: .85rem; word-break: break-all; }
.bad-text { color: #b42318; font-weight: 600; }
footer { margin-top: 2.5rem; color: #5a6272; font-size: .85rem; }
@media print { .verdict, .bar span { -webkit-print-color-adjust: exact; print-color-adjust: exact; } }
"""


# The buckets of the false-match risk distribution, lowest first.
RISK_BUCKETS = ("under 0.01%", "0.01% to 0.1%", "0.1% to 1%", "1% to 10%", "10% or more", "not recorded")
_RISK_EDGES = (1e-4, 1e-3, 1e-2, 1e-1)


def risk_bucket(risk: Any) -> str:
    if not isinstance(risk, int | float) or isinstance(risk, bool):
        return RISK_BUCKETS[-1]
    return RISK_BUCKETS[sum(1 for edge in _RISK_EDGES if risk >= edge)]


def render_html(report: Mapping[str, Any]) -> str:
    """The report as one HTML page that needs nothing else to display; every string from the log is escaped."""
    totals, rates = report["totals"], report["match_rate"]
    purposes = report["searches_by_purpose"]
    sections = [
        f"<h1>Candor accountability report</h1>\n<p class='period'>{_e(period_text(report['period']))}</p>",
        _verdict_html(report["log"]),
        _cards(
            [
                ("searches", str(totals["searches"])),
                ("match rate", _percent(rates["overall"])),
                ("refusals", str(totals["refusals"])),
                ("enrolments", str(totals["enrolments"])),
                ("faces enrolled", str(totals["faces_enrolled"])),
                ("deletions", str(totals["deletions"])),
                ("erasures", str(totals["erasures"])),
                ("distinct case references", str(totals["distinct_case_references"])),
            ]
        ),
        "<h2>Searches by purpose</h2>" + _bars(purposes),
        "<h2>Match rate by purpose</h2>"
        "<p class='period'>Allowed searches in which at least one face was matched.</p>"
        + _rate_bars(rates["by_purpose"], purposes),
        "<h2>False-match risk of searches</h2>"
        "<p class='period'>Per searched face: the chance that it matched a stranger among the collection's "
        "faces at the search's threshold (similarity's false-match rate and the collection's size).</p>"
        + _bars(report["false_match_risk"]["searches"]),
        "<h2>Searches by caller</h2>" + _bars(report["searches_by_caller"]),
        "<h2>Refusals by reason</h2>" + _bars(report["refusals_by_reason"], kind="refusal"),
        "<h2>Refusals by caller</h2>" + _bars(report["refusals_by_caller"], kind="refusal"),
        "<h2>Policy changes</h2>"
        "<p class='period'>A change that loosens a policy takes effect only after the stack's delay, and can be "
        "cancelled until then.</p>" + _policy_table(report.get("policy_changes", [])),
        "<h2>Collections</h2>" + _collections_table(report["collections"]),
        "<h2>Audit chains</h2>" + _chains_table(report["log"]["chains"]),
    ]
    if totals.get("repeated_enrolments"):
        sections.append(
            f"<p class='period'>{totals['repeated_enrolments']} enrolment entries repeat faces already enrolled "
            "(an upload the pipeline processed twice) and are counted once.</p>"
        )
    if totals["unreadable_entries"]:
        sections.append(
            f"<p class='bad-text'>{totals['unreadable_entries']} entries could not be read (not JSON, or no time) "
            "and are left out of the counts.</p>"
        )
    return (
        "<!DOCTYPE html>\n<html lang='en'>\n<head>\n<meta charset='utf-8'>\n"
        "<meta name='viewport' content='width=device-width, initial-scale=1'>\n"
        f"<title>Candor accountability report, {_e(period_text(report['period']))}</title>\n"
        f"<style>{_CSS}</style>\n</head>\n<body>\n"
        + "\n".join(sections)
        + "\n<footer>Counted from the audit log. Callers, purposes and collections are named; probe hashes, face "
        "ids, enrolled people and consent references are not included, and case references only as a count of "
        "distinct ones.</footer>\n</body>\n</html>\n"
    )


def _verdict_html(log: Mapping[str, Any]) -> str:
    if log["intact"]:
        entries = sum(chain["entries"] for chain in log["chains"])
        return (
            f"<div class='verdict ok'>The audit log is intact: {len(log['chains'])} chain(s), {entries} entries, "
            "every hash and link verified.</div>"
        )
    problems = "".join(
        f"<li><code>{_e(chain['chain'])}</code>: {_e(problem)}</li>"
        for chain in log["chains"]
        for problem in chain["problems"]
    )
    return (
        "<div class='verdict bad'>The audit log FAILED verification: entries were altered, removed or moved, "
        f"so the figures below may not be what happened.<ul>{problems}</ul></div>"
    )


def _cards(cards: list[tuple[str, str]]) -> str:
    return (
        "<div class='cards'>"
        + "".join(
            f"<div class='card'><div class='n'>{_e(n)}</div><div class='label'>{_e(label)}</div></div>"
            for label, n in cards
        )
        + "</div>"
    )


def _bars(counts: Mapping[str, int], kind: str = "") -> str:
    """One row per name: its bar, as long as the largest count is wide, then the count."""
    if not counts:
        return "<p class='empty'>none in this period</p>"
    top = max(counts.values()) or 1
    css = f"bar {kind}".strip()
    rows = "".join(
        f"<tr><td class='label'>{_e(name)}</td><td class='{css}'><span style='width:{100 * count / top:.1f}%'>"
        f"</span></td><td class='num'>{count}</td></tr>"
        for name, count in counts.items()
    )
    return f"<table>{rows}</table>"


def _rate_bars(rates: Mapping[str, float | None], searches: Mapping[str, int]) -> str:
    if not rates:
        return "<p class='empty'>no searches in this period</p>"
    rows = "".join(
        f"<tr><td class='label'>{_e(name)}</td><td class='bar rate'><span style='width:{(rate or 0) * 100:.1f}%'>"
        f"</span></td><td class='num'>{_percent(rate)}</td><td class='num'>of {searches.get(name, 0)}</td></tr>"
        for name, rate in rates.items()
    )
    return f"<table>{rows}</table>"


def _collections_table(rows: list[Mapping[str, Any]]) -> str:
    if not rows:
        return "<p class='empty'>no entries in this period</p>"
    columns = ("searches", "match rate", "refusals", "enrolments", "faces enrolled", "deletions", "erasures")
    head = "<tr><th>collection</th>" + "".join(f"<th class='num'>{c}</th>" for c in columns) + "</tr>"
    body = "".join(
        f"<tr><td><code>{_e(row['collection'])}</code></td><td class='num'>{row['searches']}</td>"
        f"<td class='num'>{_percent(row['match_rate'])}</td><td class='num'>{row['refusals']}</td>"
        f"<td class='num'>{row['enrolments']}</td><td class='num'>{row['faces_enrolled']}</td>"
        f"<td class='num'>{row['deletions']}</td><td class='num'>{row['erasures']}</td></tr>"
        for row in rows
    )
    return f"<table>{head}{body}</table>"


def _policy_table(changes: list[Mapping[str, Any]]) -> str:
    if not changes:
        return "<p class='empty'>no policy was set or changed in this period</p>"
    head = "<tr><th>time</th><th>collection</th><th>operation</th><th>caller</th><th>loosens</th><th>in force</th></tr>"

    def in_force(change: Mapping[str, Any]) -> str:
        if not change["effective_at"]:
            return "at once"
        waiting = " (pending)" if change["pending_at_end_of_period"] else ""
        return f"from {_e(change['effective_at'])}{waiting}"

    body = "".join(
        f"<tr><td>{_e(change['time'])}</td><td><code>{_e(change['collection'])}</code></td>"
        f"<td>{_e(change['operation'])}</td><td>{_e(change['caller'])}</td>"
        f"<td>{_e('; '.join(change['loosens']) or '-')}</td><td>{in_force(change)}</td></tr>"
        for change in changes
    )
    return f"<table>{head}{body}</table>"


def _chains_table(chains: list[Mapping[str, Any]]) -> str:
    if not chains:
        return "<p class='empty'>the audit log is empty</p>"
    head = "<tr><th>chain</th><th class='num'>entries</th><th class='num'>head</th><th>head hash</th><th></th></tr>"
    body = "".join(
        f"<tr><td><code>{_e(chain['chain'])}</code></td><td class='num'>{chain['entries']}</td>"
        f"<td class='num'>{chain['head_seq']}</td><td><code>{_e(chain['head_hash'])}</code></td>"
        + ("<td>intact</td>" if chain["intact"] else f"<td class='bad-text'>{len(chain['problems'])} problem(s)</td>")
        + "</tr>"
        for chain in chains
    )
    return (
        f"<table>{head}{body}</table><p class='period'>Compare a chain's head hash with the newest "
        "&ldquo;audit entry appended&rdquo; line the functions logged for it: an older head here means entries "
        "were cut from the end.</p>"
    )


def _e(value: Any) -> str:
    return html.escape(str(value), quote=True)

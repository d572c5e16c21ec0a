"""An evaluation campaign through the real app (issue 22's first "Done when"): an admin creates an ESA campaign from
a plain JSONL of two external systems' outputs (overlap 2, attention checks); three signed-in annotators judge it
over HTTP, some calls at the same moment — on one SQLite file, and on PostgreSQL behind two app instances. Then
the bad input of the issue, each refused with its message and nothing changed.

Annotators call the endpoints over plain HTTP (`/gradio_api/call/<name>`), so that the raw text of every answer
they receive is what the no-system-name check reads; the admin uses gradio_client.
"""
from __future__ import annotations

import json
import re
import sqlite3
import statistics
import threading
from pathlib import Path
from typing import Any

import httpx
import pytest

import apphost
from app.annotation.campaign_exchange import export_campaign, import_campaign_export
from app.annotation.rights import Identity
from app.annotation.store import AnnotationStore
from pgserver import Databases

USERS = {"admin": "admin-pw", "alice": "alice-pw", "bob": "bob-pw", "carol": "carol-pw"}
ANNOTATORS = ("alice", "bob", "carol")
SYSTEMS = ("zephyr", "quokka")
SYSTEM_NAME = re.compile("zephyr|quokka", re.IGNORECASE)
OVERLAP = 2
TABLES = ("campaigns", "campaign_items", "campaign_assignments", "campaign_judgements", "campaign_judgement_versions")

# Six items; each output's "true" quality is fixed, and each annotator adds their own offset.
SOURCES = [
    "Der Hund schläft im Garten unter dem großen alten Baum, während die Kinder spielen.",
    "Morgen beginnt in der Stadt das jährliche Musikfest mit mehr als dreißig Bands.",
    "Die Regierung hat neue Regeln für den Bau von Windkraftanlagen im Norden beschlossen.",
    "Im Museum ist seit gestern eine Ausstellung über die Geschichte der Eisenbahn zu sehen.",
    "Der Zug nach Hamburg fällt heute wegen eines Sturms auf der Strecke leider aus.",
    "Viele Studenten suchen zu Beginn des Semesters noch immer eine bezahlbare Wohnung.",
]
OUTPUTS = {
    "zephyr": [
        "The dog sleeps in the garden under the big old tree while the children play.",
        "Tomorrow the city's annual music festival begins with more than thirty bands.",
        "The government has adopted new rules for building wind turbines in the north.",
        "Since yesterday the museum has been showing an exhibition on the history of the railway.",
        "Unfortunately, the train to Hamburg is cancelled today because of a storm on the line.",
        "At the start of the semester many students are still looking for an affordable flat.",
    ],
    "quokka": [
        "Dog sleep in garden under big old tree, children are playing meanwhile.",
        "Tomorrow begins in the city the yearly music party with over thirty groups.",
        "Government decided new rules for wind power plant construction at north.",
        "In museum since yesterday exhibition about railway story is to see.",
        "Train to Hamburg falls out today because storm on track unfortunately.",
        "Many students search at semester begin still always a payable apartment.",
    ],
}
QUALITY = {text: (70 if system == "zephyr" else 40) + 3 * i
           for system, texts in OUTPUTS.items() for i, text in enumerate(texts)}
OFFSET = {"alice": 0, "bob": 6, "carol": -4}
# On a degraded copy alice and carol score low (the check passes); bob scores it as perfect (it fails).
DEGRADED_SCORE = {"alice": 3, "bob": 100, "carol": 3}


def esa_score(who: str, text: str) -> int:
    """What annotator `who` gives an output: its quality plus their offset, or their score for a degraded copy
    (a text that is none of the systems' outputs)."""
    return QUALITY[text] + OFFSET[who] if text in QUALITY else DEGRADED_SCORE[who]


def write_items(path: Path) -> Path:
    with path.open("w", encoding="utf-8") as f:
        for i, source in enumerate(SOURCES):
            record = {"id": f"n{i + 1}", "source": source, "domain": "news"}
            record |= {f"output_{s}": OUTPUTS[s][i] for s in SYSTEMS}
            f.write(json.dumps(record, ensure_ascii=False) + "\n")
    return path


# ---------------------------------------------------------------------------------------------------------------
# Calling the app


class Refusal(Exception):
    """An endpoint's error answer; `str()` is its message."""


class Annotator:
    """One signed-in annotator's HTTP session on one app instance. Every answer's raw text is kept in `heard`."""

    def __init__(self, url: str, who: str, heard: list[str]):
        self.who, self.heard = who, heard
        self.http = httpx.Client(base_url=url, timeout=120, trust_env=False)
        r = self.http.post("/login", data={"username": who, "password": USERS[who]})
        assert r.status_code == 200, f"login as {who}: {r.status_code} {r.text[:200]}"

    def call(self, api: str, *data: Any) -> Any:
        r = self.http.post(f"/gradio_api/call/{api}", json={"data": list(data)})
        assert r.status_code == 200, r.text
        text = self.http.get(f"/gradio_api/call/{api}/{r.json()['event_id']}").text
        self.heard.append(text)
        event, payload = self._last_event(text)
        if event == "error":
            raise Refusal(json.loads(payload)["error"])
        assert event == "complete", text
        return json.loads(payload)[0]

    @staticmethod
    def _last_event(text: str) -> tuple[str, str]:
        events = re.findall(r"^event: (\w+)\ndata: (.*)$", text, re.MULTILINE)
        assert events, text
        return events[-1]

    def download(self, file_data: dict[str, Any]) -> str:
        r = self.http.get(file_data["url"])
        assert r.status_code == 200, r.text[:200]
        self.heard.append(r.text)
        return r.text

    def close(self) -> None:
        self.http.close()


def admin_client(url: str):
    from gradio_client import Client

    return Client(url, auth=("admin", USERS["admin"]), verbose=False)


def create(client, path: Path, **kw) -> dict[str, Any]:
    from gradio_client import handle_file

    args = {"name": "de-en news", "task": "summarization", "protocol": "esa", "items": handle_file(str(path)),
            "guidelines": "# Judge the meaning\nScore 0–100.", "overlap": OVERLAP, "blind": None, "labels": "",
            "check_fraction": 0.34, "job_id": ""} | kw
    return client.predict(*args.values(), api_name="/campaign_create")


# ---------------------------------------------------------------------------------------------------------------
# Reading the database directly


class Db:
    """Plain SQL on the app's database: the SQLite file, or the PostgreSQL schema (psycopg)."""

    def __init__(self, location: str | Path):
        self.location = location

    def rows(self, sql: str) -> list[tuple]:
        if isinstance(self.location, Path):
            with sqlite3.connect(self.location) as conn:
                return conn.execute(sql).fetchall()
        import psycopg

        with psycopg.connect(self.location) as conn:
            return conn.execute(sql).fetchall()

    def counts(self) -> dict[str, int]:
        return {t: self.rows(f"SELECT COUNT(*) FROM {t}")[0][0] for t in TABLES}


# ---------------------------------------------------------------------------------------------------------------
# Servers


def app_env(root: Path, db: str | Path) -> dict[str, str]:
    return {"MT5_STUDIO_DEMO_DIR": str(root / "demo"), "MT5_STUDIO_DB": str(db),
            "MT5_STUDIO_USERS": ",".join(f"{u}:{p}" for u, p in USERS.items()), "MT5_STUDIO_ADMINS": "admin"}


@pytest.fixture(scope="module")
def sqlite_app(tmp_path_factory):
    root = tmp_path_factory.mktemp("campaign-sqlite")
    srv = apphost.start(root / "server.log", env=app_env(root, root / "a.db"))
    yield [srv.url], Db(root / "a.db"), root
    srv.stop()


@pytest.fixture(scope="module")
def postgres_apps(tmp_path_factory):
    root = tmp_path_factory.mktemp("campaign-pg")
    dbs = Databases("postgresql", root)
    url = dbs("campaign")
    servers = []
    try:
        for n in range(2):   # one after the other: the second finds the schema migrated
            servers.append(apphost.start(root / f"server{n}.log", env=app_env(root / f"i{n}", url)))
        yield [s.url for s in servers], Db(url), root
    finally:
        for s in servers:
            s.stop()
        dbs.drop()


# ---------------------------------------------------------------------------------------------------------------
# The campaign, judged


def judge(item: dict[str, Any], who: str) -> dict[str, Any]:
    return {o["slot"]: {"score": esa_score(who, o["text"])} for o in item["outputs"]}


def work(sessions: list[Annotator], campaign_id: str, log: dict[str, Any], errors: list[str]) -> None:
    """One annotator's loop until done, alternating between their sessions (app instances): next, submit (carol
    skips her first item), going back to every other item judged; progress is theirs at every step."""
    who, submitted, skipped, n = sessions[0].who, [], [], 0

    def session() -> Annotator:
        nonlocal n
        n += 1
        return sessions[n % len(sessions)]

    try:
        while True:
            item = session().call("campaign_next", campaign_id, "")
            assert item["progress"]["done"] == len(submitted), (who, item["progress"], submitted)
            if item["done"]:
                break
            assert item["progress"]["total"] > len(submitted)
            assert [o["slot"] for o in item["outputs"]] == ["A", "B"] and all("system" not in o
                                                                                for o in item["outputs"])
            if who == "carol" and not skipped:
                out = session().call("campaign_skip", campaign_id, item["item_id"], "not my language", "")
                assert out["message"] == f"Skipped item {item['item_id']}: not my language."
                skipped.append(item["item_id"])
                continue
            judgement = judge(item, who)
            out = session().call("campaign_submit", campaign_id, item["item_id"], json.dumps(judgement), 2.5, "")
            assert out["message"] == f"Saved your judgement of item {item['item_id']}.", out
            submitted.append(item["item_id"])
            if len(submitted) % 2:
                back = session().call("campaign_item", campaign_id, item["item_id"], "")
                assert back["judgement"] == {"outputs": {k: v | {"spans": []} for k, v in judgement.items()}}
                assert (back["outputs"], back["seconds"], back["skipped"]) == (item["outputs"], 2.5, "")
        log[who] = {"submitted": submitted, "skipped": skipped, "final": item}
    except BaseException as e:  # noqa: BLE001 - a worker that failed fails the test
        errors.append(f"{who}: {e!r}")


def first_presses(sessions: dict[str, list[Annotator]], campaign_id: str) -> dict[str, set[str]]:
    """Every annotator presses "next" twice at the same moment (on each of their sessions): both presses get the
    same item, assigned once."""
    got: dict[str, list[str]] = {who: [] for who in sessions}
    barrier = threading.Barrier(sum(2 for _ in sessions))

    def press(who: str, s: Annotator) -> None:
        barrier.wait()
        got[who].append(s.call("campaign_next", campaign_id, "")["item_id"])

    threads = [threading.Thread(target=press, args=(who, ss[k % len(ss)])) for who, ss in sessions.items()
               for k in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    return {who: set(ids) for who, ids in got.items()}


def run_campaign(urls: list[str], db: Db, root: Path) -> None:
    """The whole first "Done when" bullet on the app(s) at `urls`, sharing database `db`."""
    items_file = write_items(root / "two-systems.jsonl")
    admin = admin_client(urls[0])
    created = create(admin, items_file)
    assert created["items"] == 6 and created["checks"] == 2 and created["blind"] is True, created
    assert created["message"] == ("Created campaign 'de-en news': 6 items, 2 system(s), 2 attention check(s), "
                                  "overlap 2."), created
    cid = created["id"]

    heard: list[str] = []
    sessions = {who: [Annotator(url, who, heard) for url in urls] for who in ANNOTATORS}
    firsts = first_presses(sessions, cid)
    assert all(len(ids) == 1 for ids in firsts.values()), firsts
    log: dict[str, Any] = {}
    errors: list[str] = []
    threads = [threading.Thread(target=work, args=(ss, cid, log, errors)) for ss in sessions.values()]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=300)
    assert errors == [] and sorted(log) == sorted(ANNOTATORS), errors

    check_judgements(db, cid, log)
    for who, ss in sessions.items():     # each downloads their own judgements, in both formats
        exported = ss[-1].download(ss[-1].call("campaign_export", cid, "jsonl", ""))
        rows = [json.loads(line) for line in exported.splitlines()]
        assert {r["annotator"] for r in rows} == {who} and len(rows) == 2 * len(log[who]["submitted"])
        assert all("system" not in r and "check" not in r for r in rows)
        header, *lines = ss[0].download(ss[0].call("campaign_export", cid, "csv", "")).lstrip("\ufeff").splitlines()
        assert "system" not in header and "check" not in header and len(lines) == len(rows)
    assert len(heard) > 3 * 2 * 6, len(heard)
    leaks = [text[:300] for text in heard if SYSTEM_NAME.search(text)]
    assert leaks == [], f"a system name reached an annotator: {leaks[:3]}"

    results = admin.predict(cid, api_name="/campaign_results")
    check_results(db, cid, results)
    check_round_trip(admin, cid, root)
    for ss in sessions.values():
        for s in ss:
            s.close()


def check_judgements(db: Db, cid: str, log: dict[str, Any]) -> None:
    """Exactly two judgements per item (checks included) from two different annotators, none twice; each
    annotator's own progress."""
    items = dict(db.rows(f"SELECT item_id, check_kind FROM campaign_items WHERE campaign_id='{cid}'"))
    assert len(items) == 8 and sorted(items.values()).count("degraded") == 2
    judged = db.rows(f"SELECT item_id, annotator FROM campaign_judgements WHERE campaign_id='{cid}'")
    assert len(judged) == len(set(judged)) == OVERLAP * len(items)
    per_item: dict[str, list[str]] = {}
    for item_id, who in judged:
        per_item.setdefault(item_id, []).append(who)
    assert sorted(per_item) == sorted(items)
    assert all(len(ws) == len(set(ws)) == OVERLAP for ws in per_item.values()), per_item
    assignments = db.rows(f"SELECT item_id, annotator, submitted_at, skipped FROM campaign_assignments "
                          f"WHERE campaign_id='{cid}'")
    # Nothing assigned and left open; carol's skipped item went to the two others.
    assert sorted((i, w) for i, w, _, skipped in assignments if not skipped) == sorted(judged)
    shown = dict(db.rows(f"SELECT item_id, public_id FROM campaign_items WHERE campaign_id='{cid}'"))
    assert not set(shown) & set(shown.values())     # annotators see other ids than the file's
    assert [(shown[i], w, at, skipped) for i, w, at, skipped in assignments if skipped] == \
        [(log["carol"]["skipped"][0], "carol", None, "not my language")]
    assert all(at is not None for _, _, at, skipped in assignments if not skipped)
    for who in ANNOTATORS:
        mine = sorted(shown[i] for i, w in judged if w == who)
        assert sorted(log[who]["submitted"]) == mine
        assert log[who]["final"]["progress"] == {"done": len(mine), "total": len(mine)}
        assert log[who]["final"]["message"] == f"Done: you have judged every item open to you ({len(mine)})."
    # A degraded copy went to the two annotators who judged its original.
    for item_id, kind in items.items():
        if kind == "degraded":
            (expected,), = db.rows(f"SELECT expected FROM campaign_items WHERE campaign_id='{cid}' AND "
                                   f"item_id='{item_id}'")
            assert sorted(per_item[item_id]) == sorted(per_item[json.loads(expected)["of"]])


def check_results(db: Db, cid: str, results: dict[str, Any]) -> None:
    """Results equal a hand computation: per system, the mean over items of the mean of its two annotators'
    scores (checks left out); alice and carol pass every check, bob none."""
    items = db.rows(f"SELECT item_id, outputs, check_kind FROM campaign_items WHERE campaign_id='{cid}'")
    judged = db.rows(f"SELECT item_id, annotator FROM campaign_judgements WHERE campaign_id='{cid}'")
    real = {item_id: json.loads(outputs) for item_id, outputs, kind in items if kind == ""}
    by_system = {s["system"]: s for s in results["systems"]}
    assert sorted(by_system) == sorted(SYSTEMS)
    for system in SYSTEMS:
        per_item = [statistics.mean(esa_score(who, outputs[system]) for i, who in judged if i == item_id)
                    for item_id, outputs in real.items()]
        hand = statistics.mean(per_item)
        s = by_system[system]
        assert s["items"] == 6 and s["judgements"] == 12 and s["score"] == "esa", s
        assert s["mean"] == pytest.approx(hand, abs=0.01), (system, s, hand)
        assert s["ci_low"] <= s["mean"] <= s["ci_high"]
    assert by_system["zephyr"]["mean"] > by_system["quokka"]["mean"]
    assert results["items"] == 6 and results["judgements"] == 12 and results["overlap"] == OVERLAP
    (wins,) = results["win_rates"]    # zephyr's output is better in every judgement
    assert wins["judgements"] == 12 and wins["ties"] == 0 and wins["both_bad"] == 0
    assert {wins["system_x"]: wins["x_wins"], wins["system_y"]: wins["y_wins"]} == {"zephyr": 12, "quokka": 0}

    degraded = {i for i, _, kind in items if kind == "degraded"}
    checks = {who: sum(1 for i, w in judged if w == who and i in degraded) for who in ANNOTATORS}
    assert sum(checks.values()) == 4
    done = {who: sum(1 for _, w in judged if w == who) for who in ANNOTATORS}
    for a in results["annotators"]:
        who = a["annotator"]
        passed = 0 if who == "bob" else checks[who]
        assert (a["items_done"], a["checks"], a["checks_passed"]) == (done[who], checks[who], passed), a
        assert a["check_pass_rate"] == (passed / checks[who] if checks[who] else None), a
        assert a["median_seconds"] == 2.5
    assert sorted(a["annotator"] for a in results["annotators"]) == sorted(ANNOTATORS)


def check_round_trip(admin, cid: str, root: Path) -> None:
    """The admin's export, imported into a fresh store and exported again, equals the first field for field (JSONL)
    and byte for byte (CSV)."""
    first = Path(admin.predict(cid, "jsonl", "", api_name="/campaign_export"))
    rows = [json.loads(line) for line in first.read_text(encoding="utf-8").splitlines()]
    assert len(rows) == 2 * 16 and {r["system"] for r in rows} == set(SYSTEMS)
    assert sum(1 for r in rows if r["check"] == "degraded") == 2 * 4
    who = Identity("admin", admin=True, protected=True)
    for fmt in ("jsonl", "csv"):
        exported = first if fmt == "jsonl" else Path(admin.predict(cid, "csv", "", api_name="/campaign_export"))
        with AnnotationStore(root / f"fresh-{fmt}-{cid[:8]}.db") as fresh:
            imported = import_campaign_export(fresh, exported, who)
            assert (imported["items"], imported["judgements"]) == (8, 16), imported
            again = export_campaign(fresh, cid, who, root / f"again-{cid[:8]}.{fmt}")
        if fmt == "csv":
            assert again.read_bytes() == exported.read_bytes()
            continue
        rows_again = [json.loads(line) for line in again.read_text(encoding="utf-8").splitlines()]
        assert len(rows_again) == len(rows)
        for a, b in zip(rows, rows_again):
            assert a == b


def test_campaign_on_sqlite(sqlite_app):
    run_campaign(*sqlite_app)


@pytest.mark.slow
def test_campaign_on_postgresql_with_two_instances(postgres_apps):
    run_campaign(*postgres_apps)


# ---------------------------------------------------------------------------------------------------------------
# Bad input: a clear message, nothing changed


def test_bad_input_is_refused_and_changes_nothing(sqlite_app):
    (url,), db, root = sqlite_app
    admin = admin_client(url)
    cid = create(admin, write_items(root / "bad-input.jsonl"), name="bad input", check_fraction=0.0)["id"]
    heard: list[str] = []
    alice, bob = Annotator(url, "alice", heard), Annotator(url, "bob", heard)
    mine = alice.call("campaign_next", cid, "")
    theirs = bob.call("campaign_next", cid, "")
    assert mine["item_id"] != theirs["item_id"]
    before = db.counts()

    def refused(who: Annotator, api: str, *data: Any) -> str:
        with pytest.raises(Refusal) as e:
            who.call(api, *data)
        assert db.counts() == before, f"{api} changed the database"
        return str(e.value)

    incomplete = json.dumps({"A": {"score": 50}})
    assert refused(alice, "campaign_submit", cid, mine["item_id"], incomplete, 1, "") == \
        "Not saved: no judgement for output B: judge every output shown"
    incomplete = json.dumps({"A": {"score": 50}, "B": {"spans": []}})
    assert refused(alice, "campaign_submit", cid, mine["item_id"], incomplete, 1, "") == (
        'Not saved: output B: missing `score`: ESA needs score (e.g. {"score": 73, "spans": [{"start": 0, "end": '
        '4, "side": "output", "category": "", "severity": "minor"}]})')
    full = json.dumps(judge(mine, "alice"))
    assert refused(alice, "campaign_submit", cid, theirs["item_id"], full, 1, "") == (
        f"Not saved: item {theirs['item_id']!r} is not assigned to you (alice) in campaign 'bad input': judge the "
        "item your next item gives you")

    first = alice.call("campaign_submit", cid, mine["item_id"], full, 1, "")
    assert first["message"] == f"Saved your judgement of item {mine['item_id']}."
    after_first = db.counts()
    again = alice.call("campaign_submit", cid, mine["item_id"], json.dumps({"A": {"score": 1}, "B": {"score": 2}}),
                       1, "")
    assert again == {"id": first["id"], "message": f"Saved your new judgement of item {mine['item_id']} (the "
                                                   "earlier one is kept as version 1)."}
    assert db.counts() == after_first | {"campaign_judgement_versions": after_first["campaign_judgement_versions"] + 1}
    assert db.rows(f"SELECT annotator, judgement FROM campaign_judgements WHERE campaign_id='{cid}'") == [
        ("alice", json.dumps({"outputs": {"A": {"score": 1, "spans": []}, "B": {"score": 2, "spans": []}}}))]
    before = db.counts()

    from gradio_client import Client
    from gradio_client.exceptions import AppError

    no_outputs = root / "no-outputs.jsonl"
    no_outputs.write_text("".join(json.dumps({"id": f"x{i}", "source": s}) + "\n" for i, s in enumerate(SOURCES)),
                          encoding="utf-8")
    with pytest.raises(AppError) as e:
        create(admin, no_outputs)
    assert str(e.value) == ("Not created: no-outputs.jsonl has no outputs (found: id, source): give an `output` "
                            "column (one system), `output_<system>` columns (one per system), or `system` and "
                            "`output` columns (one row per item and system)")
    with pytest.raises(AppError, match=r"^Not created: overlap must be a whole number of at least 1 \(how many "
                                       r"different annotators judge each item\), got 0$"):
        create(admin, write_items(root / "overlap.jsonl"), overlap=0)
    bob_client = Client(url, auth=("bob", USERS["bob"]), verbose=False)
    with pytest.raises(AppError, match=r"^Not created: Creating a campaign is for admins of this deployment "
                                       r"\(MT5_STUDIO_ADMINS\); you are signed in as bob\.$"):
        create(bob_client, write_items(root / "by-bob.jsonl"))
    with pytest.raises(AppError, match=r"^Reading a campaign's results is for admins of this deployment "
                                       r"\(MT5_STUDIO_ADMINS\); you are signed in as bob\.$"):
        bob_client.predict(cid, api_name="/campaign_results")
    assert db.counts() == before
    assert [t for t in heard if SYSTEM_NAME.search(t)] == []
    alice.close()
    bob.close()

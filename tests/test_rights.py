"""Identities and rights (issue 13 item 1): who may save, change, delete, restore, import, export and run jobs.

Three layers: the rules themselves (app.annotation.rights, the store's soft deletes and history); the page's
handlers called in-process with the identity a request gives (every protected action checked in the handler);
and the real app over HTTP — behind Gradio's `auth=` login, and behind "Sign in with Hugging Face" with Gradio's
real OAuth code against a local fake identity provider (tests/fakeidp.py) — attacked with raw calls to private
events by their function index."""
from __future__ import annotations

import json
import sqlite3
from types import SimpleNamespace

import pytest

from app.annotation.api import annotate, export, import_export_file, save_from_record
from app.annotation.rights import OPEN, Identity, Refused, identify, require_admin, require_owner_or_admin, \
    require_save, visible_owner
from app.annotation.store import Annotation, AnnotationStore
from app.settings import Settings
from test_annotation_ui import RECORD, text_of

USERS = {"alice": "alice-pw", "bob": "bob-pw", "root": "root-pw"}
PROTECTED = Settings(sign_in="password", users=USERS, admins=frozenset({"root"}))


def person(name: str, settings: Settings = PROTECTED) -> Identity:
    return identify(SimpleNamespace(username=name), settings)


@pytest.fixture
def store(tmp_path):
    with AnnotationStore(tmp_path / "a.db") as s:
        yield s


def note(a_text: str, who: str) -> Annotation:
    return Annotation(task="summarization", model_id="demo/m", input=a_text, output="out " + a_text, annotator=who,
                      owner=who, rating=3)


# ---------------------------------------------------------------------------------------------------------------
# Settings and identities


def test_settings_choose_the_sign_in(tmp_path):
    users_file = tmp_path / "users.txt"
    users_file.write_text("# team\ncarol:c-pw\n\n dan : d:pw \n", encoding="utf-8")
    s = Settings.from_env({"MT5_STUDIO_USERS": "alice:a", "MT5_STUDIO_USERS_FILE": str(users_file),
                           "MT5_STUDIO_ADMINS": "alice, carol"})
    assert (s.sign_in, s.users, s.admins, s.protected) == (
        "password", {"alice": "a", "carol": "c-pw", "dan": " d:pw "}, frozenset({"alice", "carol"}), True)
    space = Settings.from_env({"SPACE_ID": "me/studio", "OAUTH_CLIENT_ID": "x", "MT5_STUDIO_USERS": "a:b"})
    assert (space.sign_in, space.users, space.protected) == ("huggingface", {}, True)
    assert (Settings.from_env({}).sign_in, Settings.from_env({}).protected) == ("", False)
    assert Settings.from_env({"MT5_STUDIO_LOCKED": "1"}).protected
    with pytest.raises(ValueError, match="MT5_STUDIO_USERS entry 2: write users as name:password"):
        Settings.from_env({"MT5_STUDIO_USERS": "a:b,nopassword"})
    with pytest.raises(ValueError, match="MT5_STUDIO_USERS_FILE='/nowhere/users' cannot be read"):
        Settings.from_env({"MT5_STUDIO_USERS_FILE": "/nowhere/users"})


def test_identify_reads_the_login_or_the_oauth_session():
    assert person("root") == Identity("root", admin=True, protected=True, method="password")
    assert person("bob").admin is False and identify(None, PROTECTED).signed_in is False
    hf = Settings(sign_in="huggingface", admins=frozenset({"amina"}))
    signed = SimpleNamespace(request=SimpleNamespace(scope={"session": {"oauth_info": {
        "userinfo": {"preferred_username": "amina"}, "expires_at": 4e9}}}))
    expired = SimpleNamespace(request=SimpleNamespace(scope={"session": {"oauth_info": {
        "userinfo": {"preferred_username": "amina"}, "expires_at": 1.0}}}))
    assert identify(signed, hf) == Identity("amina", admin=True, protected=True, method="huggingface")
    assert identify(expired, hf).signed_in is False
    assert identify(SimpleNamespace(request=SimpleNamespace(scope={})), hf).signed_in is False
    # a password login does not count on an OAuth deployment, nor the other way round
    assert identify(SimpleNamespace(username="amina", request=None), hf).signed_in is False
    assert identify(signed, PROTECTED).signed_in is False


def test_the_rules():
    anyone, bob, root = identify(None, PROTECTED), person("bob"), person("root")
    nobody_can = identify(None, Settings(locked=True))
    for check in (lambda i: require_save(i), lambda i: require_admin(i, "Importing"),
                  lambda i: require_owner_or_admin(i, "alice", "delete"), lambda i: visible_owner(i)):
        check(OPEN)    # open use: everything allowed
        check(root)    # admins: everything allowed
        with pytest.raises(Refused, match="log in with your user name"):
            check(anyone)
        with pytest.raises(Refused, match="locked and has no sign-in: its owner must configure MT5_STUDIO_USERS"):
            check(nobody_can)
    require_save(bob)
    require_owner_or_admin(bob, "bob", "change")
    with pytest.raises(Refused, match="Only the annotator who saved it or an admin can delete this annotation"):
        require_owner_or_admin(bob, "alice", "delete")
    with pytest.raises(Refused, match="Importing is for admins of this deployment .*signed in as bob"):
        require_admin(bob, "Importing")
    assert (visible_owner(bob), visible_owner(root), visible_owner(OPEN)) == ("bob", None, None)
    assert (bob.annotator("mallory"), OPEN.annotator(" Amina "), bob.owner, OPEN.owner) == ("bob", "Amina", "bob", "")
    hint = identify(None, Settings(sign_in="huggingface")).label()
    assert "Sign in with Hugging Face" in hint and person("root").label() == "Signed in as **root** (admin)."


# ---------------------------------------------------------------------------------------------------------------
# The store: soft deletes, restore, history


def test_soft_delete_restore_and_history(store, tmp_path):
    a = store.save(note("one", "alice"))
    b = store.save(note("two", "bob"))
    store.update(a, by="alice", rating=5, comment="better")
    store.update(a, by="root", rating=4)
    assert store.delete(a, by="alice") is True and store.delete(a, by="alice") is False
    assert [x.id for x in store.query()] == [b] and store.count() == 1 and store.stats().total == 1
    assert store.get(a) is None and store.get(a, include_deleted=True).rating == 4
    assert [x.id for x in store.query(deleted=True)] == [a] and store.deleted_info(a)[1] == "alice"
    assert store.distinct("annotator") == ["bob"]
    exported = store.export(tmp_path / "live.jsonl")
    assert [json.loads(line)["id"] for line in exported.read_text().splitlines()] == [b]   # deleted: not exported
    with pytest.raises(KeyError):
        store.update(a, rating=1)                      # a deleted annotation cannot be edited
    restored = store.restore(a, by="root")
    assert restored.rating == 4 and store.get(a).comment == "better" and store.deleted_info(a) is None
    with pytest.raises(ValueError, match="is not deleted: there is nothing to restore"):
        store.restore(a)
    history = store.history(a)
    assert [(v.version, v.action, v.replaced_by) for v in history] == [
        (1, "edit", "alice"), (2, "edit", "root"), (3, "delete", "alice"), (4, "restore", "root")]
    assert [v.record.rating for v in history] == [3, 5, 4, 4]   # what it was before each change
    assert history[1].record.comment == "better" and history[0].record.comment == ""
    assert store.query(owner="bob")[0].id == b and store.query(owner="carol") == []


def test_an_import_over_a_record_keeps_its_history_and_its_deletion(store, tmp_path):
    a = store.save(note("one", "alice"))
    edited = store.get(a)
    edited.rating, edited.updated_at = 1, "2999-01-01T00:00:00.000000Z"
    path = tmp_path / "newer.jsonl"
    path.write_text(json.dumps(edited.to_dict(), ensure_ascii=False) + "\n", encoding="utf-8")
    store.delete(a, by="alice")
    assert store.import_file(path, by="root").updated == 1
    assert store.get(a) is None and store.get(a, include_deleted=True).rating == 1   # still deleted, newer copy
    assert [v.action for v in store.history(a)] == ["delete", "import"]
    assert store.history(a)[-1].replaced_by == "root" and store.history(a)[-1].record.rating == 3


# ---------------------------------------------------------------------------------------------------------------
# The API functions with identities


def test_api_functions_apply_the_rights(store, tmp_path):
    alice, bob, root = person("alice"), person("bob"), person("root")
    saved = annotate(store, "summarization", "demo/m", "in", "out", 4, annotator="mallory", ident=alice)
    a = store.get(saved["id"])
    assert (a.annotator, a.owner) == ("alice", "alice")          # the account, not the typed name
    with pytest.raises(Refused, match="log in"):
        annotate(store, "summarization", "demo/m", "in", "out", 4, annotator="x", ident=identify(None, PROTECTED))
    mine = save_from_record(store, RECORD, 3, "", [], "", "typed", ident=bob)
    assert (store.get(mine).annotator, store.get(mine).owner) == ("bob", "bob")
    with pytest.raises(Refused, match="Only the annotator who saved it"):
        save_from_record(store, RECORD, 1, "", [], "", "bob", ann_id=a.id, ident=bob)
    assert store.get(a.id).rating == 4 and store.history(a.id) == []
    save_from_record(store, RECORD, 2, "", [], "", "root", ann_id=a.id, ident=root)   # an admin corrects it
    assert (store.get(a.id).rating, store.get(a.id).annotator, store.history(a.id)[0].replaced_by) == \
        (2, "alice", "root")

    def ids(path):
        return sorted(json.loads(line)["id"] for line in path.read_text().splitlines())
    assert ids(export(store, "jsonl", folder=tmp_path / "b", ident=bob)) == [mine]
    assert ids(export(store, "jsonl", folder=tmp_path / "r", ident=root)) == sorted([a.id, mine])
    everything = export(store, "jsonl", folder=tmp_path / "all", ident=root)
    before = store.query()
    with pytest.raises(Refused, match="Importing annotations is for admins"):
        import_export_file(store, everything, bob)
    assert store.query() == before
    assert import_export_file(store, everything, root)["skipped"] == 2


# ---------------------------------------------------------------------------------------------------------------
# The page's handlers, in-process, with the identity of each request as the page's wiring works it out


def shown(out) -> str:
    return " ".join(str(text_of(v)) for v in out.values())


def test_handlers_check_rights_whatever_the_inputs(store, tmp_path):
    from app.annotation.batch import StopRequests
    from app.annotation.tabs import annotations, batch_tab, panel

    ident = {n: identify(SimpleNamespace(username=n), PROTECTED) for n in USERS}
    anon = identify(SimpleNamespace(username=None), PROTECTED)
    refused = shown(panel.save_it(store, anon, RECORD, "4", "", [], "", "alice", None))
    assert "Not saved: Not signed in" in refused and store.count() == 0
    panel.save_it(store, ident["alice"], RECORD, "4", "", [], "", "mallory", None)
    (a,) = store.query()
    assert (a.annotator, a.owner) == ("alice", "alice")

    # bob, given alice's id in every input a client could forge: refused, nothing changes
    bob = ident["bob"]
    assert "Not deleted: Only the annotator who saved it" in shown(annotations.delete_it(store, bob, a.id, a.id))
    assert "Not saved: Only the annotator who saved it" in shown(
        annotations.save_changes(store, bob, a.id, "1", "hacked", [], "", "bob"))
    assert "is for admins" in shown(annotations.restore_it(store, bob, a.id))
    other = tmp_path / "x.jsonl"
    other.write_text(json.dumps({**a.to_dict(), "rating": 1, "updated_at": "2999-01-01T00:00:00Z"}) + "\n")
    assert "Nothing imported: Importing annotations is for admins" in shown(annotations.import_it(store, bob,
                                                                                                 str(other)))
    selected = annotations.select(store, bob, {a.id[:8]: a.id}, [a.id[:8]])
    assert "gone" in shown(selected) and a.id not in selected.values()
    table = annotations.refresh_all(store, bob, "(all)", "(all)", "(all)", "", "", 1, 5)
    assert "0 annotation(s) of yours" in shown(table)
    assert "log in" in shown(annotations.refresh_all(store, anon, "(all)", "(all)", "(all)", "", "", 1, 5))
    exported = annotations.export_it(store, bob, "jsonl", "(all)", "(all)", "(all)", "", "", 1, 5)
    assert open(exported["export_file"]).read() == ""
    ctx, stops = SimpleNamespace(settings=PROTECTED), StopRequests()
    for out in (batch_tab.create_and_run(store, bob, str(other), "summarization", "demo", "auto", "auto", "none",
                                         ctx=ctx, stops=stops),
                batch_tab.resume_it(store, bob, "some-job", ctx=ctx, stops=stops),
                batch_tab.stop_it(store, bob, "some-job", stops=stops)):
        assert "batch jobs is for admins" in shown(out), out
    assert store.get(a.id) == a and store.history(a.id) == []

    # alice edits and deletes her own; her undo brings it back; root restores one alice deleted
    alice = ident["alice"]
    assert "Saved changes" in shown(annotations.save_changes(store, alice, a.id, "5", "", [], "", "zed"))
    assert (store.get(a.id).rating, store.get(a.id).annotator) == (5, "alice")   # the annotator stays
    annotations.delete_it(store, alice, a.id, a.id)
    assert store.get(a.id) is None
    assert "Restored" in shown(annotations.undo_it(store, alice, a.id))
    annotations.delete_it(store, alice, a.id, a.id)
    assert "is for admins" in shown(annotations.restore_it(store, bob, a.id))
    assert "Restored" in shown(annotations.restore_it(store, ident["root"], a.id))
    assert [(v.action, v.replaced_by) for v in store.history(a.id)] == [
        ("edit", "alice"), ("delete", "alice"), ("restore", "alice"), ("delete", "alice"), ("restore", "root")]
    assert "Imported" in shown(annotations.import_it(store, ident["root"], str(other)))
    assert store.get(a.id).rating == 1 and store.history(a.id)[-1].action == "import"


# ---------------------------------------------------------------------------------------------------------------
# The real app, behind auth= and behind Hugging Face OAuth, attacked over HTTP


def attack(raw, db, victim_id):
    """Everything a signed-in non-admin can send at a victim's annotation, by function index (events private
    in the page included). Returns the messages the page would show."""
    short = victim_id[:8]
    row = {"index": [0, 0], "value": short, "row_value": [short]}
    out = [raw.text("refresh_all", ["(all)", "(all)", "(all)", "", "", 1, 5]),
           raw.text("select", [None], event_data=row),
           raw.text("delete_it", [victim_id, victim_id]), raw.text("delete_it", [victim_id, victim_id]),
           raw.text("save_changes", [victim_id, None, "hacked", [], "hacked", "x"]),
           raw.text("undo_it", [victim_id]), raw.text("restore_it", [victim_id])]
    return out


def db_rows(db):
    with sqlite3.connect(db) as conn:
        rows = conn.execute("SELECT id, json_extract(scores, '$.likert'), comment, corrected_output, deleted_at "
                            "FROM annotations ORDER BY id").fetchall()
        return rows, conn.execute("SELECT COUNT(*) FROM annotation_versions").fetchone()[0]


@pytest.fixture(scope="module")
def password_app(tmp_path_factory):
    import apphost
    root = tmp_path_factory.mktemp("rights-password")
    env = {"MT5_STUDIO_DEMO_DIR": str(root / "demo"), "MT5_STUDIO_DB": str(root / "a.db"),
           "MT5_STUDIO_USERS": ",".join(f"{u}:{p}" for u, p in USERS.items()), "MT5_STUDIO_ADMINS": "root"}
    srv = apphost.start(root / "server.log", env=env)
    yield srv, root / "a.db"
    srv.stop()


def test_behind_the_password_login(password_app, tmp_path):
    import httpx
    from gradio_client import Client, handle_file
    from gradio_client.exceptions import AppError

    from rawcall import RawSession

    srv, db = password_app
    assert httpx.get(srv.url + "/config").status_code == 401                # nothing without logging in
    assert httpx.post(srv.url + "/login", data={"username": "bob", "password": "wrong"}).status_code == 400
    alice = Client(srv.url, auth=("alice", USERS["alice"]), verbose=False)
    saved = alice.predict("summarization", "demo/m", "سلام دنیا", "out", 4, None, [], "mine", "mallory",
                          api_name="/annotate")
    rows, versions = db_rows(db)
    assert [r[0] for r in rows] == [saved["id"]] and versions == 0
    with sqlite3.connect(db) as conn:
        assert conn.execute("SELECT annotator, owner FROM annotations").fetchone() == ("alice", "alice")

    bob = Client(srv.url, auth=("bob", USERS["bob"]), verbose=False)
    assert open(bob.predict("jsonl", api_name="/export"), encoding="utf-8").read() == ""   # not alice's
    everything = Client(srv.url, auth=("root", USERS["root"]), verbose=False).predict("jsonl", api_name="/export")
    assert json.loads(open(everything, encoding="utf-8").read())["id"] == saved["id"]
    newer = tmp_path / "newer.jsonl"
    record = json.loads(open(everything, encoding="utf-8").read())
    newer.write_text(json.dumps({**record, "rating": 1, "comment": "overwritten",
                                 "updated_at": "2999-01-01T00:00:00.000000Z"}) + "\n", encoding="utf-8")
    with pytest.raises(AppError, match="Nothing imported: Importing annotations is for admins"):
        bob.predict(handle_file(str(newer)), api_name="/import")
    before = db_rows(db)

    raw = RawSession.login(srv.url, "bob", USERS["bob"])
    assert raw.visibility("delete_it") == "private"
    messages = attack(raw, db, saved["id"])
    assert "0 annotation(s) of yours" in messages[0] and "gone" in messages[1], messages[:2]
    upload = raw.http.post("/gradio_api/upload", files={"files": ("newer.jsonl", newer.read_bytes())}).json()[0]
    file_data = {"path": upload, "orig_name": "newer.jsonl", "meta": {"_type": "gradio.FileData"}}
    messages.append(raw.text("import_it", [file_data]))
    assert "Importing annotations is for admins" in messages[-1], messages[-1]
    assert db_rows(db) == before                                            # nothing changed, nothing versioned

    admin = RawSession.login(srv.url, "root", USERS["root"])
    assert "Imported newer.jsonl" in admin.text("import_it", [file_data])
    rows, versions = db_rows(db)
    assert rows[0][1:3] == (1, "overwritten") and versions == 1


@pytest.fixture(scope="module")
def oauth_app(tmp_path_factory):
    import apphost
    import fakeidp
    idp = fakeidp.start()
    root = tmp_path_factory.mktemp("rights-oauth")
    env = {"MT5_STUDIO_DEMO_DIR": str(root / "demo"), "MT5_STUDIO_DB": str(root / "a.db"),
           "MT5_STUDIO_ADMINS": "root", **fakeidp.oauth_env(idp)}
    srv = apphost.start(root / "server.log", env=env)
    yield srv, root / "a.db", idp
    srv.stop()
    idp.stop()


def test_signed_in_with_hugging_face(oauth_app):
    import fakeidp
    from gradio_client import Client
    from gradio_client.exceptions import AppError

    from rawcall import RawSession

    srv, db, idp = oauth_app
    anonymous = Client(srv.url, verbose=False)
    with pytest.raises(AppError, match="Not saved: Not signed in: press \\*\\*Sign in with Hugging Face"):
        anonymous.predict("summarization", "demo/m", "in", "out", 4, api_name="/annotate")
    config = anonymous.config if hasattr(anonymous, "config") else {}
    assert any(c.get("props", {}).get("elem_id") == "login-button" for c in config.get("components", []))
    alice_cookie = fakeidp.sign_in(srv.url, idp, "alice")
    alice = Client(srv.url, headers={"Cookie": alice_cookie}, verbose=False)
    saved = alice.predict("summarization", "demo/m", "in", "out", 4, None, [], "", "root", api_name="/annotate")
    with sqlite3.connect(db) as conn:
        assert conn.execute("SELECT annotator, owner FROM annotations WHERE id=?", (saved["id"],)).fetchone() == \
            ("alice", "alice")
    before = db_rows(db)
    bob = RawSession(srv.url, headers={"Cookie": fakeidp.sign_in(srv.url, idp, "bob")})
    messages = attack(bob, db, saved["id"])
    assert "0 annotation(s) of yours" in messages[0], messages[0]
    assert db_rows(db) == before
    assert open(Client(srv.url, headers={"Cookie": fakeidp.sign_in(srv.url, idp, "bob")}, verbose=False)
                .predict("jsonl", api_name="/export"), encoding="utf-8").read() == ""
    root = Client(srv.url, headers={"Cookie": fakeidp.sign_in(srv.url, idp, "root")}, verbose=False)
    assert saved["id"] in open(root.predict("jsonl", api_name="/export"), encoding="utf-8").read()
    # alice deletes her own through the page's events (select the row, press Delete twice)
    mine = RawSession(srv.url, headers={"Cookie": alice_cookie})
    assert "1 annotation(s) of yours" in mine.text("refresh_all", ["(all)", "(all)", "(all)", "", "", 1, 5])
    short = saved["id"][:8]
    assert "Editing" in mine.text("select", [None], event_data={"index": [0, 0], "value": short,
                                                               "row_value": [short]})
    assert "Confirm delete?" in mine.text("delete_it", [None, None])
    assert "Deleted" in mine.text("delete_it", [None, None])
    with sqlite3.connect(db) as conn:
        assert conn.execute("SELECT deleted_by FROM annotations WHERE id=?", (saved["id"],)).fetchone() == ("alice",)


def test_deleted_comparisons_are_listed_and_restored_by_admins_only(store):
    from app.annotation.comparisons import get_comparison, save_comparison
    from app.annotation.tabs import compare_stats
    from test_annotation_compare import make

    cmp_id = save_comparison(store, make(annotator="alice"), owner="alice")
    ident = {n: identify(SimpleNamespace(username=n), PROTECTED) for n in USERS}
    compare_stats.compare_delete(store, ident["alice"], cmp_id, cmp_id)
    assert get_comparison(store, cmp_id) is None and get_comparison(store, cmp_id, deleted=True) is not None
    listed = compare_stats.compare_refresh(store, ident["alice"])
    assert cmp_id in listed["deleted_ids"].values()                                     # her own, deleted
    assert cmp_id not in compare_stats.compare_refresh(store, ident["bob"])["deleted_ids"].values()   # not bob's
    assert "Not restored: Restoring a deleted comparison is for admins" in shown(
        compare_stats.compare_restore(store, ident["alice"], cmp_id))
    assert get_comparison(store, cmp_id) is None
    assert "Restored comparison" in shown(compare_stats.compare_restore(store, ident["root"], cmp_id))
    assert get_comparison(store, cmp_id).annotator == "alice"

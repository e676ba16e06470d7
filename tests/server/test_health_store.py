"""/health tells the truth about the database and the artifact store, and a download whose file
is gone is a 404 naming it. Real server processes; the files are removed for real under them."""

from __future__ import annotations

import shutil

import httpx


def test_health_answers_503_when_the_data_directory_is_removed(db_url, start_server):
    sqlite = db_url.startswith("sqlite")
    srv = start_server(None if sqlite else db_url)  # SQLite: the database in the data directory
    r = httpx.get(srv.url + "/api/v1/health")
    assert r.status_code == 200 and r.json()["status"] == "ok" and r.json()["problems"] == []
    shutil.rmtree(srv.data_dir)
    r = httpx.get(srv.url + "/api/v1/health")
    assert r.status_code == 503, r.text
    body = r.json()
    assert body["status"] == "failing"
    problems = "\n".join(body["problems"])
    assert f"the artifact directory {srv.data_dir / 'artifacts'} was removed" in problems
    if sqlite:
        assert f"the SQLite database file {srv.data_dir / 'phpo.db'} was removed" in problems
        assert "restore the data directory and restart the server" in problems
    else:
        assert "SQLite" not in problems  # PostgreSQL itself is fine: only the artifacts are gone


def test_a_missing_artifact_file_is_a_404_naming_it(db_url, start_server):
    srv = start_server(db_url)
    with srv.client() as c:
        r = c.put("/sandboxes", content=b"some bytes", params={"name": "my-sandbox.tar.gz"})
        assert r.status_code == 201, r.text
        aid = r.json()["id"]
        assert c.get(f"/artifacts/{aid}").content == b"some bytes"
        (f,) = (srv.data_dir / "artifacts").rglob("*my-sandbox.tar.gz")
        f.unlink()
        r = c.get(f"/artifacts/{aid}")
        assert r.status_code == 404, (r.status_code, r.content)
        err = r.json()
        assert err["code"] == "artifact_missing" and err["field"] == "artifact_id"
        assert (
            f"artifact {aid} ('my-sandbox.tar.gz')" in err["message"]
            and "missing from the artifact store" in err["message"]
        )
    assert httpx.get(srv.url + "/api/v1/health").status_code == 200  # one file gone is not a broken store
